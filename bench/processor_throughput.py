"""Processor throughput: images per second per core, from encoded image bytes to model inputs (decode,
resize, overlap-and-resize crops, pad fractions, pooling windows, token ids and labels), for 1, 4 and 12
crops at a Molmo-like geometry (336 px tower, 14 px patches, 2x2 pooling).

    python bench/processor_throughput.py [--images 64] [--size 1024x768] [--image-size 336 --patch-size 14]

Runs in one process with one torch thread, so the figure is per core; a DataLoader with N workers scales
it by about N.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from molmini.data.processor import MolminiProcessor, ProcessorConfig  # noqa: E402
from molmini.data.records import Record  # noqa: E402
from molmini.data.tokenizer import train_bpe_tokenizer  # noqa: E402


def chart_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    bars = int(rng.integers(3, 9))
    for i in range(bars):
        h = int(rng.integers(height // 10, height * 8 // 10))
        x0 = 40 + i * (width - 80) // bars
        draw.rectangle([x0, height - 40 - h, x0 + (width - 80) // bars - 10, height - 40],
                       fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw.text((x0, height - 30), f"item {i}", fill="black")
    buf = io.BytesIO()
    img.save(buf, "png")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the test images")
    ap.add_argument("--image-size", type=int, default=336)
    ap.add_argument("--patch-size", type=int, default=14)
    ap.add_argument("--crops", default="1,4,12")
    args = ap.parse_args()
    torch.set_num_threads(1)
    width, height = map(int, args.size.split("x"))
    questions = ["What is the value of item 3?", "How many bars are there?", "Which bar is the tallest?"]
    tokenizer = train_bpe_tokenizer(questions * 10 + [f"item {i}" for i in range(10)], vocab_size=400)
    records = [Record(key=f"b{i}", image=chart_png(width, height, i), messages=[
        {"role": "user", "content": "<image>" + questions[0]}, {"role": "assistant", "content": str(i)},
        {"role": "user", "content": questions[1]}, {"role": "assistant", "content": "5"}]) for i in range(args.images)]

    print(f"processor throughput, {args.images} PNG charts of {width}x{height}, tower {args.image_size} px / "
          f"patch {args.patch_size}, one core ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores on the machine), torch {torch.__version__}")
    print(f"{'max_crops':>9} {'crops/img':>9} {'tokens/img':>10} {'ms/img':>8} {'images/s/core':>14}")
    for max_crops in map(int, args.crops.split(",")):
        proc = MolminiProcessor(tokenizer, ProcessorConfig(
            image_size=args.image_size, patch_size=args.patch_size, image_mean=(0.48, 0.46, 0.41),
            image_std=(0.27, 0.26, 0.28), pool=2, max_crops=max_crops, max_length=8192))
        proc.process_record(records[0])  # warm up
        start = time.perf_counter()
        samples = [proc.process_record(r) for r in records]
        wall = time.perf_counter() - start
        crops = np.mean([s["pixel_values"].shape[0] - 1 for s in samples])
        tokens = np.mean([len(s["input_ids"]) for s in samples])
        print(f"{max_crops:>9} {crops:>9.1f} {tokens:>10.0f} {1000 * wall / len(records):>8.1f} "
              f"{len(records) / wall:>14.1f}")


if __name__ == "__main__":
    main()
