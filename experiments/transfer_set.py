"""A held-out chart set drawn by a renderer the training data never uses, to measure transfer.

Bar charts drawn with PIL (not matplotlib): vertical or horizontal bars, serif, mono or sans fonts at
other sizes, other colours, no axes box, value labels inside or above the bars, and questions worded
differently from the training generator's. Categories come from the training generator's label themes
(a from-scratch model can only name words it has seen); everything about how they are drawn is new.
Written in the Hugging Face ChartQA parquet layout (`lmms-lab/ChartQA`: `type`, `question`, `answer`,
`image`), so it is read by `python -m eval run --benchmarks chartqa=FOLDER`; `type` holds the question
type, so `python -m eval report --subsets` gives one column per type.

    python experiments/transfer_set.py --out data/transfer-pil --num 300
"""
from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipelines.synth.charts import LABEL_THEMES, ORDERED_THEMES  # noqa: E402
from data_pipelines.synth.common import pil_font  # noqa: E402

COLOURS = ["#3b6ea5", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#2c4d75", "#772c2a"]
BACKGROUNDS = ["#ffffff", "#f7f7f2", "#eef2f7"]
WORDING = {
    "largest_label": ["Which label has the highest bar?", "Name the category with the biggest value.",
                      "Which item is the largest?"],
    "value": ["What value does {a} have?", "How much is {a}?", "What number is shown for {a}?"],
    "compare": ["Is the {a} bar bigger than the {b} bar?", "Is {a} larger than {b}?", "Does {a} exceed {b}?"],
    "count": ["How many bars does the chart show?", "How many categories are plotted?"],
}


def draw_chart(rng: random.Random, px: int) -> tuple[bytes, list[str], list[int]]:
    theme = rng.choice(sorted(LABEL_THEMES))
    n = rng.randint(3, 6)
    labels = rng.sample(LABEL_THEMES[theme], n)
    if theme in ORDERED_THEMES:
        labels.sort(key=LABEL_THEMES[theme].index)
    values = rng.sample(range(5, 96), n)
    family = rng.choice(("serif", "mono", "sans"))
    font = pil_font(family, max(8, round(px * rng.uniform(0.065, 0.08))))
    colour = rng.choice(COLOURS)
    many_colours = rng.random() < 0.4
    value_labels = rng.random() < 0.7
    horizontal = rng.random() < 0.5
    im = Image.new("RGB", (px, px), rng.choice(BACKGROUNDS))
    d = ImageDraw.Draw(im)
    m = round(px * 0.06)
    if horizontal:
        label_w = max(d.textlength(l, font=font) for l in labels) + m
        x0, x1, y0, y1 = m + label_w, px - 2 * m - font.size, m, px - m
        slot = (y1 - y0) / n
        for i, (label, v) in enumerate(zip(labels, values)):
            top, bottom = y0 + i * slot + slot * 0.15, y0 + (i + 1) * slot - slot * 0.15
            right = x0 + (x1 - x0) * v / 100
            d.rectangle([x0, top, right, bottom], fill=COLOURS[i % len(COLOURS)] if many_colours else colour)
            cy = (top + bottom) / 2
            d.text((x0 - m // 2, cy), label, fill="black", font=font, anchor="rm")
            if value_labels:
                d.text((right + 2, cy), str(v), fill="black", font=font, anchor="lm")
        d.line([x0, y0, x0, y1], fill="black")
    else:
        slot = (px - 2 * m) / n
        while font.size > 8 and max(d.textlength(l, font=font) for l in labels) > slot * 0.95:
            font = pil_font(family, font.size - 1)  # labels side by side must not run into each other
        x0, x1, y0, y1 = m, px - m, m + font.size, px - m - font.size - 2
        for i, (label, v) in enumerate(zip(labels, values)):
            left, right = x0 + i * slot + slot * 0.15, x0 + (i + 1) * slot - slot * 0.15
            top = y1 - (y1 - y0) * v / 100
            d.rectangle([left, top, right, y1], fill=COLOURS[i % len(COLOURS)] if many_colours else colour)
            cx = (left + right) / 2
            d.text((cx, y1 + 2), label, fill="black", font=font, anchor="mt")
            if value_labels:
                d.text((cx, top - 1), str(v), fill="black", font=font, anchor="mb")
        d.line([x0, y1, x1, y1], fill="black")
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue(), labels, values


def questions(rng: random.Random, labels: list[str], values: list[int]) -> list[tuple[str, str, str]]:
    big = labels[values.index(max(values))]
    i, j = rng.sample(range(len(labels)), 2)
    a = rng.randrange(len(labels))
    return [("largest_label", rng.choice(WORDING["largest_label"]), big),
            ("value", rng.choice(WORDING["value"]).format(a=labels[a]), str(values[a])),
            ("compare", rng.choice(WORDING["compare"]).format(a=labels[i], b=labels[j]),
             "Yes" if values[i] > values[j] else "No"),
            ("count", rng.choice(WORDING["count"]), str(len(labels)))]


def write(out: Path, num: int, px: int, seed: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = {"type": [], "question": [], "answer": [], "image": []}
    for k in range(num):
        rng = random.Random(f"{seed}-transfer-{k}")
        png, labels, values = draw_chart(rng, px)
        for qtype, q, ans in questions(rng, labels, values):
            rows["type"].append(qtype)
            rows["question"].append(q)
            rows["answer"].append(ans)
            rows["image"].append({"bytes": png, "path": f"transfer-{k}.png"})
    path = out / "data" / "test-00000-of-00001.parquet"
    if path.exists():
        raise SystemExit(f"error: {path} exists; choose another --out (this script writes only new folders)")
    tmp = path.with_suffix(".parquet.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), tmp)
    tmp.rename(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to create (ChartQA parquet layout)")
    ap.add_argument("--num", type=int, default=300, help="charts (4 questions each)")
    ap.add_argument("--px", type=int, default=256, help="image size in pixels")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sheet", default="", help="also write a PNG of the first 8 charts here")
    args = ap.parse_args()
    path = write(Path(args.out), args.num, args.px, args.seed)
    print(f"wrote {args.num * 4} questions on {args.num} charts to {path}")
    if args.sheet:
        sheet = Image.new("RGB", (args.px * 4, args.px * 2), "white")
        for k in range(8):
            png, _, _ = draw_chart(random.Random(f"{args.seed}-transfer-{k}"), args.px)
            sheet.paste(Image.open(io.BytesIO(png)), ((k % 4) * args.px, (k // 4) * args.px))
        sheet.save(args.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
