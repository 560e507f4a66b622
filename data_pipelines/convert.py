"""Converters from public dataset formats into `Record`s, and the function that writes them into shards.

Each converter is a generator of Records that reads its input lazily (a parquet file batch by batch). A row
it cannot use (missing image file, undecodable image, empty or malformed conversation) is logged by name,
counted in `stats` (a `ConversionStats`) and skipped. Images keep their original bytes when they are PNG or
JPEG; other formats are re-encoded as PNG. Keys are built from the source's ids or row numbers, with every
character other than letters, digits, '_' and '-' replaced by '_' (webdataset reads '.' as an extension).

Where a source repeats an image over several rows (LLaVA conversations about one COCO image, ChartQA's
one question per row), the rows are merged into one record by default, so that all questions about an
image form one conversation (Molmo's multi-annotation) and exact-duplicate curation keeps them.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image
from tqdm import tqdm

from data_pipelines.report import ConversionStats
from data_pipelines.shards import ShardWriter, atomic_output_dir
from molmini.records import IMAGE_MARKER, Record, RecordError, strip_image_marker, validate_messages

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
DEFAULT_CAPTION_PROMPT = "Describe this image."
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHARTQA_ORIGINS = {0: "human", 1: "machine"}  # HuggingFaceM4/ChartQA's class_label names
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}  # modes PIL can write as PNG
TABLE_SUFFIXES = (".parquet", ".arrow")
class BadRow(ValueError):
    """A source row that cannot become a record; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class KeyMaker:
    """Unique record keys: unsafe characters become '_', and a key seen before gets a '-2', '-3' ... suffix."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, *parts: Any) -> str:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(str(p) for p in parts)) or "record"
        key, n = base, 1
        while key in self._seen:
            n += 1
            key = f"{base}-{n}"
        self._seen.add(key)
        return key


# ---- images -----------------------------------------------------------------------------------------------

def checked_image_bytes(data: bytes) -> tuple[bytes, str]:
    """(bytes, extension) for a Record: PNG and JPEG are kept byte for byte, other formats become PNG."""
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img.load()  # a truncated or corrupt file fails here, not at training time
    except Exception as e:  # PIL raises several unrelated types for bad bytes
        raise BadRow("undecodable_image", f"image cannot be decoded ({type(e).__name__}: {e})") from e
    if fmt == "PNG":
        return data, "png"
    if fmt == "JPEG":
        return data, "jpg"
    if img.mode not in PNG_MODES:
        img = img.convert("RGBA" if img.mode.endswith("A") else "RGB")
    out = io.BytesIO()
    try:
        img.save(out, format="PNG")
    except (OSError, ValueError):  # a mode this PIL cannot write as PNG (32-bit "I" in some versions)
        out = io.BytesIO()
        img.convert("RGB").save(out, format="PNG")
    return out.getvalue(), "png"


def read_image_file(path: str, images_dir: str | os.PathLike | None) -> bytes:
    """The bytes of an image file named relative to `images_dir`. A path that is absolute or climbs out of
    `images_dir` ("../../etc/passwd") is refused: a dataset file must not make the converter read, and copy
    into shards, files from elsewhere on the machine. Without `images_dir` (path-only parquet images and no
    --images) the path is taken as it is."""
    if images_dir is None:
        full = Path(path)
    else:
        base = os.path.abspath(images_dir)  # lexical (symlinked image folders stay allowed)
        full = Path(os.path.abspath(os.path.join(base, path)))
        if Path(path).is_absolute() or os.path.commonpath([base, str(full)]) != base:
            raise BadRow("unsafe_image_path", f"image path {path!r} is absolute or leads out of the images folder "
                         f"{str(images_dir)!r}; give paths relative to --images")
    if not full.is_file():
        raise BadRow("missing_image_file", f"image file {str(full)!r} not found")
    return full.read_bytes()


def struct_image(value: Any, images_dir: str | os.PathLike | None) -> bytes:
    """The bytes of a Hugging Face `Image` value ({"bytes", "path"}); a path-only value is read from disk."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return read_image_file(value["path"], images_dir)
    raise BadRow("missing_image", "the row has no image bytes or path")


def image_digest(value: Any) -> str:
    """sha256 of an image value's bytes (or of its path, for a path-only value): equal images group together."""
    if isinstance(value, dict):
        value = value.get("bytes") or (value.get("path") or "").encode()
    return hashlib.sha256(value or b"").hexdigest()


