"""The record schema: what one record is, how it is checked, and how its images decode.

One record is a conversation about one image (most records), several images, or none (a text-only
conversation, such as the ones LLaVA's instruction mix holds). In a shard its members share a key:
``KEY.png`` (or ``KEY.jpg``, ...) holding the encoded image, and ``KEY.json`` holding
``{"messages": [...], "source": str, "task": str, "meta": {...}}``. ``messages`` alternate
``{"role": "user", ...}`` and ``{"role": "assistant", ...}``; the images belong to the first user turn
(an ``<image>`` marker per image there says where, otherwise they are implied at the start).

A record with other than one image says so in its json, ``"num_images": N``, so that a lost image member
is still an error and not a text-only record; its second, third, ... images are the members
``KEY.1.png``, ``KEY.2.jpg``, ... (webdataset reads "1.png" as the extension). A one-image record is
written exactly as before.

A synthetic record also says what its renderer drew where, in ``meta["text_boxes"]``: each piece of text
as ``{"text": str, "box": [x0, y0, x1, y1]}`` in image pixels (origin top-left; ``"angle"`` in degrees when
it is slanted). `text_boxes_problem` checks the shape; the tower's reading loss is built from them.

Shards are read into Records by molmini/data/reader.py, and streamed for training by stream.py. No
torch here: the data commands (synth, convert, curate, inspect) write and read records without loading it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from molmini.data.images import decode_image

IMAGE_MARKER = "<image>"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
ROLES = ("user", "assistant")
_EXTRA_IMAGE_MEMBER = re.compile(r"^([1-9][0-9]*)\.(" + "|".join(IMAGE_EXTENSIONS) + ")$")  # "1.png": image 2


class RecordError(ValueError):
    """A record that does not follow the schema (or that a consumer cannot use); `reason` is the short name
    it is counted under."""

    def __init__(self, message: str, reason: str = "invalid_record") -> None:
        super().__init__(message)
        self.reason = reason


class UnusableDataError(ValueError):
    """Reading cannot go on: a whole pass over the shards, or a long run of records in a row, gave nothing
    usable. The message names the shards, the cause and the fix."""


@dataclass
class Record:
    key: str
    image: bytes | None                # the (first) image; None for a text-only conversation
    messages: list[dict[str, str]]
    source: str = ""
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    image_ext: str = "png"
    extra_images: list[tuple[bytes, str]] = field(default_factory=list)  # images 2, 3, ...: (bytes, extension)

    def __post_init__(self) -> None:
        validate_messages(self.messages, where=self.key)
        check_image_markers(self.messages[0]["content"], self.num_images, f"record {self.key!r}")
        for ext in [self.image_ext] + [ext for _, ext in self.extra_images]:
            if ext not in IMAGE_EXTENSIONS:
                raise RecordError(f"record {self.key!r}: image extension {ext!r} is not one of {IMAGE_EXTENSIONS}")
        if self.image is None and self.extra_images:
            raise RecordError(f"record {self.key!r} has extra images but no first image; put the first in `image`")
        if "." in self.key:
            raise RecordError(f"record key {self.key!r} contains '.', which webdataset reads as the start "
                              "of an extension; use '_' or '-' instead")

    @property
    def images(self) -> list[tuple[bytes, str]]:
        """(bytes, extension) of every image, in order; empty for a text-only record."""
        return ([(self.image, self.image_ext)] if self.image is not None else []) + list(self.extra_images)

    @property
    def num_images(self) -> int:
        return (self.image is not None) + len(self.extra_images)

    def to_sample(self) -> dict[str, Any]:
        """The webdataset sample (member extension -> bytes) for this record."""
        body = {"messages": self.messages, "source": self.source, "task": self.task, "meta": self.meta}
        if self.num_images != 1:
            body["num_images"] = self.num_images
        sample: dict[str, Any] = {"__key__": self.key}
        if self.image is not None:
            sample[self.image_ext] = self.image
        for n, (data, ext) in enumerate(self.extra_images, start=1):
            sample[f"{n}.{ext}"] = data
        sample["json"] = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return sample

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> "Record":
        """The record of a webdataset sample, every field checked for type and shape, so that no consumer
        meets a `null` body, a list for `meta` or a number for a message."""
        key = sample.get("__key__", "?")
        exts = [e for e in IMAGE_EXTENSIONS if e in sample]
        members = sorted(k for k in sample if not k.startswith("__"))
        if "json" not in sample:
            if not exts:
                raise RecordError(f"sample {key!r} has no image member (expected one of {IMAGE_EXTENSIONS}); "
                                  f"members: {members}", "missing_member")
            raise RecordError(f"sample {key!r} has no .json member", "missing_member")
        raw = sample["json"]
        try:
            body = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
            raise RecordError(f"sample {key!r}: its .json member is not valid JSON ({type(e).__name__}: {e})",
                              "invalid_json") from e
        if not isinstance(body, dict):
            raise RecordError(f"sample {key!r}: its .json member is {type(body).__name__}, not an object with "
                              "'messages'", "invalid_schema")
        if "messages" not in body:
            raise RecordError(f"sample {key!r}: its .json member has no 'messages' list", "invalid_schema")
        for name, kind in (("source", str), ("task", str), ("meta", dict)):
            if name in body and not isinstance(body[name], kind):
                raise RecordError(f"sample {key!r}: '{name}' is {type(body[name]).__name__}, not "
                                  f"{'an object' if kind is dict else 'a string'}", "invalid_schema")
        meta = body.get("meta", {})
        if not isinstance(meta.get("transcript", ""), str):
            raise RecordError(f"sample {key!r}: meta.transcript is not a string", "invalid_schema")
        types = meta.get("qa_types", [])
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise RecordError(f"sample {key!r}: meta.qa_types is not a list of strings", "invalid_schema")
        problem = text_boxes_problem(meta.get("text_boxes", []))
        if problem:
            raise RecordError(f"sample {key!r}: meta.text_boxes {problem}", "invalid_schema")
        image, extra = _sample_images(sample, key, exts, members, body.get("num_images", 1))
        return cls(key=key, image=image, messages=body["messages"], source=body.get("source", ""),
                   task=body.get("task", ""), meta=body.get("meta", {}), image_ext=exts[0] if exts else "png",
                   extra_images=extra)

    def load_images(self) -> list[Image.Image]:
        """Every image decoded to RGB (none for a text-only record); a corrupt one raises RecordError."""
        return [_decode(data, f"record {self.key!r}" + (f" image {n + 1}" if n else "")) for n, (data, _)
                in enumerate(self.images)]

    def load_image(self) -> Image.Image:
        """Decode the (first) image to RGB; a corrupt image, or none, raises RecordError naming the record."""
        if self.image is None:
            raise RecordError(f"record {self.key!r} is text-only: it has no image", "no_image")
        return _decode(self.image, f"record {self.key!r}")

    def qa_pairs(self) -> list[tuple[str, str]]:
        """(question, answer) for each user/assistant exchange, the image marker removed."""
        m = self.messages
        return [(strip_image_marker(m[i]["content"]), m[i + 1]["content"]) for i in range(0, len(m) - 1, 2)]


def _decode(data: bytes, what: str) -> Image.Image:
    """The image decoded as every other path decodes one (molmini/data/images.py: EXIF orientation applied,
    RGB), or a RecordError naming the record."""
    try:
        return decode_image(data)
    except Exception as e:  # PIL raises several unrelated types for bad bytes
        raise RecordError(f"{what}: image cannot be decoded ({type(e).__name__}: {e})", "undecodable_image") from e


def _sample_images(sample: dict[str, Any], key: str, exts: list[str], members: list[str], count: Any
                   ) -> tuple[bytes | None, list[tuple[bytes, str]]]:
    """The first image and the (bytes, extension) of the others, checked against the json's num_images."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise RecordError(f"sample {key!r}: num_images is {count!r}, not a count", "invalid_schema")
    if count and not exts:
        raise RecordError(f"sample {key!r} has no image member (expected one of {IMAGE_EXTENSIONS}); "
                          f"members: {members}", "missing_member")
    extra = sorted((int(m.group(1)), m.group(2)) for m in map(_EXTRA_IMAGE_MEMBER.match, members) if m)
    if bool(exts) + len(extra) != count or [n for n, _ in extra] != list(range(1, count)):
        raise RecordError(f"sample {key!r}: its json says {count} image(s) but its members are {members}; "
                          "regenerate the shard", "missing_member")
    first = sample[exts[0]] if exts else None
    others = [(sample[f"{n}.{ext}"], ext) for n, ext in extra]
    if not all(isinstance(data, (bytes, bytearray)) for data in [first or b"", *(data for data, _ in others)]):
        raise RecordError(f"sample {key!r}: its image member is not bytes", "invalid_schema")
    return (None if first is None else bytes(first)), [(bytes(data), ext) for data, ext in others]


