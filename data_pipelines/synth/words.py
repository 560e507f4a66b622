"""Synthetic reading drills: chart words and numbers printed on a plain canvas, to read back.

A warm-up for a from-scratch model. It has to learn glyphs before it can read a chart's labels.
Each image holds 1 to `max_items` text items, one per row in reading order: the chart generator's
category labels and titles, and numbers in the chart value range. Fonts are DejaVu Sans, Serif or Mono,
between `min_font_px` and `max_font_px` pixels, sometimes slanted 45 degrees like long tick labels.
The questions ask for the whole text, the first item and the number. Large fonts and few items make the
task easy, so a curriculum can start there. ``meta["transcript"]`` is the text in reading order.
"""
from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from data_pipelines.synth.charts import LABEL_THEMES, MAX_VALUE, MIN_VALUE, TITLES
from data_pipelines.synth.common import FONT_FAMILIES, encode_image, pil_font, qa_messages
from data_pipelines.synth.text_boxes import box_entry
from molmini.data.records import Record

GENERATOR_NAME = "synth-words"
GENERATOR_VERSION = "2"  # 2: meta["text_boxes"], what each drill drew where
KEY_PREFIX = "words"
NOUN = "word"
SOURCE = "synth-words"
TASK = "reading"
QUESTION_TYPES = ("read_all", "read_first", "read_number")
WORDS = sorted({w for theme in LABEL_THEMES.values() for w in theme} | set(TITLES))
SLANT_PROBABILITY = 0.25


def sample_items(rng: random.Random, max_items: int) -> list[str]:
    n = rng.randint(1, max_items)
    return [str(rng.randint(MIN_VALUE, MAX_VALUE)) if rng.random() < 0.4 else rng.choice(WORDS) for _ in range(n)]


def render_words(rng: random.Random, items: list[str], image_px: int, min_font_px: int, max_font_px: int) -> Image.Image:
    return render_words_and_text(rng, items, image_px, min_font_px, max_font_px)[0]


def render_words_and_text(rng: random.Random, items: list[str], image_px: int, min_font_px: int, max_font_px: int
                          ) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The drill image and what it drew where (synth/text_boxes.py): each item's box is the ink of its tile,
    slanted and scaled as it was pasted."""
    boxes = []
    image = Image.new("RGB", (image_px, image_px), rng.choice(("#ffffff", "#f7f7f2", "#eef2f7")))
    row_h = image_px / len(items)
    for i, text in enumerate(items):
        family = rng.choice(FONT_FAMILIES)
        size = rng.randint(min_font_px, max(min_font_px, min(max_font_px, int(row_h * 0.8))))
        font = pil_font(family, size)
        colour = rng.choice(("#000000", "#222222", "#333366", "#663333"))
        slant = rng.random() < SLANT_PROBABILITY
        # Draw on a transparent tile, then (maybe) rotate it, then paste it inside its row.
        w = int(ImageDraw.Draw(image).textlength(text, font=font)) + 4
        tile = Image.new("RGBA", (w, size + 6), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((2, 1), text, fill=colour, font=font)
        if slant:
            tile = tile.rotate(45, expand=True, resample=Image.BICUBIC)
        if tile.width > image_px or tile.height > row_h:
            scale = min(image_px / tile.width, row_h / tile.height)
            tile = tile.resize((max(1, int(tile.width * scale)), max(1, int(tile.height * scale))), Image.BICUBIC)
        x = rng.randint(0, image_px - tile.width)
        y = int(i * row_h) + rng.randint(0, max(0, int(row_h) - tile.height))
        image.paste(tile, (x, y), tile)
        ink = tile.getchannel("A").getbbox()
        if ink is not None:
            entry = box_entry(text, x + ink[0], y + ink[1], x + ink[2], y + ink[3], image_px, image_px,
                              45.0 if slant else 0.0)
            if entry is not None:
                boxes.append(entry)
    return image, boxes


def make_questions(rng: random.Random, items: list[str]) -> list[tuple[str, str, str]]:
    qas = [("read_all", "Read the text in this image.", " ".join(items)),
           ("read_first", "What is the first word?", items[0])]
    numbers = [t for t in items if t.isdigit()]
    if numbers:
        qas.append(("read_number", "Which number is shown first?", numbers[0]))
    rng.shuffle(qas)
    return qas


def make_record(rng: random.Random, key: str, image_px: int = 128, max_items: int = 3, min_font_px: int = 8,
                max_font_px: int = 24) -> Record:
    items = sample_items(rng, max_items)
    image, text_boxes = render_words_and_text(rng, items, image_px, min_font_px, max_font_px)
    qas = make_questions(rng, items)
    data, ext = encode_image(image)
    meta = {"qa_types": [q[0] for q in qas], "items": items, "transcript": " ".join(items), "text_boxes": text_boxes}
    return Record(key=key, image=data, image_ext=ext, messages=qa_messages(qas), source=SOURCE, task=TASK, meta=meta)


def synthesize(out_dir, num_images: int, seed: int, split: str = "train", image_px: int = 128, workers: int = 1,
               shard_size: int = 1000, progress: bool = True, max_items: int = 3, min_font_px: int = 8,
               max_font_px: int = 24, replace_own: bool = True,
               overwrite: bool = False, engine: str = "local",
               ray_address: str | None = None) -> dict[str, Any]:
    """Write `num_images` reading-drill records as shards (see synth/common.py for determinism and reuse)."""
    if max_items < 1 or not 4 <= min_font_px <= max_font_px:
        raise ValueError(f"need max_items >= 1 and 4 <= min_font_px <= max_font_px; got {max_items}, "
                         f"{min_font_px}, {max_font_px}")
    from data_pipelines.synth.common import synthesize_with
    return synthesize_with(__name__, out_dir, num_images, seed, split=split, image_px=image_px, workers=workers,
                           shard_size=shard_size, progress=progress, replace_own=replace_own, overwrite=overwrite,
                           engine=engine, ray_address=ray_address,
                           params={"max_items": max_items, "min_font_px": min_font_px, "max_font_px": max_font_px})
