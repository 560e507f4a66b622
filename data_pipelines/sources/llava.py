"""Local files with an image folder: LLaVA-format JSON (conversations about zero, one or several images)
and captions JSONL (one image and its caption a line)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.report import ConversionStats
from molmini.data.records import IMAGE_MARKER, Record, strip_image_marker

from .rows import (BadRow, KeyMaker, SourceRow, checked_messages, guarded_records, make_record, read_image_file,
                   rejected, row_messages)

DEFAULT_CAPTION_PROMPT = "Describe this image."
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


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


def llava_images(entry: Any) -> tuple[str, ...]:
    """The image paths a LLaVA entry names: one ("image": "a.jpg"), several (a list), or none."""
    image = entry.get("image") if isinstance(entry, dict) else None
    images = image if isinstance(image, list) else [] if image is None else [image]
    if not all(isinstance(path, str) and path for path in images):
        raise BadRow("invalid_image", f"'image' is {image!r}, not a path or a list of paths")
    return tuple(images)


def convert_llava(json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                  source: str = "llava", task: str = "instruct", group_by_image: bool = True,
                  stats: ConversionStats | None = None, engine: str = "local") -> Iterator[Record]:
    """Records from a LLaVA-format JSON list of {"id", "image", "conversations"}; images are read from
    `images_dir` (default: the JSON's folder). "image" is a path, a list of paths (one record holding every
    image) or absent (a text-only record). Entries about the same image(s) become one record unless
    `group_by_image` is False; text-only entries are never merged."""
    images_dir = Path(json_path).parent if images_dir is None else images_dir
    return guarded_records(_llava_rows(json_path, images_dir, source, task, group_by_image), stats, engine)


def _llava_rows(json_path: str | os.PathLike, images_dir: str | os.PathLike, source: str, task: str,
                group_by_image: bool) -> Iterator[SourceRow]:
    with open(json_path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{json_path} is not a LLaVA-format file: expected a JSON list of "
                         "{'id', 'image', 'conversations'} objects")
    groups: dict[tuple, list[tuple[str, list[dict[str, str]]]]] = {}  # (images, entry or None) -> entries
    for index, entry in enumerate(entries):
        entry_id = entry.get("id", index) if isinstance(entry, dict) else index
        try:
            if not isinstance(entry, dict):
                raise BadRow("invalid_row", f"is a JSON {type(entry).__name__}, not an object with 'image' and "
                                            "'conversations'")
            images = llava_images(entry)
            group = (images, None if group_by_image and images else index)
            messages = llava_messages(entry.get("conversations"), first=group not in groups)
        except BadRow as e:
            yield f"llava entry {index} (id {entry_id!r})", rejected(e), 1
            continue
        groups.setdefault(group, []).append((str(entry_id), messages))
    for (images, _), members in groups.items():
        ids = [entry_id for entry_id, _ in members]
        messages = [m for _, turns in members for m in turns]
        meta: dict[str, Any] = {"ids": ids}
        if images:
            meta.update({"image": images[0]} if len(images) == 1 else {"images": list(images)})

        def build(keys: KeyMaker) -> Record:
            return make_record(keys(source, ids[0]), [read_image_file(image, images_dir) for image in images],
                               messages, source=source, task=task, meta=meta)

        name = f"llava {'images ' + repr(list(images)) if images else 'text-only entry'} (ids {ids})"
        yield name, build, len(members)


def convert_captions(jsonl_path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                     prompt: str = DEFAULT_CAPTION_PROMPT, source: str = "captions", task: str = "caption",
                     stats: ConversionStats | None = None, engine: str = "local") -> Iterator[Record]:
    """One-turn caption records from a JSONL of {"image": relative path, "caption": str} lines; the user
    turn is `prompt`. Images are read from `images_dir` (default: the JSONL's folder)."""
    images_dir = Path(jsonl_path).parent if images_dir is None else images_dir
    return guarded_records(_caption_rows(jsonl_path, images_dir, prompt, source, task), stats, engine)


def _caption_rows(jsonl_path: str | os.PathLike, images_dir: str | os.PathLike, prompt: str, source: str,
                  task: str) -> Iterator[SourceRow]:
    with open(jsonl_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue

            def build(keys: KeyMaker) -> Record:
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

            yield f"{jsonl_path} line {number}", build, 1