def text_boxes_problem(boxes: Any) -> str:
    """What is wrong with a record's ``meta["text_boxes"]`` ("" when nothing is): the text its renderer drew
    and where, a list of ``{"text": str, "box": [x0, y0, x1, y1], "angle": degrees (optional)}`` in image
    pixels, origin top-left, x0 <= x1 and y0 <= y1 (data_pipelines/synth/text_boxes.py writes them). A
    record without them is valid; the tower's reading loss only reads records that have them."""
    if not isinstance(boxes, list):
        return f"is {type(boxes).__name__}, not a list"
    for n, entry in enumerate(boxes):
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or not entry["text"]:
            return f"entry {n} has no text (each is an object with a non-empty 'text' string)"
        box = entry.get("box")
        if not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            return f"entry {n} ({_short(entry['text'])}) has no box of 4 numbers"
        if box[0] > box[2] or box[1] > box[3] or box[0] < 0 or box[1] < 0:
            return f"entry {n} ({_short(entry['text'])}) has box {box}, not [x0, y0, x1, y1] with 0 <= x0 <= x1, 0 <= y0 <= y1"
        angle = entry.get("angle", 0)
        if not isinstance(angle, (int, float)) or isinstance(angle, bool) or not math.isfinite(angle):
            return f"entry {n} ({_short(entry['text'])}) has angle {angle!r}, not a number of degrees"
    return ""