# ---- conversations ----------------------------------------------------------------------------------------

def row_messages(pairs: Iterable[tuple[Any, Any]]) -> list[dict[str, str]]:
    """Alternating user/assistant messages from (question, answer) pairs; raises BadRow if nothing is left."""
    messages = []
    for question, answer in pairs:
        if not isinstance(question, str) or not isinstance(answer, str):
            raise BadRow("invalid_conversation", f"question and answer must be strings, got {question!r}, {answer!r}")
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return checked_messages(messages)


def checked_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """`messages` if they follow the schema and hold some text; raises BadRow otherwise."""
    if not messages or not any(strip_image_marker(m["content"]) for m in messages):
        raise BadRow("empty_conversation", "the conversation is empty")
    try:
        validate_messages(messages)
    except RecordError as e:
        raise BadRow("invalid_conversation", str(e)) from e
    return messages


def make_record(key: str, image: bytes, messages: list[dict[str, str]], **fields: Any) -> Record:
    data, ext = checked_image_bytes(image)
    return Record(key=key, image=data, image_ext=ext, messages=messages, **fields)


def _guarded(stats: ConversionStats, row: str, build: Callable[[], Record], rows: int = 1) -> Record | None:
    """`build()`, or None after counting (as `rows` source rows) and logging the row as skipped."""
    try:
        record = build()
    except BadRow as e:
        stats.skip(row, e, rows)
        return None
    stats.records += 1
    return record


# ---- LLaVA JSON and captions JSONL ------------------------------------------------------------------------

def llava_messages(conversations: Any, first: bool) -> list[dict[str, str]]:
    """Record messages from LLaVA turns; a conversation merged after the first loses its <image> marker."""
    if not isinstance(conversations, list):
        raise BadRow("empty_conversation", "'conversations' is missing or not a list")
    messages = []
    for turn in conversations:
        role = LLAVA_ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise BadRow("invalid_conversation", f"turn {turn!r} is not a human/gpt turn with a string value")
        text = turn["value"] if first else strip_image_marker(turn["value"])
        messages.append({"role": role, "content": text})
    return checked_messages(messages)


def convert_llava(json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                  source: str = "llava", task: str = "instruct", group_by_image: bool = True,
                  stats: ConversionStats | None = None) -> Iterator[Record]:
    """Records from a LLaVA-format JSON list of {"id", "image", "conversations"}; images are read from
    `images_dir` (default: the JSON's folder). Entries about the same image file become one record unless
    `group_by_image` is False. Entries without an image are skipped (counted as "no_image")."""
    stats = stats if stats is not None else ConversionStats()
    images_dir = Path(json_path).parent if images_dir is None else images_dir
    with open(json_path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{json_path} is not a LLaVA-format file: expected a JSON list of "
                         "{'id', 'image', 'conversations'} objects")
    groups: dict[tuple, list[tuple[str, list[dict[str, str]]]]] = {}  # (image,) or (image, entry) -> entries
    for index, entry in enumerate(entries):
        stats.rows += 1
        entry_id = entry.get("id", index) if isinstance(entry, dict) else index
        row = f"llava entry {index} (id {entry_id!r})"
        try:
            image = entry.get("image") if isinstance(entry, dict) else None
            image = image[0] if isinstance(image, list) and len(image) == 1 else image
            if isinstance(image, list):
                raise BadRow("not_one_image", f"the entry names {len(image)} images; a record holds exactly one")
            if not isinstance(image, str) or not image:
                raise BadRow("no_image", "the entry names no image")
            group = (image,) if group_by_image else (image, index)
            messages = llava_messages(entry.get("conversations"), first=group not in groups)
        except BadRow as e:
            stats.skip(row, e)
            continue
        groups.setdefault(group, []).append((str(entry_id), messages))
    keys = KeyMaker()
    for (image, *_), members in groups.items():
        ids = [entry_id for entry_id, _ in members]
        row = f"llava image {image!r} (ids {ids})"
        messages = [m for _, turns in members for m in turns]
        meta = {"ids": ids, "image": image}
        record = _guarded(stats, row, lambda: make_record(keys(source, ids[0]), read_image_file(image, images_dir),
                                                          messages, source=source, task=task, meta=meta),
                          rows=len(members))
        if record is not None:
            yield record


