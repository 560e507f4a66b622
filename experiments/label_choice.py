"""Does the model read the labels, or compare the bars? For each held-out "which label" question of a run
(largest_label), whether its answer is one of the labels the chart drew (it read them), and how often it
is the right one among them, against the chance of picking one of that chart's labels at random.

    python experiments/label_choice.py runs/read-joint-w1 [--test-dir data/charts/test]

It reads the run's eval_predictions.jsonl (written by train.py's held-out evaluation) and the test
shards' records (their meta.chart: kind and labels), and prints one row per chart kind.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from molmini.data.reader import find_shards, read_records  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run folder with eval_predictions.jsonl")
    ap.add_argument("--test-dir", default="data/charts/test")
    ap.add_argument("--type", default="largest_label", help="question type whose answers are chart labels")
    args = ap.parse_args()
    charts = {r.key: r.meta.get("chart") for r in read_records(find_shards(args.test_dir))}
    rows = [json.loads(line) for line in (Path(args.run) / "eval_predictions.jsonl").read_text().splitlines()
            if line.strip()]
    stats: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])  # items, a drawn label, right, chance
    for row in rows:
        chart = charts.get(row["key"])
        if row["type"] != args.type or not isinstance(chart, dict):
            continue
        labels = [str(label) for label in chart.get("labels", [])]
        for kind in (chart.get("kind", "?"), "all"):
            s = stats[kind]
            s[0] += 1
            s[1] += row["prediction"].strip() in labels
            s[2] += row["relaxed_accuracy"]
            s[3] += 1 / max(1, len(labels))
    print(f"{'chart kind':<12}{'items':>7}{'answer is a drawn label':>26}{'right':>8}{'right among those':>20}"
          f"{'chance among labels':>22}")
    for kind, (n, drawn, right, chance) in sorted(stats.items(), key=lambda kv: kv[0] == "all"):
        print(f"{kind:<12}{n:>7}{100 * drawn / n:>25.1f}%{100 * right / n:>7.1f}%"
              f"{100 * right / max(1, drawn):>19.1f}%{100 * chance / n:>21.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
