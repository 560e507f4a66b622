"""report.html: the report as one page people look at instead of reading jsonl.

One self-contained file that opens from disk (eval/report_page.html is its frame): the scores table; per
question type, a bar per model beside the majority baseline; a confusion table per categorical question type
(few distinct golds, such as colours or yes/no); and a gallery of every prediction (thumbnail, question, gold,
each model's answer and score, the models side by side on the same items), filterable to wrong answers, 50
rows a page so 2,500 items stay quick. Thumbnails are small JPEGs embedded as data: URLs; each links to its full
image, written beside the page (report_images/). A molmini model's training curves (`molmini plot`) are linked
when its run folder is known (the checkpoint's parent holds train_log.jsonl).

The images come from the benchmarks themselves, re-read at the path results.json records: predictions files
hold item ids, not pixels. A benchmark no longer at that path leaves its rows without thumbnails.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from .runner import cached_rows, read_results

log = logging.getLogger(__name__)

PAGE_FRAME = Path(__file__).with_name("report_page.html")
IMAGES_DIR = "report_images"
THUMB_PX = 160
MAX_CATEGORIES = 12  # a question type whose golds repeat, with at most this many distinct, gets a confusion table


def format_parameters(n: int | None) -> str:
    if n is None:
        return "—"
    if n == 0:
        return "0"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def load_predictions(results_dirs: Sequence[str | Path], names: dict[str, str]) -> list[dict[str, Any]]:
    """Every prediction row of every (model, benchmark) entry of the folders, with `name` as the report calls
    the model (`names`: cache key -> row name), the settings of its benchmark and its model's spec."""
    rows = []
    for folder in results_dirs:
        for entry in read_results(folder):
            key = entry["model"]["cache_key"]
            path = Path(folder) / entry.get("predictions", "")
            if not entry.get("predictions") or not path.is_file():
                continue
            for row in cached_rows(path, key):
                rows.append({**row, "name": names.get(key, entry["model"]["name"]), "settings": entry["settings"]})
    return rows


