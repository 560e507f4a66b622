"""Synthetic table QA: grids rendered with PIL (header row, text and numeric columns, an optional bold
totals row, shaded rows, varied fonts, widths and rules), with exactly computed answers.

``meta["table"]`` holds the rows and columns the image shows, ``meta["qa_args"]`` the indices each
question is about, and ``meta["transcript"]`` the table as markdown.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from data_pipelines.synth import names
from data_pipelines.synth.common import FONT_FAMILIES, REFUSAL, encode_image, fmt_number, pil_font, qa_messages
from data_pipelines.synth.text_boxes import PilTextBoxes
from molmini.data.records import Record

GENERATOR_NAME = "synth-tables"
GENERATOR_VERSION = "2"  # 2: meta["text_boxes"], what each table drew where
KEY_PREFIX = "tables"
NOUN = "table"
SOURCE = "synth-tables"
TASK = "table_qa"
QUESTION_TYPES = ("cell", "max_label", "min_label", "max_value", "row_max", "sum", "count", "compare",
                  "difference", "yes_no", "text_cell", "unanswerable")
STATUSES = ("Active", "Pending", "Closed", "On hold")
HEADER_FILLS = ("#dbe5f1", "#e8e8e8", "#2f4f6f", "#f3e2c7", "#ffffff")
STRIPE_FILLS = ("#f4f6f9", "#f7f7f2", "#eef5ee")


@dataclass
class TableData:
    title: str | None
    row_noun: str
    columns: list[str]              # first is the row label column; then numeric columns; maybe one text column
    numeric: list[bool]             # per column
    rows: list[list[Any]]           # cells, numbers already rounded
    decimals: list[int]             # per column (0 for text columns)
    total_row: bool                 # a bold "Total" row with the sum of every numeric column
    comparable_columns: bool        # numeric columns measure the same thing (years, quarters), so rows compare across
    absent_row: str = ""
    absent_column: str = ""
    style: dict[str, Any] = field(default_factory=dict)

    def fmt(self, x: Any, c: int) -> str:
        return fmt_number(x, self.decimals[c]) if self.numeric[c] else str(x)

    def totals(self) -> list[str]:
        return ["Total"] + [self.fmt(sum(r[c] for r in self.rows), c) if self.numeric[c] else ""
                            for c in range(1, len(self.columns))]

    def display_rows(self) -> list[list[str]]:
        rows = [[self.fmt(x, c) for c, x in enumerate(row)] for row in self.rows]
        return rows + ([self.totals()] if self.total_row else [])

    def transcript(self) -> str:
        lines = [self.title] if self.title else []
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---:" if n else "---" for n in self.numeric) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.display_rows()]
        return "\n".join(lines)


def sample_table(rng: random.Random) -> TableData:
    theme = rng.choice(sorted(set(names.CATEGORIES) - {"years"}))
    pool = names.CATEGORIES[theme]
    n = rng.randint(3, min(9, len(pool) - 1))
    picked = rng.sample(range(len(pool)), n + 1)
    absent_row, picked = pool[picked[0]], sorted(picked[1:]) if theme in names.ORDERED else picked[1:]
    measure, axis, low, high, decimals, _ = rng.choice(names.MEASURES)
    if rng.random() < 0.5:  # the same measure over years or quarters
        periods = list(rng.choice([("2021", "2022", "2023", "2024"), ("Q1", "Q2", "Q3", "Q4"), ("Plan", "Actual")]))
        k = rng.randint(2, len(periods))
        start = rng.randint(0, len(periods) - k)
        columns, absent_column, comparable = periods[start:start + k], "2019", True
        chosen = [(measure, axis, low, high, decimals)] * k
        title = rng.choice([f"{axis} by {names.CATEGORY_NOUN[theme]}", measure, None])
    else:  # different measures side by side
        others = rng.sample([m for m in names.MEASURES if m[0] != measure], 3)
        chosen = [(measure, axis, low, high, decimals)] + [m[:5] for m in others[:rng.randint(1, 2)]]
        columns, absent_column, comparable = [m[1] for m in chosen], others[2][0], False
        title = rng.choice([f"Key figures by {names.CATEGORY_NOUN[theme]}", None])
    while True:  # distinct values in each column (unique extremes), and each row's maximum unique too
        cols = [[round(rng.uniform(lo, hi), dec) for _ in range(n)] for _, _, lo, hi, dec in chosen]
        row_maxima_unique = all(r.count(max(r)) == 1 for r in zip(*cols)) or not comparable
        if all(len(set(col)) == n for col in cols) and row_maxima_unique:
            break
    rows = [[pool[p]] + [c[i] for c in cols] for i, p in enumerate(picked)]
    numeric = [False] + [True] * len(columns)
    decimals = [0] + [m[4] for m in chosen]
    header = [names.CATEGORY_NOUN[theme].capitalize()] + columns
    if rng.random() < 0.4:  # a text column
        header.append("Status")
        numeric.append(False)
        for row in rows:
            row.append(rng.choice(STATUSES))
    decimals += [0] * (len(header) - len(decimals))
    table = TableData(title=title, row_noun=names.CATEGORY_NOUN[theme], columns=header, numeric=numeric, rows=rows,
                      decimals=decimals, total_row=rng.random() < 0.4, comparable_columns=comparable,
                      absent_row=absent_row, absent_column=absent_column)
    table.style = {"font": rng.choice(FONT_FAMILIES), "font_px": rng.randint(12, 17),
                   "header_fill": rng.choice(HEADER_FILLS), "stripes": rng.choice([None, *STRIPE_FILLS]),
                   "rules": rng.choice(["grid", "horizontal", "minimal"]), "pad_x": rng.randint(6, 14),
                   "pad_y": rng.randint(3, 7), "header_bold": rng.random() < 0.8}
    return table


def make_questions(rng: random.Random, t: TableData) -> list[tuple[str, str, str, dict[str, Any]]]:
    n = len(t.rows)
    num_cols = [c for c in range(1, len(t.columns)) if t.numeric[c]]
    c = rng.choice(num_cols)
    col = [r[c] for r in t.rows]
    i, j = rng.sample(range(n), 2)
    name, rows = t.columns[c], [r[0] for r in t.rows]
    hi, lo = col.index(max(col)), col.index(min(col))
    qas = [
        ("cell", f"What is the {name} value for {rows[i]}?", t.fmt(col[i], c), {"r": i, "c": c}),
        ("max_label", f"Which {t.row_noun} has the highest {name}?", rows[hi], {"c": c}),
        ("min_label", f"Which {t.row_noun} has the lowest {name}?", rows[lo], {"c": c}),
        ("max_value", f"What is the highest value in the {name} column?", t.fmt(max(col), c), {"c": c}),
        ("sum", f"What is the sum of the {name} column?", t.fmt(sum(col), c), {"c": c}),
        ("count", f"How many {t.row_noun} rows does the table have, not counting the header"
                  f"{' and total' if t.total_row else ''}?", str(n), {}),
        ("compare", f"Which has the higher {name}, {rows[i]} or {rows[j]}?", rows[i] if col[i] > col[j] else rows[j],
         {"r": i, "r2": j, "c": c}),
        ("difference", f"What is the difference in {name} between {rows[i]} and {rows[j]}?",
         t.fmt(abs(col[i] - col[j]), c), {"r": i, "r2": j, "c": c}),
    ]
    want_yes = rng.random() < 0.5
    a, b = (i, j) if (col[i] > col[j]) == want_yes else (j, i)
    qas.append(("yes_no", f"Is the {name} of {rows[a]} greater than that of {rows[b]}?",
                "Yes" if want_yes else "No", {"r": a, "r2": b, "c": c}))
    if t.comparable_columns and len(num_cols) > 1:
        values = t.rows[i][1:1 + len(num_cols)]
        qas.append(("row_max", f"In which column is the value for {rows[i]} highest?",
                    t.columns[1 + values.index(max(values))], {"r": i}))
    text_cols = [k for k in range(1, len(t.columns)) if not t.numeric[k]]
    if text_cols:
        qas.append(("text_cell", f"What is the {t.columns[text_cols[0]]} of {rows[j]}?", t.rows[j][text_cols[0]],
                    {"r": j, "c": text_cols[0]}))
    if rng.random() < 0.5:
        qas.append(("unanswerable", f"What is the {name} value for {t.absent_row}?", REFUSAL, {"row": t.absent_row}))
    else:
        qas.append(("unanswerable", f"What is the {t.absent_column} of {rows[i]}?", REFUSAL,
                    {"column": t.absent_column}))
    rng.shuffle(qas)
    return qas[:rng.randint(5, len(qas))]


def render_table(t: TableData, image_px: int) -> Image.Image:
    """The table drawn at its natural size, then scaled to image_px wide (at most 1.5x as high)."""
    return render_table_and_text(t, image_px)[0]


def render_table_and_text(t: TableData, image_px: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The table image and the text it drew where (synth/text_boxes.py: PIL's own text boxes)."""
    st = t.style
    size, pad_x, pad_y = st["font_px"], st["pad_x"], st["pad_y"]
    regular, bold = pil_font(st["font"], size), pil_font(st["font"], size, bold=True)
    header_font = bold if st["header_bold"] else regular
    cells = [t.columns] + t.display_rows()
    widths = [max(int((header_font if r == 0 else bold).getlength(row[c])) for r, row in enumerate(cells)) + 2 * pad_x
              for c in range(len(t.columns))]
    row_h = size + 2 * pad_y + 2
    margin = 10
    title_h = size + 12 if t.title else 0
    width = sum(widths) + 2 * margin
    height = title_h + row_h * len(cells) + 2 * margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    boxes = PilTextBoxes(width, height)
    if t.title:
        boxes.text(draw, (margin, margin), t.title, font=pil_font(st["font"], size + 1, bold=True), fill="black")
    dark_header = st["header_fill"] == "#2f4f6f"
    y = margin + title_h
    for r, row in enumerate(cells):
        is_total = t.total_row and r == len(cells) - 1
        fill = st["header_fill"] if r == 0 else (st["stripes"] if st["stripes"] and r % 2 == 0 else None)
        if fill:
            draw.rectangle([margin, y, width - margin, y + row_h], fill=fill)
        x = margin
        for c, text in enumerate(row):
            font = header_font if r == 0 else (bold if is_total else regular)
            colour = "white" if r == 0 and dark_header else "black"
            if t.numeric[c] and r > 0:
                tx = x + widths[c] - pad_x - font.getlength(text)
            else:
                tx = x + pad_x
            boxes.text(draw, (tx, y + pad_y), text, font=font, fill=colour)
            if st["rules"] == "grid":
                draw.line([x, y, x, y + row_h], fill="#888888")
            x += widths[c]
        if st["rules"] == "grid":
            draw.line([x, y, x, y + row_h], fill="#888888")
        if st["rules"] != "minimal" or r <= 1 or is_total:
            draw.line([margin, y, width - margin, y], fill="#555555" if r <= 1 or is_total else "#bbbbbb",
                      width=2 if is_total else 1)
        y += row_h
    draw.line([margin, y, width - margin, y], fill="#555555")
    # A wide table shrinks to fit; a narrow one grows a little and sits on a white page image_px wide.
    scale = min(image_px / width, 1.3)
    new_w, new_h = min(image_px, round(width * scale)), max(32, min(round(height * scale), round(1.5 * image_px)))
    image = image.resize((new_w, new_h), Image.LANCZOS if scale < 1 else Image.BICUBIC)
    drawn = boxes.scaled(new_w, new_h)
    if new_w == image_px:
        return image, drawn
    page = Image.new("RGB", (image_px, new_h), "white")
    page.paste(image, (0, 0))
    return page, drawn


