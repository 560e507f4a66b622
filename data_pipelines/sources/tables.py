"""Hugging Face datasets as parquet or arrow files, read batch by batch: the_cauldron, PixMo-Docs and
ChartQA (either of its layouts, molmini/data/layouts.py)."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from data_pipelines.report import ConversionStats
from molmini.data.layouts import CHARTQA_LAYOUTS, Layout, QARow, detect_layout
from molmini.data.records import Record

from .rows import (BadRow, KeyMaker, SourceRow, guarded_records, image_digest, make_record, rejected, row_messages,
                   struct_image)

TABLE_SUFFIXES = (".parquet", ".arrow")


def table_files(path: str | os.PathLike) -> list[Path]:
    """A parquet/arrow file, or the sorted parquet/arrow files under a folder."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TABLE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{path} is not a .parquet/.arrow file or a folder holding some")
    return files


def per_file(engine: str, rows_of: Callable[..., Iterator[SourceRow]], path: str | os.PathLike,
             args: tuple) -> list[Callable[[], Iterator[SourceRow]]] | None:
    """For the Ray engine, a source's rows cut into one piece per table file (`rows_of(file, *args)`),
    for sources whose rows of one file need none of another's: what those files give one by one is what
    the folder gives (keys start from the file's stem and its own row numbers)."""
    return [functools.partial(rows_of, file, *args) for file in table_files(path)] if engine == "ray" else None


