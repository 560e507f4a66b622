"""Run models over benchmarks: batched, greedy and resumable.

Output folder layout:

    OUT/results.json                         one entry per (model, benchmark): score, per-subset scores,
                                             the model's parameters and training cost, and the benchmark's
                                             settings (prompt template, max_new_tokens, source)
    OUT/predictions/<model>__<benchmark>__<key>.jsonl
                                             every item: raw and normalised prediction, golds and score

The predictions file is also the cache: a line is written as soon as its batch is answered, and a later
run over the same folder skips the items already there. Its name carries a hash of the model's
`cache_key` (a hash of the checkpoint's files' contents), the benchmark and its generation settings.
Each line carries its `answer_key`: a hash of the model's cache_key, the generation settings
(max_new_tokens, prompt template, greedy decoding) and the item itself (its images' bytes and its
prompt). A cached answer is reused only when the item's key matches, so a benchmark folder whose records
were replaced by others under the same keys, a checkpoint retrained in place, or other settings are
answered again, never scored with another item's answer; the log says how many were reused and how
many were stale. Scores are recomputed from the cached raw predictions on every run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from molmini.progress import progress_bar

from .benchmarks import load_benchmark
from .items import Benchmark, BenchmarkItem
from .metrics import extract_choice, normalise_vqa_answer
from .models import ModelAdapter

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
BENCHMARK_ALIASES = {"synth-charts": "synthetic"}  # the name eval.heldout reports under


def parse_benchmarks(specs: str | Sequence[str], prompt_template: str = "") -> list[Benchmark]:
    """`chartqa,synthetic=data/charts/test,jsonl=my_task.jsonl`: a benchmark name, optionally with its
    path (default: its folder under benchmarks/). Every path is checked before any model loads.
    `prompt_template` (a key of PROMPT_TEMPLATES) asks every benchmark's items with that template."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    benchmarks = []
    for spec in specs:
        name, _, path = spec.strip().partition("=")
        benchmarks.append(load_benchmark(BENCHMARK_ALIASES.get(name, name), path or None, prompt_template))
    return benchmarks


def normalise_prediction(item: BenchmarkItem, prediction: str) -> str:
    """What the metric compares: the option letter for multiple choice, the EvalAI-normalised answer for
    VQA accuracy, otherwise the lower-cased answer with collapsed whitespace."""
    if item.metric == "multiple_choice_accuracy":
        return extract_choice(prediction, item.options) or ""
    if item.metric == "vqa_accuracy":
        return normalise_vqa_answer(prediction)
    return " ".join(prediction.strip().lower().split())


def prediction_row(adapter: ModelAdapter, benchmark: Benchmark, item: BenchmarkItem, prediction: str) -> dict[str, Any]:
    return {"model": adapter.name, "cache_key": adapter.cache_key, "benchmark": benchmark.spec.name,
            "item_id": item.id, "answer_key": answer_key(adapter, benchmark, item), "subset": item.subset,
            "prompt": item.prompt, "golds": item.golds, "metric": item.metric, "prediction": prediction,
            "normalised_prediction": normalise_prediction(item, prediction), "score": item.score(prediction)}


# ---- the cache -------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "model"


def predictions_path(out_dir: Path, adapter: ModelAdapter, benchmark: Benchmark) -> Path:
    settings = benchmark.settings()
    identity = json.dumps([adapter.cache_key, settings["benchmark"], str(Path(settings["path"]).resolve()),
                           settings["prompt_template"], settings["max_new_tokens"]])
    key = hashlib.sha1(identity.encode()).hexdigest()[:10]
    return out_dir / "predictions" / f"{_slug(adapter.name)}__{benchmark.spec.name}__{key}.jsonl"


def generation_settings(benchmark: Benchmark, item: BenchmarkItem) -> dict[str, Any]:
    """What an answer depends on besides the model and the item: the runner always decodes greedily."""
    return {"max_new_tokens": benchmark.spec.max_new_tokens, "prompt_template": item.prompt_template,
            "sampling": "greedy"}


def item_digest(item: BenchmarkItem) -> str:
    """A hash of what the model is shown: every image's bytes and the prompt (question, options, template)."""
    digest = hashlib.sha256()
    for data in item.images:
        digest.update(len(data or b"").to_bytes(8, "big") + (data or b""))
    digest.update(item.prompt.encode("utf-8"))
    return digest.hexdigest()


