"""How each source's rows become `BenchmarkItem`s: Hugging Face parquet files in their common layouts
(molmini/data/layouts.py), molmini's synthetic shards, and a user's jsonl file (read and written).
Each reader yields items and reports every row it leaves out through `skip`, once."""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from molmini.data.layouts import QARow, detect_layout

from .items import PROMPT_TEMPLATES, BenchmarkItem, BenchmarkSpec, SkipFn, parquet_files
from .metrics import METRICS, answer_letter

log = logging.getLogger(__name__)


# ---- parquet benchmarks ----------------------------------------------------------------------------------

def _parquet_rows(spec: BenchmarkSpec, folder: Path, columns: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path in parquet_files(spec, folder):
        parquet = pq.ParquetFile(path)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing} (it has {parquet.schema_arrow.names}); expected "
                             f"{spec.dataset_id} {spec.config or ''} {spec.split} in the Hugging Face schema")
        for batch in parquet.iter_batches(batch_size=64, columns=list(columns)):
            yield from batch.to_pylist()


def _layout_rows(spec: BenchmarkSpec, folder: Path) -> Iterator[QARow]:
    """Every row of the split as a QARow, each file read in the layout its columns show."""
    import pyarrow.parquet as pq

    for path in parquet_files(spec, folder):
        parquet = pq.ParquetFile(path)
        where = f"{path} ({' '.join(filter(None, (spec.name, spec.config, spec.split)))})"
        layout = detect_layout(spec.layouts, parquet.schema_arrow.names, where)
        for batch in parquet.iter_batches(batch_size=64, columns=list(layout.columns)):
            yield from map(layout.row, batch.to_pylist())


def _image_bytes(value: Any) -> bytes | None:
    """The encoded image of a `datasets` Image column ({bytes, path}) or a plain binary column."""
    if isinstance(value, dict):
        return value.get("bytes")
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def _item(spec: BenchmarkSpec, row_id: str, row: dict[str, Any], golds: list[str], **kw) -> BenchmarkItem:
    return BenchmarkItem(id=row_id, images=(_image_bytes(row["image"]),), question=row["question"],
                         golds=golds, metric=spec.metric, prompt_template=spec.prompt_template, **kw)


def _qa_item(spec: BenchmarkSpec, row_id: str, row: QARow) -> BenchmarkItem:
    return BenchmarkItem(id=row_id, images=(_image_bytes(row.image),), question=row.question,
                         golds=row.answers, metric=spec.metric, prompt_template=spec.prompt_template,
                         subset=row.subset)