def convert_captions(jsonl_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                     prompt: str = DEFAULT_CAPTION_PROMPT, source: str = "captions", task: str = "caption",
                     stats: ConversionStats | None = None) -> Iterator[Record]:
    """One-turn caption records from a JSONL of {"image": relative path, "caption": str} lines; the user
    turn is `prompt`. Images are read from `images_dir` (default: the JSONL's folder)."""
    stats = stats if stats is not None else ConversionStats()
    images_dir = Path(jsonl_path).parent if images_dir is None else images_dir
    keys = KeyMaker()
    with open(jsonl_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            stats.rows += 1
            row = f"{jsonl_path} line {number}"

            def build() -> Record:
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadRow("invalid_json", f"not valid JSON ({e})") from e
                if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"]:
                    raise BadRow("no_image", "the line names no image")
                caption = item.get("caption")
                if not isinstance(caption, str) or not caption.strip():
                    raise BadRow("empty_conversation", "the caption is missing or empty")
                messages = row_messages([(IMAGE_MARKER + prompt, caption)])
                key = keys(source, os.path.splitext(item["image"])[0])
                return make_record(key, read_image_file(item["image"], images_dir), messages, source=source,
                                   task=task, meta={"image": item["image"]})

            record = _guarded(stats, row, build)
            if record is not None:
                yield record


# ---- Hugging Face parquet / arrow -------------------------------------------------------------------------

def table_files(path: str | os.PathLike) -> list[Path]:
    """A parquet/arrow file, or the sorted parquet/arrow files under a folder."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TABLE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{path} is not a .parquet/.arrow file or a folder holding some")
    return files


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


def convert_cauldron(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                     source: str | None = None, task: str = "vqa",
                     stats: ConversionStats | None = None) -> Iterator[Record]:
    """Records from parquet/arrow in HuggingFaceM4/the_cauldron's schema (`images`: list of {bytes, path},
    `texts`: list of {user, assistant, source}), one per row with every text as a turn. `source` defaults
    to "the_cauldron/" + the texts' own source. Rows with other than one image are skipped."""
    stats = stats if stats is not None else ConversionStats()
    keys = KeyMaker()
    for stem, index, values in iter_table_rows(path, ["images", "texts"]):
        stats.rows += 1

        def build() -> Record:
            images, texts = values["images"] or [], values["texts"] or []
            if len(images) != 1:
                raise BadRow("not_one_image", f"the row has {len(images)} images; a record holds exactly one")
            messages = row_messages((t.get("user"), t.get("assistant")) for t in texts)
            text_sources = sorted({t.get("source") or "" for t in texts})
            name = source or "/".join(filter(None, ["the_cauldron", text_sources[0]]))
            return make_record(keys("cauldron", stem, f"{index:07d}"), struct_image(images[0], images_dir), messages,
                               source=name, task=task, meta={"file": stem, "row": index,
                                                             "text_sources": text_sources})

        record = _guarded(stats, f"cauldron {stem} row {index}", build)
        if record is not None:
            yield record


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
                       stats: ConversionStats | None = None) -> Iterator[Record]:
    """Records from allenai/pixmo-docs parquet (`image`, `image_id`, `questions`), one per image with all
    its questions as turns; keyed by `image_id`."""
    stats = stats if stats is not None else ConversionStats()
    keys = KeyMaker()
    for stem, index, values in iter_table_rows(path, ["image", "image_id", "questions"]):
        stats.rows += 1
        image_id = values["image_id"] or f"{stem}-{index:07d}"

        def build() -> Record:
            messages = row_messages(pixmo_docs_pairs(values["questions"]))
            return make_record(keys(source, image_id), struct_image(values["image"], images_dir), messages,
                               source=source, task=task, meta={"image_id": image_id})

        record = _guarded(stats, f"pixmo-docs {stem} row {index} (image_id {image_id!r})", build)
        if record is not None:
            yield record


