"""Held-out evaluation on a shard folder: every question/answer pair of every record is one item,
scored with relaxed accuracy (ChartQA) and exact match, reported per question type beside the
majority-answer baseline taken from the training split."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from molmini.records import BadRecords, Record, RecordError, Skip, find_shards, read_records

from .benchmarks import record_qa
from .metrics import exact_match, relaxed_accuracy
from .models import majority_from_shards

log = logging.getLogger(__name__)


def qa_items(records: Iterable[Record]) -> list[dict[str, Any]]:
    return [{"key": rec.key, "index": j, "question": question, "answer": answer, "type": question_type,
             "record": rec} for rec in records for j, question, answer, question_type in record_qa(rec)]


def majority_by_type(train_dir: str) -> dict[str, str]:
    """The most common answer per question type in the training split (the benchmark runner's majority
    baseline)."""
    return majority_from_shards(train_dir)[0]


def evaluate(model, test_dir: str, train_dir: str, batch_size: int = 64, max_new_tokens: int = 8,
             max_items: int = 0, benchmark: str = "synth-charts") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy answers for every held-out item; returns (results, per-item predictions)."""
    bad = BadRecords(on_skip=lambda skip: log.warning("evaluation skipped: %s", skip.message))
    images, records = {}, []
    for rec in read_records(find_shards(test_dir), bad):
        try:
            images[rec.key] = rec.load_image()
            records.append(rec)
        except RecordError as e:
            bad.add(Skip(rec.key, e.reason, str(e)))
    items = qa_items(records)
    if not items:
        raise ValueError(f"nothing to evaluate in {test_dir}: no readable question/answer pair "
                         f"({bad.total} bad records: {bad.describe()}); check the folder's shards, e.g. with "
                         f"`python -m data_pipelines inspect --input {test_dir}`")
    if max_items:
        items = items[:max_items]
    majority = majority_by_type(train_dir)
    predictions = model.generate([images[it["key"]] for it in items], [it["question"] for it in items],
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = []
    for it, pred in zip(items, predictions):
        base = majority.get(it["type"], "")
        rows.append({"key": it["key"], "index": it["index"], "type": it["type"], "question": it["question"],
                     "answer": it["answer"], "prediction": pred,
                     "relaxed_accuracy": relaxed_accuracy(pred, it["answer"]),
                     "exact_match": exact_match(pred, it["answer"]),
                     "majority_answer": base, "majority_baseline": relaxed_accuracy(base, it["answer"])})
    results = {"benchmark": benchmark, "test_dir": str(test_dir), "skipped_records": bad.total,
               "skipped_by_reason": bad.by_reason,
               "prompt_template": model.processor.chat.prompt_template(),  # the layout the model was asked in
               "max_new_tokens": max_new_tokens, "per_type": {}, "overall": _summary(rows)}
    for qtype in sorted({r["type"] for r in rows}):
        results["per_type"][qtype] = {**_summary([r for r in rows if r["type"] == qtype]),
                                      "majority_answer": majority.get(qtype, "")}
    return results, rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n if n else 0.0  # noqa: E731
    return {"n": n, "relaxed_accuracy": mean("relaxed_accuracy"), "exact_match": mean("exact_match"),
            "majority_baseline": mean("majority_baseline")}


def format_table(results: dict[str, Any]) -> str:
    lines = [f"held-out {results['benchmark']} ({results['overall']['n']} items, relaxed accuracy %)",
             f"{'question type':<16}{'items':>7}{'model':>9}{'exact':>9}{'majority':>10}{'gain':>8}"]
    rows = list(results["per_type"].items()) + [("overall", results["overall"])]
    for qtype, r in rows:
        gain = 100 * (r["relaxed_accuracy"] - r["majority_baseline"])
        lines.append(f"{qtype:<16}{r['n']:>7}{100 * r['relaxed_accuracy']:>9.1f}{100 * r['exact_match']:>9.1f}"
                     f"{100 * r['majority_baseline']:>10.1f}{gain:>+8.1f}")
    return "\n".join(lines)


def write_results(run_dir: str | Path, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    run_dir = Path(run_dir)
    (run_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    with open(run_dir / "eval_predictions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