def read_chartqa(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """ChartQA rows carry no id: the row's position in the split names it. The subset is "human" or
    "augmented" in either layout."""
    for i, row in enumerate(_layout_rows(spec, folder)):
        row_id = f"chartqa-{spec.split}-{i:05d}"
        if not row.answers:
            skip(row_id, "no gold answer")
            continue
        yield _qa_item(spec, row_id, row)


def read_answers_list(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """DocVQA, InfoVQA (questionId or question_id) and TextVQA (question_id): several accepted answers per
    question."""
    for row in _layout_rows(spec, folder):
        if not row.answers:
            skip(row.id, f"no gold answers (is {spec.split!r} a split with public answers?)")
            continue
        yield _qa_item(spec, row.id, row)


def read_ai2d(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """AI2D rows carry no id; `answer` is the index of the right option, as a string."""
    for i, row in enumerate(_parquet_rows(spec, folder, ("question", "options", "answer", "image"))):
        row_id, options = f"{spec.name}-{spec.split}-{i:05d}", list(row["options"])
        try:
            gold = answer_letter(row["answer"], options)
        except ValueError as e:
            skip(row_id, str(e))
            continue
        yield _item(spec, row_id, row, [gold], options=options)


# ---- held-out synthetic shards ---------------------------------------------------------------------------

def record_qa(record) -> Iterator[tuple[int, str, str, str]]:
    """(index, question, answer, question type) of each exchange of a synthetic record: the type is the
    record's meta.qa_types entry, else its task. The one reading of a record as evaluation items."""
    types = record.meta.get("qa_types") or []
    for j, (question, answer) in enumerate(record.qa_pairs()):
        yield j, question, answer, types[j] if j < len(types) else (record.task or "all")


def read_synthetic(spec: BenchmarkSpec, folder: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """Every question/answer pair of every record, with all of the record's images; the subset is the
    record's meta.qa_types entry. With `spec.one_image` a record with other than one image is skipped."""
    from molmini.data.reader import BadRecords, find_shards, read_records

    # Every bad record reaches `skip` once; a shard cut short counts as all the samples it is missing.
    bad = BadRecords(on_skip=lambda entry: skip(entry.where.rpartition("/")[2], entry.message, entry.count,
                                                reason=entry.reason))
    for record in read_records(find_shards(folder), bad):
        if spec.one_image and record.num_images != 1:
            skip(record.key, f"the record has {record.num_images} images; a benchmark item holds one (evaluate it "
                 "with `python -m eval heldout`)", len(record.qa_pairs()), reason="not_one_image", records=1)
            continue
        images = tuple(data for data, _ in record.images)  # one tuple per record: checked once
        for j, question, answer, question_type in record_qa(record):
            yield BenchmarkItem(id=f"{record.key}-{j}", images=images, question=question, golds=[answer],
                                metric=spec.metric, prompt_template=spec.prompt_template, subset=question_type)


# ---- a user's own task: jsonl ----------------------------------------------------------------------------

JSONL_EXAMPLE = ('{"image": "images/0001.png", "question": "What is the total?", "answers": ["42"], '
                 '"metric": "relaxed_accuracy"}')


def read_jsonl(spec: BenchmarkSpec, path: Path, skip: SkipFn) -> Iterator[BenchmarkItem]:
    """One JSON object per line: "image" (a path relative to the file), "question", "answers" (a list),
    "metric" (a key of METRICS); optional "id", "options" (multiple choice, with answers holding the
    letter or index), "subset" and "prompt_template" (default: question_only, or lmms_eval_mcq with
    options). A malformed line raises, naming the line; an unreadable image skips its row."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                row = _jsonl_row(line, f"{path}:{number}")
                row_id = str(row.get("id", f"{path.stem}-{number}"))
                image_path = path.parent / row["image"]
                try:
                    image = image_path.read_bytes()
                except OSError as e:
                    skip(row_id, f"image {str(image_path)!r} cannot be read ({e.strerror})")
                    continue
                yield BenchmarkItem(id=row_id, images=(image,), question=row["question"], golds=row["answers"],
                                    metric=row["metric"], prompt_template=row["prompt_template"],
                                    options=row["options"], subset=str(row.get("subset", "")))


def _jsonl_row(line: str, where: str) -> dict[str, Any]:
    """The parsed, checked line, with answers as strings, options and prompt_template filled in."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e}); each line is one object such as {JSONL_EXAMPLE}") from e
    missing = [k for k in ("image", "question", "answers", "metric") if k not in row] if isinstance(row, dict) else []
    if not isinstance(row, dict) or missing:
        raise ValueError(f"{where}: missing {missing or 'an object'}; each line is one object such as {JSONL_EXAMPLE}")
    if not isinstance(row["answers"], list) or not row["answers"]:
        raise ValueError(f"{where}: 'answers' must be a non-empty list of strings, got {row['answers']!r}")
    if row["metric"] not in METRICS:
        raise ValueError(f"{where}: metric {row['metric']!r} is not one of {sorted(METRICS)}")
    options = [str(o) for o in row.get("options") or []]
    answers = [str(a) for a in row["answers"]]
    if row["metric"] == "multiple_choice_accuracy":
        if not options:
            raise ValueError(f"{where}: metric multiple_choice_accuracy needs an 'options' list")
        answers = [answer_letter(a, options) for a in answers]
    if row["metric"] == "vqa_accuracy" and len(answers) < 4:
        log.warning("%s: vqa_accuracy with %d answers can never reach 1 (it needs 3 matches among the "
                    "answers left after removing one); consider exact_match", where, len(answers))
    template = row.get("prompt_template") or ("lmms_eval_mcq" if options else "question_only")
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"{where}: prompt_template {template!r} is not one of {sorted(PROMPT_TEMPLATES)}")
    return {**row, "answers": answers, "options": options, "prompt_template": template}


def write_jsonl(items: list[BenchmarkItem], path: str | Path) -> Path:
    """Write items in the jsonl format (images beside it, in `<stem>_images/`), e.g. to keep a small
    subset of a large benchmark; `load_benchmark("jsonl", path)` reads them back."""
    path = Path(path)
    image_dir = path.parent / f"{path.stem}_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    several = next((item.id for item in items if len(item.images) != 1), None)
    if several is not None:
        raise ValueError(f"item {several!r} has other than one image; a jsonl benchmark line holds one image")
    with open(path, "w", encoding="utf-8") as out:
        for i, item in enumerate(items):
            with Image.open(io.BytesIO(item.image)) as img:
                extension = (img.format or "bin").lower()
            image_path = image_dir / f"{i:06d}_{re.sub(r'[^A-Za-z0-9_-]', '_', item.id)}.{extension}"
            image_path.write_bytes(item.image)
            row = {"id": item.id, "image": str(image_path.relative_to(path.parent)), "question": item.question,
                   "answers": item.golds, "metric": item.metric, "prompt_template": item.prompt_template}
            row.update({k: v for k, v in (("options", item.options), ("subset", item.subset)) if v})
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
