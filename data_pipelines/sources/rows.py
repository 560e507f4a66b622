"""From source rows to records, written once for every converter: `guarded_records` counts each source
row, builds its record, and counts and logs by reason a row that cannot become one (`BadRow`); keys,
image bytes and conversations are checked here the same way for every source."""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from data_pipelines.report import ConversionStats
from data_pipelines.outputs import engine_plugin
from molmini.data.records import IMAGE_MARKER, Record, RecordError, strip_image_marker, validate_messages

PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}  # modes PIL can write as PNG

# One unit of a source: a name for the log, how to build its record from the conversion's KeyMaker, and how
# many source rows it stands for (one, or a group of rows about the same image). The KeyMaker is passed in,
# not held by the source, so that an engine building units elsewhere (ray_engine/convert.py) can hand its
# builds a recorder and give out the keys in row order itself.
SourceRow = tuple[str, Callable[["KeyMaker"], Record], int]


class BadRow(ValueError):
    """A source row that cannot become a record; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    def __reduce__(self):  # pickles with its reason (a parallel engine's task sends it back)
        return BadRow, (self.reason, str(self))


# Engines other than the local one build units through a plugin that registers itself here when imported
# (data_pipelines/ray_engine/convert.py: UNIT_BUILDERS["ray"] = built_on_ray). They are loaded by module name,
# so the sources, below the engines, never import them: an engine depends on the sources, not the reverse.
ENGINE_MODULES = {"ray": "data_pipelines.ray_engine.convert"}
UNIT_BUILDERS: dict[str, Callable[..., Iterator[Record]]] = {}


def guarded_records(rows: Iterable[SourceRow], stats: ConversionStats | None = None, engine: str = "local",
                    parts: list[Callable[[], Iterable[SourceRow]]] | None = None) -> Iterator[Record]:
    """The records of `rows`: each unit's source rows are counted in `stats`, then `build(keys)` makes their
    record, or raises BadRow and they are counted as skipped under its reason and logged by name. Records
    are counted too, with the text-only and multi-image ones. `engine` "ray" builds the units in Ray tasks
    (ray_engine/convert.py: the same records, keys and counts); `parts`, when a source can say so, are
    `rows` cut into pieces that each give their own rows (a table's files), which Ray tasks then also
    read, one piece each."""
    stats = stats if stats is not None else ConversionStats()
    if engine != "local":
        yield from engine_plugin(UNIT_BUILDERS, engine, ENGINE_MODULES)(rows, stats, parts=parts)
        return
    keys = KeyMaker()
    for name, build, count in rows:
        try:
            record = build(keys)
        except BadRow as e:
            record = e
        if (record := counted(stats, name, count, record)) is not None:
            yield record


def counted(stats: ConversionStats, name: str, count: int, built: Record | BadRow) -> Record | None:
    """Count a unit's `count` source rows in `stats`, and its record or why it has none; the record or None."""
    stats.rows += count
    if isinstance(built, BadRow):
        stats.skip(name, built, count)
        return None
    stats.records += 1
    stats.text_only += built.num_images == 0
    stats.multi_image += built.num_images > 1
    return built


def rejected(error: BadRow) -> Callable[["KeyMaker"], Record]:
    """The build of a row found unusable before its record is built (while grouping rows by image)."""
    def build(keys: KeyMaker) -> Record:
        raise error
    return build


class KeyMaker:
    """Unique record keys: unsafe characters become '_', and a key seen before gets a '-2', '-3' ... suffix."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, *parts: Any) -> str:
        return self.claim(key_base(*parts))

    def claim(self, base: str) -> str:
        """`base`, or the first of `base`-2, `base`-3 ... not given out yet."""
        key, n = base, 1
        while key in self._seen:
            n += 1
            key = f"{base}-{n}"
        self._seen.add(key)
        return key


def key_base(*parts: Any) -> str:
    """A key from its parts, before a KeyMaker makes it unique."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(str(p) for p in parts)) or "record"


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


def make_record(key: str, images: bytes | list[bytes] | None, messages: list[dict[str, str]],
                **fields: Any) -> Record:
    """A record of `images` (one image's bytes, a list of them, or None for a text-only conversation);
    each must decode, and the first user turn must hold one <image> marker per image or none."""
    images = [] if images is None else [images] if isinstance(images, (bytes, bytearray)) else list(images)
    markers = messages[0]["content"].count(IMAGE_MARKER)
    if markers not in (0, len(images)):
        raise BadRow("image_marker_mismatch", f"the first turn has {markers} {IMAGE_MARKER} markers for "
                     f"{len(images)} image(s); it needs one per image, or none")
    checked = [checked_image_bytes(data) for data in images]
    first, ext = checked[0] if checked else (None, "png")
    return Record(key=key, image=first, image_ext=ext, extra_images=checked[1:], messages=messages, **fields)
