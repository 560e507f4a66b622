"""The main job's held-out report: the runner over the synthetic benchmark (every question/answer pair of
every record in a shard folder), scored with relaxed accuracy (ChartQA), exact match and ANLS (DocVQA's
metric, for extractive answers such as the synthetic documents'), per question type, beside the
majority-answer baseline fitted on the training split. It adds only the report's shape to what `python -m eval run --benchmarks synthetic=DIR --baselines majority:TRAIN_DIR` computes."""
from __future__ import annotations

import dataclasses
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .benchmarks import load_benchmark
from .metrics import anls, exact_match, relaxed_accuracy
from .models import MajorityAnswerBaseline, adapter_for
from .runner import NothingToEvaluate, predict


def evaluate(model, test_dir: str, train_dir: str, batch_size: int = 64, max_new_tokens: int = 8,
             max_items: int = 0, benchmark: str = "synth-charts", model_path: str | None = None,
             out_dir: str | Path | None = None, max_skipped_fraction: float | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy answers of `model` (loaded from `model_path`, which keys the runner's prediction cache
    in `out_dir`; without one the cache is thrown away) for every held-out item; returns (results,
    per-item rows). More than `max_skipped_fraction` of the questions skipped raises runner.TooManySkipped."""
    bench = load_benchmark("synthetic", test_dir)
    bench.spec = dataclasses.replace(bench.spec, max_new_tokens=max_new_tokens, one_image=False)
    # A model given without its folder has nothing that identifies it: a fresh id, so that no later run
    # (which may get the same id(model)) reuses its cached answers.
    adapter = adapter_for(model, model_path or f"in-memory-{uuid.uuid4().hex[:12]}", batch_size)
    with tempfile.TemporaryDirectory(prefix="molmini-heldout-") as scratch:
        try:
            _, predictions, _, _ = predict(adapter, bench, Path(out_dir or scratch), limit=max_items,
                                           batch_size=batch_size, desc=f"held-out {benchmark}",
                                           max_skipped_fraction=max_skipped_fraction)
        except NothingToEvaluate:
            skipped = {reason: n for reason, n in bench.skipped_by_reason.items() if n}
            described = ", ".join(f"{n} {reason}" for reason, n in skipped.items()) or "none"
            raise ValueError(f"nothing to evaluate in {test_dir}: no readable question/answer pair "
                             f"({sum(skipped.values())} bad records: {described}); check the folder's shards, "
                             f"e.g. with `python -m data_pipelines inspect --input {test_dir}`") from None
    majority = MajorityAnswerBaseline(train_dir)
    rows = [_row(prediction, majority) for prediction in predictions]
    skipped = dict(sorted((reason, n) for reason, n in bench.skipped_by_reason.items() if n))
    results = {"benchmark": benchmark, "test_dir": str(test_dir), "skipped_records": sum(skipped.values()),
               "skipped_by_reason": skipped,
               "prompt_template": adapter.describe()["prompt_layout"],  # the layout the model was asked in
               "max_new_tokens": max_new_tokens, "per_type": {}, "overall": _summary(rows)}
    for qtype in sorted({r["type"] for r in rows}):
        results["per_type"][qtype] = {**_summary([r for r in rows if r["type"] == qtype]),
                                      "majority_answer": majority.answer(qtype)}
    return results, rows


def _row(prediction: dict[str, Any], majority: MajorityAnswerBaseline) -> dict[str, Any]:
    """The report's row for one of the runner's prediction rows (item id: `<record key>-<pair index>`)."""
    key, _, index = prediction["item_id"].rpartition("-")
    answer, pred, qtype = prediction["golds"][0], prediction["prediction"], prediction["subset"]
    base = majority.answer(qtype)
    return {"key": key, "index": int(index), "type": qtype, "question": prediction["prompt"], "answer": answer,
            "prediction": pred, "relaxed_accuracy": relaxed_accuracy(pred, answer),
            "exact_match": exact_match(pred, answer), "anls": anls(pred, [answer]), "majority_answer": base,
            "majority_baseline": relaxed_accuracy(base, answer)}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n if n else 0.0  # noqa: E731
    return {"n": n, "relaxed_accuracy": mean("relaxed_accuracy"), "exact_match": mean("exact_match"),
            "anls": mean("anls"), "majority_baseline": mean("majority_baseline")}


def format_table(results: dict[str, Any]) -> str:
    lines = [f"held-out {results['benchmark']} ({results['overall']['n']} items, relaxed accuracy %)",
             f"{'question type':<16}{'items':>7}{'model':>9}{'exact':>9}{'anls':>7}{'majority':>10}{'gain':>8}"]
    rows = list(results["per_type"].items()) + [("overall", results["overall"])]
    for qtype, r in rows:
        gain = 100 * (r["relaxed_accuracy"] - r["majority_baseline"])
        lines.append(f"{qtype:<16}{r['n']:>7}{100 * r['relaxed_accuracy']:>9.1f}{100 * r['exact_match']:>9.1f}"
                     f"{r.get('anls', 0.0):>7.3f}{100 * r['majority_baseline']:>10.1f}{gain:>+8.1f}")
    return "\n".join(lines)


def write_heldout_report(run_dir: str | Path, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """eval_results.json (the table's figures) and eval_predictions.jsonl (a row per item) in `run_dir`."""
    run_dir = Path(run_dir)
    (run_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    with open(run_dir / "eval_predictions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