def iter_table_rows(path: str | os.PathLike, columns: list[str],
                    batch_size: int = 64) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(file stem, row number in its file, row as a dict of `columns`) for every row of every table file."""
    import pyarrow.parquet as pq

    for file in table_files(path):
        if file.suffix == ".parquet":
            reader = pq.ParquetFile(file)
            names = reader.schema_arrow.names
            batches = reader.iter_batches(batch_size=batch_size, columns=[c for c in columns if c in names])
        else:
            names, batches = _arrow_batches(file)
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{file} has no column(s) {missing} (it has {names}); is it the right dataset format?")
        row = 0
        for batch in batches:
            for values in batch.select(columns).to_pylist():
                yield file.stem, row, values
                row += 1


def table_columns(file: Path) -> list[str]:
    """The column names of a parquet or arrow file, from its schema."""
    import pyarrow.parquet as pq

    return pq.read_schema(file).names if file.suffix == ".parquet" else _arrow_batches(file)[0]


def iter_layout_rows(path: str | os.PathLike, layouts: tuple[Layout, ...]) -> Iterator[tuple[str, int, QARow]]:
    """(file stem, row number, QARow) for every row, each file read in the layout its columns show."""
    for file in table_files(path):
        layout = detect_layout(layouts, table_columns(file), str(file))
        for stem, index, values in iter_table_rows(file, list(layout.columns)):
            yield stem, index, layout.row(values)


def _arrow_batches(file: Path) -> tuple[list[str], Iterator[Any]]:
    """Column names and record batches of an Arrow file: the stream format `datasets.save_to_disk`
    writes, or the random-access file format."""
    import pyarrow as pa

    try:
        stream = pa.ipc.open_stream(pa.memory_map(str(file)))
        return stream.schema.names, iter(stream)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(pa.memory_map(str(file)))
        return reader.schema.names, (reader.get_batch(i) for i in range(reader.num_record_batches))


# ---- the_cauldron ----------------------------------------------------------------------------------------

def convert_cauldron(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                     source: str | None = None, task: str = "vqa",
                     stats: ConversionStats | None = None, engine: str = "local") -> Iterator[Record]:
    """Records from parquet/arrow in HuggingFaceM4/the_cauldron's schema (`images`: list of {bytes, path},
    `texts`: list of {user, assistant, source}), one per row with every text as a turn and every image of
    the row (several in some subsets). `source` defaults to "the_cauldron/" + the texts' own source. Rows
    without an image are skipped."""
    args = (images_dir, source, task)
    return guarded_records(_cauldron_rows(path, *args), stats, engine, per_file(engine, _cauldron_rows, path, args))


def _cauldron_rows(path: str | os.PathLike, images_dir: str | os.PathLike | None, source: str | None,
                   task: str) -> Iterator[SourceRow]:
    for stem, index, values in iter_table_rows(path, ["images", "texts"]):

        def build(keys: KeyMaker) -> Record:
            images, texts = values["images"] or [], values["texts"] or []
            if not images:
                raise BadRow("no_image", "the row has no image")
            messages = row_messages((t.get("user"), t.get("assistant")) for t in texts)
            text_sources = sorted({t.get("source") or "" for t in texts})
            name = source or "/".join(filter(None, ["the_cauldron", text_sources[0]]))
            return make_record(keys("cauldron", stem, f"{index:07d}"),
                               [struct_image(image, images_dir) for image in images], messages,
                               source=name, task=task, meta={"file": stem, "row": index,
                                                             "text_sources": text_sources})

        yield f"cauldron {stem} row {index}", build, 1


# ---- PixMo-Docs ------------------------------------------------------------------------------------------

def pixmo_docs_pairs(questions: Any) -> list[tuple[Any, Any]]:
    """(question, answer) pairs from pixmo-docs' `questions`: a struct of lists ({"question": [...],
    "answer": [...]}, how `datasets` stores a Sequence of dicts), or a list of {question, answer}."""
    if isinstance(questions, dict):
        asked, answered = questions.get("question") or [], questions.get("answer") or []
        if len(asked) != len(answered):
            raise BadRow("invalid_conversation", f"{len(asked)} questions but {len(answered)} answers")
        return list(zip(asked, answered))
    return [(q.get("question"), q.get("answer")) for q in questions or []]


def convert_pixmo_docs(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                       source: str = "pixmo-docs", task: str = "doc_qa",
                       stats: ConversionStats | None = None, engine: str = "local") -> Iterator[Record]:
    """Records from allenai/pixmo-docs parquet (`image`, `image_id`, `questions`), one per image with all
    its questions as turns; keyed by `image_id`."""
    args = (images_dir, source, task)
    return guarded_records(_pixmo_docs_rows(path, *args), stats, engine,
                           per_file(engine, _pixmo_docs_rows, path, args))


def _pixmo_docs_rows(path: str | os.PathLike, images_dir: str | os.PathLike | None, source: str,
                     task: str) -> Iterator[SourceRow]:
    for stem, index, values in iter_table_rows(path, ["image", "image_id", "questions"]):
        image_id = values["image_id"] or f"{stem}-{index:07d}"

        def build(keys: KeyMaker) -> Record:
            messages = row_messages(pixmo_docs_pairs(values["questions"]))
            return make_record(keys(source, image_id), struct_image(values["image"], images_dir), messages,
                               source=source, task=task, meta={"image_id": image_id})

        yield f"pixmo-docs {stem} row {index} (image_id {image_id!r})", build, 1


# ---- ChartQA ---------------------------------------------------------------------------------------------

def convert_chartqa(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                    source: str = "chartqa", task: str = "chart_qa", group_by_image: bool = True,
                    stats: ConversionStats | None = None, engine: str = "local") -> Iterator[Record]:
    """Records from ChartQA parquet in either of its layouts (molmini/data/layouts.py): HuggingFaceM4/ChartQA
    (`image`, `query`, `label`: list of answers, `human_or_machine`) or lmms-lab/ChartQA (`image`, `question`,
    `answer`, `type`). The first answer is the answer; meta keeps all of them and each question's subset
    ("human" or "augmented"). Rows with the same image bytes become one record unless `group_by_image` is
    False (then one per row).

    Grouping reads the table twice: once for the questions and image hashes, once for the images."""
    args = (images_dir, source, task, group_by_image)
    # Grouping by image spans the files: only rows kept apart can be read file by file.
    parts = None if group_by_image else per_file(engine, _chartqa_rows, path, args)
    return guarded_records(_chartqa_rows(path, *args), stats, engine, parts)


def _chartqa_rows(path: str | os.PathLike, images_dir: str | os.PathLike | None, source: str, task: str,
                  group_by_image: bool) -> Iterator[SourceRow]:
    groups: dict[str, dict[str, list]] = {}  # image digest (or row) -> its rows and their questions
    for stem, index, qa in iter_layout_rows(path, CHARTQA_LAYOUTS):
        if not isinstance(qa.question, str) or not qa.question.strip() or not qa.answers or not qa.answers[0].strip():
            yield f"chartqa {stem} row {index}", rejected(BadRow("empty_conversation",
                                                                 "the question or its answer is empty")), 1
            continue
        group_id = image_digest(qa.image) if group_by_image else f"{stem}/{index}"
        group = groups.setdefault(group_id, {"rows": [], "qas": [], "labels": [], "subsets": []})
        group["rows"].append(f"{stem}/{index}")
        group["qas"].append((qa.question, qa.answers[0]))
        group["labels"].append(qa.answers)
        group["subsets"].append(qa.subset)
    firsts = {g["rows"][0]: g for g in groups.values()}
    for stem, index, values in iter_table_rows(path, ["image"]):
        group = firsts.get(f"{stem}/{index}")
        if group is None:
            continue  # a skipped row, or a later row of a group already written
        meta = {"rows": group["rows"], "labels": group["labels"], "subsets": group["subsets"]}

        def build(keys: KeyMaker) -> Record:
            return make_record(keys(source, stem, f"{index:07d}"), struct_image(values["image"], images_dir),
                               row_messages(group["qas"]), source=source, task=task, meta=meta)

        yield f"chartqa {stem} row {index} (rows {group['rows']})", build, len(group["rows"])