def convert_chartqa(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                    source: str = "chartqa", task: str = "chart_qa", group_by_image: bool = True,
                    stats: ConversionStats | None = None) -> Iterator[Record]:
    """Records from HuggingFaceM4/ChartQA parquet (`image`, `query`, `label`: list of answers,
    `human_or_machine`: 0 human / 1 machine). The first label is the answer; all are kept in meta. Rows
    with the same image bytes become one record unless `group_by_image` is False (then one per row).

    Grouping reads the table twice: once for the questions and image hashes, once for the images."""
    stats = stats if stats is not None else ConversionStats()
    groups: dict[str, dict[str, list]] = {}  # image digest (or row) -> its rows and their questions
    for stem, index, values in iter_table_rows(path, ["image", "query", "label", "human_or_machine"]):
        stats.rows += 1
        row = f"chartqa {stem} row {index}"
        query, labels = values["query"], [str(label) for label in values["label"] or []]
        if not isinstance(query, str) or not query.strip() or not labels or not labels[0].strip():
            stats.skip(row, BadRow("empty_conversation", "the question or its answer is empty"))
            continue
        group_id = image_digest(values["image"]) if group_by_image else f"{stem}/{index}"
        group = groups.setdefault(group_id, {"rows": [], "qas": [], "labels": [], "origins": []})
        group["rows"].append(f"{stem}/{index}")
        group["qas"].append((query, labels[0]))
        group["labels"].append(labels)
        origin = values["human_or_machine"]
        group["origins"].append(CHARTQA_ORIGINS.get(origin, origin) if isinstance(origin, int) else origin)
    firsts = {g["rows"][0]: g for g in groups.values()}
    keys = KeyMaker()
    for stem, index, values in iter_table_rows(path, ["image"]):
        group = firsts.get(f"{stem}/{index}")
        if group is None:
            continue  # a skipped row, or a later row of a group already written
        meta = {"rows": group["rows"], "labels": group["labels"], "human_or_machine": group["origins"]}

        def build() -> Record:
            return make_record(keys(source, stem, f"{index:07d}"), struct_image(values["image"], images_dir),
                               row_messages(group["qas"]), source=source, task=task, meta=meta)

        record = _guarded(stats, f"chartqa {stem} row {index} (rows {group['rows']})", build,
                          rows=len(group["rows"]))
        if record is not None:
            yield record


# ---- writing ----------------------------------------------------------------------------------------------

CONVERTERS: dict[str, Callable[..., Iterator[Record]]] = {
    "llava": convert_llava, "cauldron": convert_cauldron, "pixmo-docs": convert_pixmo_docs,
    "chartqa": convert_chartqa, "captions": convert_captions}


def write_shards(records: Iterable[Record], out_dir: str | os.PathLike, *, generator: str,
                 stats: ConversionStats | None = None, params: dict[str, Any] | None = None,
                 split: str = "train", shard_size: int = 1000, progress: bool = True) -> dict[str, Any]:
    """Write `records` into shards in `out_dir`; the manifest counts them by source and task, and its
    params hold `params` plus the conversion stats. Returns the manifest. The shards replace those in
    `out_dir` only once all are written: an error (an unreadable input) leaves `out_dir` as it was."""
    # The stats are complete only once every record is written, so the writer asks for them at close.
    late = (lambda: {"conversion": stats.as_dict()}) if stats is not None else None
    with atomic_output_dir(out_dir) as tmp, \
            ShardWriter(tmp, generator=generator, generator_version=CONVERTER_VERSION, split=split,
                        params=params, maxcount=shard_size, late_params=late) as writer:
        for record in tqdm(records, desc=f"{generator} -> {out_dir}", unit="rec", disable=not progress):
            writer.write(record)
    return writer.manifest


def convert(kind: str, input_path: str | os.PathLike, out_dir: str | os.PathLike, *,
            images_dir: str | os.PathLike | None = None, split: str = "train", shard_size: int = 1000,
            progress: bool = True, **options: Any) -> tuple[dict[str, Any], ConversionStats]:
    """Convert `input_path` with the converter named `kind` (see CONVERTERS) into shards in `out_dir`.
    `options` go to the converter (source, task, prompt, group_by_image). Returns (manifest, stats)."""
    if kind not in CONVERTERS:
        raise ValueError(f"unknown converter {kind!r}; choose one of {sorted(CONVERTERS)}")
    stats = ConversionStats()
    records = CONVERTERS[kind](input_path, images_dir, stats=stats, **options)
    params = {"input": str(input_path), "images": None if images_dir is None else str(images_dir), **options}
    manifest = write_shards(records, out_dir, generator=f"convert-{kind}", stats=stats, params=params,
                            split=split, shard_size=shard_size, progress=progress)
    return manifest, stats