def make_record(rng: random.Random, key: str, image_px: int = 448, noise: bool = False) -> Record:
    table = sample_table(rng)
    qas = make_questions(rng, table)
    image, text_boxes = render_table_and_text(table, image_px)
    image, ext = encode_image(image, rng, noise, text_boxes)
    meta = {"qa_types": [q[0] for q in qas], "qa_args": [q[3] for q in qas], "table": asdict(table),
            "transcript": table.transcript(), "text_boxes": text_boxes}
    return Record(key=key, image=image, image_ext=ext, messages=qa_messages([q[:3] for q in qas]), source=SOURCE,
                  task=TASK, meta=meta)


def synthesize(out_dir, num_images: int, seed: int, split: str = "train", image_px: int = 448, workers: int = 1,
               shard_size: int = 1000, progress: bool = True, noise: bool = False,
               replace_own: bool = True,
               overwrite: bool = False, engine: str = "local",
               ray_address: str | None = None) -> dict[str, Any]:
    """Write `num_images` table records as shards (see synth/common.py for determinism and reuse)."""
    from data_pipelines.synth.common import synthesize_with
    return synthesize_with(__name__, out_dir, num_images, seed, split=split, image_px=image_px, workers=workers,
                           shard_size=shard_size, progress=progress, params={"noise": noise},
                           replace_own=replace_own, overwrite=overwrite,
                           engine=engine, ray_address=ray_address)
