"""A contact sheet: N records of a shard folder in a grid, each image with its questions and answers
under it, so a person can look at what the model will be trained on; with `draw_boxes`, the text boxes its
renderer recorded (meta["text_boxes"], what the reading loss learns from) outlined on the image."""
from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from molmini.data.reader import BadRecords, Skip, find_shards, read_records
from molmini.data.records import Record, RecordError

LINE_HEIGHT = 12
CHARS_PER_LINE = 34


def _caption_lines(record: Record, max_pairs: int) -> list[str]:
    lines = [f"{record.key} [{record.task}]"]
    for question, answer in record.qa_pairs()[:max_pairs]:
        lines += textwrap.wrap(f"Q: {question}", CHARS_PER_LINE) + textwrap.wrap(f"A: {answer}", CHARS_PER_LINE)
    return lines


def draw_text_boxes(image: Image.Image, boxes: list[dict]) -> Image.Image:
    """A copy of `image` with each recorded text box outlined (red; orange for slanted text)."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for entry in boxes:
        draw.rectangle(entry["box"], outline="#ff8c00" if entry.get("angle") else "#e00000", width=1)
    return image


def contact_sheet(folder: str | Path, out: str | Path, num: int = 16, cols: int = 4, tile_px: int = 200,
                  max_pairs: int = 4, draw_boxes: bool = False) -> Path:
    """Write a PNG of the first `num` readable records of `folder`; returns its path. `draw_boxes` outlines
    the text boxes of records that have them (and says under the image how many it has)."""
    errors: list[str] = []  # shown on the sheet rather than hidden
    bad = BadRecords(on_skip=lambda skip: errors.append(skip.message))
    tiles: list[tuple[Image.Image, list[str]]] = []
    for record in read_records(find_shards(folder), bad):
        try:
            image = record.load_image()
        except RecordError as e:
            bad.add(Skip(record.key, e.reason, str(e)))
            continue
        lines = _caption_lines(record, max_pairs)
        if draw_boxes:
            boxes = record.meta.get("text_boxes", [])
            image = draw_text_boxes(image, boxes)
            lines.insert(1, f"{len(boxes)} text boxes" if boxes else "no text boxes recorded")
        image = ImageOps.contain(image, (tile_px, tile_px))  # small images are enlarged to be legible
        tiles.append((image, lines))
        if len(tiles) == num:
            break
    if not tiles:
        raise ValueError(f"no readable record in {folder}"
                         + (f" ({bad.total} bad: {bad.describe()}; the first: {errors[0]})" if errors else ""))
    text_h = LINE_HEIGHT * max(len(lines) for _, lines in tiles) + 6
    cell_w, cell_h = tile_px + 16, tile_px + text_h + 16
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h + (LINE_HEIGHT + 8 if errors else 0)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (image, lines) in enumerate(tiles):
        x, y = (i % cols) * cell_w + 8, (i // cols) * cell_h + 8
        sheet.paste(image, (x, y))
        draw.rectangle([x - 1, y - 1, x + image.width, y + image.height], outline="#999999")
        for j, line in enumerate(lines):
            draw.text((x, y + tile_px + 4 + j * LINE_HEIGHT), line, fill="black", font=font)
    if errors:
        draw.text((8, rows * cell_h + 4), f"{bad.total} unreadable record(s) skipped; first: {errors[0][:150]}",
                  fill="red", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