def check_image_markers(first_user_turn: str, num_images: int, where: str) -> None:
    """The one rule for `<image>` markers, which every consumer meets through the record reader (training
    skips, evaluation leaves out): the first user turn holds one marker per image, or none (the images then
    come first). Any other count is a RecordError counted as `image_marker_mismatch`."""
    markers = first_user_turn.count(IMAGE_MARKER)
    if markers and markers != num_images:
        raise RecordError(f"{where}: its first user turn has {markers} {IMAGE_MARKER} markers for {num_images} "
                          f"image(s); put one {IMAGE_MARKER} per image there, or none", "image_marker_mismatch")


def strip_image_marker(text: str) -> str:
    return text.replace(IMAGE_MARKER, "").strip()


def validate_messages(messages: Any, where: str = "record") -> None:
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: 'messages' must be a non-empty list of {{role, content}} dicts",
                          "invalid_schema")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not {"role", "content"} <= set(msg):
            raise RecordError(f"{where}: message {i} must be a dict with 'role' and 'content', got "
                              f"{_short(msg)}", "invalid_schema")
        want = ROLES[i % 2]
        if msg["role"] != want:
            raise RecordError(f"{where}: message {i} has role {_short(msg['role'])} where {want!r} was expected "
                              "(turns alternate user, assistant, starting with user)", "invalid_schema")
        if not isinstance(msg["content"], str):
            raise RecordError(f"{where}: message {i} content must be a string, got "
                              f"{type(msg['content']).__name__}", "invalid_schema")
    if len(messages) % 2:
        raise RecordError(f"{where}: the conversation ends on a user turn with no assistant answer",
                          "invalid_schema")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