def gallery_items(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One item per (benchmark, item id), each model's (prediction, score) under its name; in benchmark order."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for row in predictions:
        item = items.setdefault((row["benchmark"], row["item_id"]), {
            "b": row["benchmark"], "id": row["item_id"], "t": row["subset"] or "all", "q": row["prompt"],
            "g": row["golds"], "p": {}, "img": None})
        item["p"][row["name"]] = [row["prediction"], round(float(row["score"]), 4)]
    return list(items.values())


def attach_images(items: list[dict[str, Any]], predictions: list[dict[str, Any]], out_dir: Path
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """(thumbnail data: URL, full image's relative path) per image hash; each item's `img` is set to its hash.
    Each benchmark is re-read once, at the path its results recorded."""
    from .benchmarks import load_benchmark
    settings = {row["benchmark"]: row["settings"] for row in predictions}
    by_benchmark: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for item in items:
        by_benchmark[item["b"]][item["id"]] = item
    thumbs: dict[str, str] = {}
    full: dict[str, str] = {}
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for name, wanted in by_benchmark.items():
        s = settings[name]
        try:
            benchmark = load_benchmark(s["benchmark"], s["path"])
            for bench_item in benchmark:
                item = wanted.get(bench_item.id)
                if item is None or not bench_item.image:
                    continue
                digest = hashlib.sha1(bench_item.image).hexdigest()[:16]
                if digest not in thumbs:
                    thumbs[digest], full[digest] = save_image(bench_item.image, digest, out_dir)
                item["img"] = digest
        except (OSError, ValueError) as e:
            log.warning("report.html: no thumbnails for %s (%s): %s", name, s["path"], e)
    return thumbs, full


def save_image(data: bytes, digest: str, out_dir: Path) -> tuple[str, str]:
    """A JPEG thumbnail as a data: URL, and the full image written beside the page in its own format."""
    from PIL import Image
    image = Image.open(io.BytesIO(data))
    ext = (image.format or "png").lower().replace("jpeg", "jpg")
    relative = f"{IMAGES_DIR}/{digest}.{ext}"
    (out_dir / relative).write_bytes(data)
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    thumb.save(buf, "jpeg", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), relative


# ---- the static parts ----------------------------------------------------------------------------------

def scores_table(rows, benchmarks: list[str]) -> str:
    head = "".join(f"<th>{html.escape(b)}</th>" for b in benchmarks)
    lines = [f"<table id='scores'><tr><th>model</th><th>kind</th><th>parameters</th>{head}</tr>"]
    for row in rows:
        cells = "".join(f"<td class='num'>{row.scores[b]:.1f}</td>" if b in row.scores else "<td>—</td>"
                        for b in benchmarks)
        lines.append(f"<tr><td>{html.escape(row.name)}</td><td>{row.kind}</td>"
                     f"<td class='num'>{format_parameters(row.num_parameters)}</td>{cells}</tr>")
    return "\n".join(lines) + "</table>"


def type_bars(rows, benchmarks: list[str]) -> str:
    """Per benchmark and question type, one bar per model run here, the majority baseline's in grey."""
    parts = []
    for b in benchmarks:
        measured = [r for r in rows if r.subset_scores.get(b)]
        types = sorted({t for r in measured for t in r.subset_scores[b]})
        if not types:
            continue
        lines = [f"<h3>{html.escape(b)}: score per question type</h3><table class='bars'>"]
        for t in types:
            lines.append(f"<tr><th colspan='3'>{html.escape(t)}</th></tr>")
            for r in measured:
                if t not in r.subset_scores[b]:
                    continue
                score = r.subset_scores[b][t]
                kind = "majority" if r.name.startswith("majority") else r.kind
                lines.append(f"<tr><td>{html.escape(r.name)}</td><td><span class='bar {kind}' "
                             f"style='width:{3 * score:.0f}px'></span></td><td class='num'>{score:.1f}</td></tr>")
        parts.append("\n".join(lines) + "</table>")
    return "\n".join(parts)


def confusion_tables(predictions: list[dict[str, Any]]) -> str:
    """For each categorical (benchmark, question type), 2..MAX_CATEGORIES distinct golds each asked about twice
    on average: per model, gold (rows) against prediction (columns; an answer that is no gold is `other`)."""
    groups: dict[tuple[str, str], dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for row in predictions:
        if row["golds"]:
            gold = " ".join(str(row["golds"][0]).lower().split())
            groups[(row["benchmark"], row["subset"] or "all")][row["name"]].append((gold, row["normalised_prediction"]))
    parts = []
    for (benchmark, qtype), by_model in sorted(groups.items()):
        golds = sorted({g for pairs in by_model.values() for g, _ in pairs})
        asked = max(len(pairs) for pairs in by_model.values())
        if not 2 <= len(golds) <= MAX_CATEGORIES or asked < 2 * len(golds):
            continue
        for name, pairs in by_model.items():
            counts = Counter((g, p if p in golds else "other") for g, p in pairs)
            columns = golds + (["other"] if any(p == "other" for _, p in counts) else [])
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            lines = [f"<details><summary>{html.escape(benchmark)} / {html.escape(qtype)}: {html.escape(name)}"
                     f"</summary><table class='confusion'><tr><th>gold \\ predicted</th>{head}</tr>"]
            for g in golds:
                cells = "".join(f"<td class='num {'hit' if c == g else 'miss' if counts[(g, c)] else ''}'>"
                                f"{counts[(g, c)] or ''}</td>" for c in columns)
                lines.append(f"<tr><th>{html.escape(g)}</th>{cells}</tr>")
            parts.append("\n".join(lines) + "</table></details>")
    return "\n".join(parts)


def training_curves(results_dirs: Sequence[str | Path], out_dir: Path) -> list[tuple[str, str]]:
    """(model name, the curves PNG's path relative to the page) for every molmini model whose run folder is
    known: its checkpoint's parent (or the checkpoint folder itself) holds train_log.jsonl."""
    from molmini.cli import plot_curves
    from molmini.train.checkpointing import LOG_FILE
    links, seen = [], set()
    for folder in results_dirs:
        for entry in read_results(folder):
            spec, name = entry["model"].get("spec") or "", entry["model"]["name"]
            if entry["model"]["kind"] != "molmini" or not spec or ":" in spec or name in seen:
                continue
            checkpoint = Path(spec)
            run_dir = next((d for d in (checkpoint.parent, checkpoint) if (d / LOG_FILE).is_file()), None)
            if run_dir is None:
                continue
            seen.add(name)
            try:
                png = plot_curves(run_dir, out_dir / f"curves_{hashlib.sha1(name.encode()).hexdigest()[:8]}.png")
            except (OSError, ValueError) as e:
                log.warning("report.html: no training curves for %s: %s", name, e)
                continue
            links.append((name, png.name))
    return links


def write_html_report(path: Path, rows, benchmarks: list[str], results_dirs: Sequence[str | Path]) -> Path:
    """report.html at `path` for the report's `rows` over `benchmarks`, from the folders' predictions."""
    out_dir = path.parent
    names = {r.cache_key: r.name for r in rows if r.cache_key}
    predictions = load_predictions(results_dirs, names)
    items = gallery_items(predictions)
    thumbs, full = attach_images(items, predictions, out_dir)
    models = list(dict.fromkeys(row["name"] for row in predictions))
    curves = training_curves(results_dirs, out_dir)
    body = ["<h1>molmini evaluation report</h1>", "<h2>Scores (%)</h2>", scores_table(rows, benchmarks)]
    if curves:
        body.append("<p>Training curves: " + ", ".join(
            f"<a href='{html.escape(png)}'>{html.escape(name)}</a>" for name, png in curves) + "</p>")
    bars = type_bars(rows, benchmarks)
    if bars:
        body += ["<h2>Per question type, beside the majority answer</h2>", bars]
    confusion = confusion_tables(predictions)
    if confusion:
        body += ["<h2>Confusion tables (categorical question types)</h2>", confusion]
    data = json.dumps({"models": models, "items": items, "thumbs": thumbs, "full": full}, ensure_ascii=False)
    page = PAGE_FRAME.read_text(encoding="utf-8")
    page = page.replace("<!--BODY-->", "\n".join(body)).replace("<!--DATA-->", data.replace("<", "\\u003c"))
    path.write_text(page, encoding="utf-8")
    return path
