"""`python -m eval run` results written in lmms-eval's results layout, so the two harnesses' outputs sit
side by side and read with the same tools:

    OUT/<model name, "/" -> "__">/<date>_results.json          {"results": {task: {"alias": task,
                                                               "<metric>,none": score, ...}}, "n-samples",
                                                               "config", "date", ...}
    OUT/<model name>/<date>_samples_<task>.jsonl              one line per item: doc_id, input, target,
                                                               filtered_resps and the item's metric

Tasks take lmms-eval's names and metric keys where lmms-eval has the benchmark (chartqa's
`relaxed_overall` and its human/augmented splits, docvqa_val's and infovqa_val's `anls`, textvqa_val's
`exact_match`, ai2d's `exact_match`); others are `molmini_<name>` with molmini's metric name. Scores are
fractions (0-1), as lmms-eval writes them. The rows are the run's own cached predictions, so nothing is
answered again.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from .runner import cached_rows

# molmini benchmark -> (lmms-eval task, its metric key, {molmini subset: the metric key of that split})
LMMS_TASKS = {
    "chartqa": ("chartqa", "relaxed_overall", {"human": "relaxed_human_split", "augmented": "relaxed_augmented_split"}),
    "docvqa": ("docvqa_val", "anls", {}),
    "infovqa": ("infovqa_val", "anls", {}),
    "textvqa": ("textvqa_val", "exact_match", {}),
    "ai2d": ("ai2d", "exact_match", {}),
}


def sanitized_model_name(name: str) -> str:
    """A folder name for a model: lmms-eval's "/" -> "__", and every other character that is not a letter,
    digit, '.', '_' or '-' (spaces, brackets: "majority (benchmark golds)") as "_"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__")).strip("_") or "model"


def lmms_task(benchmark: str, metric: str) -> tuple[str, str, dict[str, str]]:
    return LMMS_TASKS.get(benchmark, (f"molmini_{benchmark}", metric, {}))


def write_lmms_layout(run_dir: str | Path, entries: list[dict[str, Any]], out_dir: str | Path | None = None,
                      date: str | None = None) -> list[Path]:
    """One results file (and one samples file per task) per model of `entries` (the results.json list of
    the run folder `run_dir`), under `out_dir` (default RUN_DIR/lmms_eval); returns the results files."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "lmms_eval"
    date = date or time.strftime("%Y-%m-%dT%H-%M-%S")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_model.setdefault(entry["model"]["name"], []).append(entry)
    written = []
    for model, model_entries in by_model.items():
        folder = out_dir / sanitized_model_name(model)
        folder.mkdir(parents=True, exist_ok=True)
        results, n_samples, configs, higher_is_better = {}, {}, {}, {}
        for entry in model_entries:
            metric = entry["settings"].get("metric", "score")
            task, key, splits = lmms_task(entry["benchmark"], metric)
            row = {"alias": task, f"{key},none": entry["score"], f"{key}_stderr,none": "N/A"}
            for subset, split_key in splits.items():
                if subset in entry["per_subset"]:
                    row[f"{split_key},none"] = entry["per_subset"][subset]["score"]
                    row[f"{split_key}_stderr,none"] = "N/A"
            results[task] = row
            higher_is_better[task] = {key: True}
            n_samples[task] = {"original": entry["n"], "effective": entry["n"]}
            configs[task] = {"task": task, "molmini_benchmark": entry["benchmark"], **entry["settings"]}
            _write_samples(folder / f"{date}_samples_{task}.jsonl", run_dir / entry["predictions"],
                           entry["model"]["cache_key"], key)
        described = model_entries[0]["model"]
        summary = {"results": results, "group_subtasks": {t: [] for t in results}, "configs": configs,
                   "versions": {t: "molmini" for t in results}, "n-shot": {t: 0 for t in results},
                   "higher_is_better": higher_is_better,
                   "n-samples": n_samples,
                   "config": {"model": "molmini", "model_args": f"pretrained={described.get('spec', model)}",
                              "batch_size": None, "num_parameters": described.get("num_parameters")},
                   "date": date, "model_name": model, "model_name_sanitized": sanitized_model_name(model),
                   "written_by": "python -m eval run --lmms-eval-layout"}
        path = folder / f"{date}_results.json"
        path.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        written.append(path)
    return written


def _write_samples(path: Path, predictions: Path, cache_key: str, key: str) -> None:
    """The model's rows of a predictions file of the run (written beside its results.json) as lmms-eval
    sample lines, one per item; a torn line (an interrupted run) is left out, as the run leaves it out."""
    lines, seen = [], set()
    for row in cached_rows(predictions, cache_key):
        if row["item_id"] in seen:
            continue
        seen.add(row["item_id"])
        golds = row["golds"]
        lines.append(json.dumps({"doc_id": len(lines), "item_id": row["item_id"], "input": row["prompt"],
                                 "target": golds[0] if len(golds) == 1 else str(golds),
                                 "filtered_resps": [row["prediction"]], key: row["score"]}, ensure_ascii=False))
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