def answer_key(adapter: ModelAdapter, benchmark: Benchmark, item: BenchmarkItem) -> str:
    """The key a cached answer is reused under: the model, the generation settings and the item's content."""
    identity = json.dumps([adapter.cache_key, generation_settings(benchmark, item), item_digest(item)],
                          sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def cached_rows(path: Path, cache_key: str) -> Iterator[dict[str, Any]]:
    """The rows of a predictions file (written by an earlier, maybe interrupted, run) that model `cache_key`
    wrote, in order; a torn last line is ignored, and so is any line written for another model."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: ignoring an unreadable line (an interrupted write)", path)
            continue
        if row.get("cache_key") == cache_key:
            yield row


def read_cached_predictions(path: Path, cache_key: str) -> dict[str, tuple[str, str]]:
    """item id -> (answer key, raw prediction) of the last line written for an item (a line written before
    answer keys existed has none, and is never reused)."""
    return {row["item_id"]: (row.get("answer_key", ""), row["prediction"]) for row in cached_rows(path, cache_key)}


# ---- running ---------------------------------------------------------------------------------------------

class NothingToEvaluate(ValueError):
    """A benchmark that yielded no readable item: a score over none would read as a result."""


class TooManySkipped(ValueError):
    """A benchmark that skipped more of its questions than the user allowed: its score would stand for a
    small, possibly unrepresentative part of it (a wrong folder or a broken download far more often)."""


def check_skipped(benchmark: Benchmark, scored: int, max_fraction: float | None) -> None:
    """Raise TooManySkipped when more than `max_fraction` of the questions read (scored plus skipped) were
    skipped, naming the reasons, the first skipped row and the fix. None: no check."""
    skipped = benchmark.skipped_rows
    if max_fraction is None or not skipped or skipped / (skipped + scored) <= max_fraction:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(benchmark.skipped_by_reason.items()) if n)
    first = f"; the first: {benchmark.skipped[0][0]}: {benchmark.skipped[0][1]}" if benchmark.skipped else ""
    if benchmark.spec.name == "synthetic":
        check = f"check the shards with `python -m data_pipelines inspect --input {benchmark.path}`"
    elif benchmark.spec.dataset_id:
        check = (f"check that {benchmark.path} holds the whole benchmark "
                 f"(e.g. `{benchmark.spec.fetch_command(benchmark.path)}`)")
    else:
        check = f"check the files in {benchmark.path}"
    raise TooManySkipped(
        f"{benchmark.spec.name} at {benchmark.path}: skipped {skipped} of {skipped + scored} questions "
        f"({100 * skipped / (skipped + scored):.0f}%, more than the {100 * max_fraction:.0f}% that "
        f"--max-skipped-fraction allows; records by reason: {reasons or 'none'}{first}). No score was written; "
        f"{check}, or pass --max-skipped-fraction 1 to score the {scored} questions that were read")


def evaluate(adapter: ModelAdapter, benchmark: Benchmark, out_dir: str | Path, limit: int = 0,
             batch_size: int = 16, max_skipped_fraction: float | None = None) -> dict[str, Any]:
    """Score `adapter` on the first `limit` items (all when 0) of `benchmark`, answering only the items
    not yet in the predictions file; returns the result entry of results.json."""
    out_dir = Path(out_dir)
    adapter, rows, path, answered = predict(adapter, benchmark, out_dir, limit, batch_size,
                                            max_skipped_fraction=max_skipped_fraction)
    return summarise(adapter, benchmark, rows, limit, path.relative_to(out_dir), answered)


def predict(adapter: ModelAdapter, benchmark: Benchmark, out_dir: Path, limit: int = 0, batch_size: int = 16,
            desc: str = "", max_skipped_fraction: float | None = None
            ) -> tuple[ModelAdapter, list[dict[str, Any]], Path, int]:
    """(the adapter fitted to the benchmark, a prediction row per item, the predictions file, how many
    items were answered now rather than taken from it). More than `max_skipped_fraction` of the questions
    skipped raises TooManySkipped (None: any share)."""
    adapter = adapter.for_benchmark(iter(benchmark))   # a majority baseline fits on the golds here
    path = predictions_path(out_dir, adapter, benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = read_cached_predictions(path, adapter.cache_key)
    max_new_tokens = benchmark.spec.max_new_tokens
    rows: list[dict[str, Any]] = []
    pending: list[BenchmarkItem] = []
    answered = stale = 0

    # A bar per (model, benchmark) on stderr, counting items answered or taken from the cache.
    bar = progress_bar(total=limit or None, desc=desc or f"{adapter.name} on {benchmark.spec.name}", unit="item")
    with open(path, "a", encoding="utf-8") as cache, bar:
        def answer_pending() -> None:
            nonlocal answered
            for item, prediction in zip(pending, adapter.predict(pending, max_new_tokens)):
                row = prediction_row(adapter, benchmark, item, prediction)
                cache.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
            cache.flush()
            answered += len(pending)
            bar.update(len(pending))
            pending.clear()

        for item in islice(benchmark, limit or None):
            key, prediction = cached.get(item.id, (None, ""))
            if key == answer_key(adapter, benchmark, item):
                rows.append(prediction_row(adapter, benchmark, item, prediction))
                bar.update(1)
                continue
            stale += key is not None  # cached for an item of this id that has changed (or for other settings)
            pending.append(item)
            if len(pending) == batch_size:
                answer_pending()
        if pending:
            answer_pending()
    if not rows:
        first = f"; the first: {benchmark.skipped[0][1]}" if benchmark.skipped else ""
        raise NothingToEvaluate(f"{benchmark.spec.name} at {benchmark.path}: no readable item to evaluate "
                                f"({benchmark.skipped_rows} rows skipped{first})")
    check_skipped(benchmark, len(rows), max_skipped_fraction)
    log.info("%s on %s: %d items, %d answered now, %d cached answers reused from %s", adapter.name,
             benchmark.spec.name, len(rows), answered, len(rows) - answered, path)
    if stale:
        log.warning("%s on %s: %d cached answers were stale (the item's image or question, the model or the "
                    "generation settings changed since) and were answered again; %d reused", adapter.name,
                    benchmark.spec.name, stale, len(rows) - answered)
    return adapter, rows, path, answered


def summarise(adapter: ModelAdapter, benchmark: Benchmark, rows: list[dict[str, Any]], limit: int,
              predictions: Path, answered: int) -> dict[str, Any]:
    def mean(scores: list[float]) -> float:
        return sum(scores) / len(scores) if scores else 0.0

    subsets: dict[str, list[float]] = {}
    for row in rows:
        subsets.setdefault(row["subset"] or "all", []).append(row["score"])
    return {"model": adapter.describe(), "benchmark": benchmark.spec.name, "settings": benchmark.settings(),
            "n": len(rows), "score": mean([r["score"] for r in rows]),
            "per_subset": {name: {"n": len(s), "score": mean(s)} for name, s in sorted(subsets.items())},
            "limit": limit, "answered_this_run": answered, "predictions": str(predictions)}


def run(model_specs: Iterable[str], benchmarks: list[Benchmark], out_dir: str | Path,
        build: Callable[[str], ModelAdapter], limit: int = 0, batch_size: int = 16,
        max_skipped_fraction: float | None = None) -> list[dict[str, Any]]:
    """Each model in turn (built by `build(spec)`, then released) over every benchmark; results.json in
    `out_dir` gains or replaces one entry per (model, benchmark) and keeps the others."""
    import torch

    torch.manual_seed(0)  # generation is greedy; this only pins anything a model samples at load time
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = read_results(out_dir)
    for spec in model_specs:
        adapter = build(spec)
        for benchmark in benchmarks:
            entry = evaluate(adapter, benchmark, out_dir, limit=limit, batch_size=batch_size,
                             max_skipped_fraction=max_skipped_fraction)
            entry["model"]["spec"] = spec
            entries = [e for e in entries if (e["model"]["cache_key"], e["benchmark"]) !=
                       (entry["model"]["cache_key"], entry["benchmark"])] + [entry]
            write_results(out_dir, entries)
            print(f"{adapter.name:<32} {benchmark.spec.name:<14} {100 * entry['score']:6.1f}  "
                  f"({entry['n']} items, {entry['answered_this_run']} answered now, "
                  f"{entry['n'] - entry['answered_this_run']} reused from the cache)")
        del adapter
    return entries


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    return json.loads(path.read_text())["results"]


def write_results(out_dir: Path, entries: list[dict[str, Any]]) -> None:
    path = out_dir / RESULTS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"results": entries}, indent=2, ensure_ascii=False))
    tmp.replace(path)  # a run killed mid-write leaves the previous results, not half a file
