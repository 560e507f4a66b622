"""Synthetic document QA: invoices, receipts, filled forms, letters and two-column articles rendered
with PIL, with optional scan noise (skew, blur, JPEG artefacts).

Answers are extractive, as in DocVQA: each is a span printed on the page (and so in the transcript),
taken from ``meta["document"]["fields"]``; a question about something the page does not show is
answered with the refusal string. ``meta["transcript"]`` holds the page's text in reading order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from data_pipelines.synth import names
from data_pipelines.synth.common import FONT_FAMILIES, REFUSAL, encode_image, pil_font, qa_messages
from data_pipelines.synth.text_boxes import PilTextBoxes, moved
from molmini.data.records import Record

GENERATOR_NAME = "synth-documents"
GENERATOR_VERSION = "2"  # 2: meta["text_boxes"], what each document drew where
KEY_PREFIX = "documents"
NOUN = "document"
SOURCE = "synth-documents"
TASK = "doc_qa"
KINDS = ("invoice", "receipt", "form", "letter", "article")
QUESTION_TYPES = ("name", "date", "amount", "identifier", "address", "text_span", "unanswerable")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
FILLER = ("The figures below are provisional and may change after the annual review.",
          "Our teams continued to invest in training and new equipment throughout the period.",
          "Customers reported higher satisfaction with delivery times than in previous years.",
          "The board thanks all staff for their commitment during a demanding season.",
          "Further details are available from the regional offices on request.",
          "Energy costs remained the largest single expense for most sites.",
          "Several projects were postponed to the following quarter because of supply delays.",
          "A new reporting system will be introduced gradually over the coming months.")

# A question per kind about something that kind of page does not show.
ABSENT = {"invoice": "What is the cashier's name?", "receipt": "What is the invoice due date?",
          "form": "What is the total amount due?", "letter": "What is the tax amount?",
          "article": "What is the invoice number?"}


@dataclass
class Document:
    kind: str
    fields: dict[str, str]                     # name -> the exact text printed
    questions: list[tuple[str, str, str]]      # (type, question, field name)
    lines: list[str] = field(default_factory=list)  # the transcript, in reading order
    style: dict[str, Any] = field(default_factory=dict)
    text_boxes: list[dict[str, Any]] = field(default_factory=list)  # what was drawn where (synth/text_boxes.py)


def _date(rng: random.Random, first_year: int = 2019, last_year: int = 2025) -> str:
    y, m, d = rng.randint(first_year, last_year), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{d:02d}/{m:02d}/{y}", f"{MONTHS[m - 1]} {d}, {y}", f"{y}-{m:02d}-{d:02d}",
                       f"{d} {MONTHS[m - 1][:3]} {y}"])


def _money(cents: int, currency: str) -> str:
    return f"{currency}{cents // 100:,}.{cents % 100:02d}"


def _person(rng: random.Random) -> str:
    return f"{rng.choice(names.FIRST_NAMES)} {rng.choice(names.LAST_NAMES)}"


def _address(rng: random.Random) -> str:
    return f"{rng.randint(1, 240)} {rng.choice(names.STREETS)}, {rng.choice(names.CITIES)}"


class Page:
    """A blank page with a cursor; every text drawn also goes into the transcript, in drawing order, texts
    drawn on one row (``advance=False`` until the row's last) joined into one line."""

    def __init__(self, width: int, height: int, style: dict[str, Any], lines: list[str]):
        self.image = Image.new("RGB", (width, height), style.get("paper", "white"))
        self.draw = ImageDraw.Draw(self.image)
        self.boxes = PilTextBoxes(width, height)  # what was drawn where, for the reading loss
        self.style, self.lines = style, lines
        self.y = style["margin"]
        self.size = style["font_px"]
        self._row: list[str] = []

    def font(self, scale: float = 1.0, bold: bool = False, italic: bool = False, family: str | None = None):
        return pil_font(family or self.style["font"], max(8, round(self.size * scale)), bold, italic)

    def text(self, text: str, x: int | None = None, scale: float = 1.0, bold: bool = False, italic: bool = False,
             right: bool = False, advance: bool = True, family: str | None = None, fill: str = "black") -> None:
        font = self.font(scale, bold, italic, family)
        x = self.style["margin"] if x is None else x
        if right:
            x = x - font.getlength(text)
        self.boxes.text(self.draw, (x, self.y), text, font=font, fill=fill)
        self._row.append(text)
        if advance:
            self.lines.append(" ".join(self._row))
            self._row = []
            self.y += round(self.size * scale * 1.45)

    def finish_row(self) -> None:
        if self._row:
            self.lines.append(" ".join(self._row))
            self._row = []

    def paragraph(self, text: str, x: int, width: int, scale: float = 1.0) -> None:
        font = self.font(scale)
        line = ""
        for word in text.split():
            trial = f"{line} {word}".strip()
            if font.getlength(trial) > width and line:
                self.text(line, x, scale)
                line = word
            else:
                line = trial
        if line:
            self.text(line, x, scale)
        self.y += self.size // 2

    def rule(self) -> None:
        m = self.style["margin"]
        self.draw.line([m, self.y, self.image.width - m, self.y], fill="#777777")
        self.y += self.size // 2


def _invoice(rng: random.Random, page: Page, doc: Document) -> None:
    cur = rng.choice(["$", "€", "£"])
    f = doc.fields
    f["company"], f["company_address"] = rng.choice(names.COMPANIES), _address(rng)
    f["invoice_number"] = f"INV-{rng.randint(2019, 2025)}-{rng.randint(1, 9999):04d}"
    f["invoice_date"], f["due_date"], f["bill_to"] = _date(rng), _date(rng), _person(rng)
    w, m = page.image.width, page.style["margin"]
    page.text(f["company"], scale=1.5, bold=True)
    page.text(f["company_address"], scale=0.9)
    page.y += page.size
    page.text("INVOICE", scale=1.8, bold=True, advance=False)
    page.finish_row()
    page.text(f"Invoice No: {f['invoice_number']}", x=w - m, right=True)
    page.y += round(page.size * 0.4)
    page.text(f"Date: {f['invoice_date']}", x=w - m, right=True)
    page.text(f"Due date: {f['due_date']}", x=w - m, right=True)
    page.text("Bill to:", bold=True)
    page.text(f["bill_to"])
    page.y += page.size
    columns = [(m, "Description"), (int(w * 0.55), "Qty"), (int(w * 0.75), "Unit price"), (w - m, "Amount")]
    for x, head in columns:
        page.text(head, x=x, bold=True, right=x != m, advance=head == "Amount")
    page.rule()
    subtotal = 0
    for name, lo, hi in rng.sample(names.ITEMS, rng.randint(2, 6)):
        qty, price = rng.randint(1, 12), rng.randint(lo, hi)
        subtotal += qty * price
        row = [name, str(qty), _money(price, cur), _money(qty * price, cur)]
        for (x, _), text in zip(columns, row):
            page.text(text, x=x, right=x != m, advance=x == w - m)
    page.rule()
    rate = rng.choice([5, 8, 10, 20])
    tax = round(subtotal * rate / 100)
    f["subtotal"], f["tax"], f["total"] = _money(subtotal, cur), _money(tax, cur), _money(subtotal + tax, cur)
    for label, value, bold in (("Subtotal", f["subtotal"], False), (f"Tax ({rate}%)", f["tax"], False),
                               ("Total due", f["total"], True)):
        page.text(label, x=int(w * 0.6), bold=bold, advance=False)
        page.text(value, x=w - m, right=True, bold=bold)
    doc.questions += [("name", "Which company issued this invoice?", "company"),
                      ("identifier", "What is the invoice number?", "invoice_number"),
                      ("date", "What is the invoice date?", "invoice_date"),
                      ("date", "When is the invoice due?", "due_date"),
                      ("name", "Who is the invoice billed to?", "bill_to"),
                      ("amount", "What is the total amount due?", "total"),
                      ("amount", "What is the subtotal?", "subtotal"),
                      ("amount", "How much tax is charged?", "tax"),
                      ("address", "What is the address of the company?", "company_address")]


def _receipt(rng: random.Random, page: Page, doc: Document) -> None:
    cur = rng.choice(["$", "€", "£"])
    f = doc.fields
    w, m = page.image.width, page.style["margin"]
    f["store"], f["date"] = rng.choice(names.COMPANIES).upper(), _date(rng)
    f["time"] = f"{rng.randint(7, 21):02d}:{rng.randint(0, 59):02d}"
    f["cashier"], f["card"] = rng.choice(names.FIRST_NAMES), f"{rng.randint(0, 9999):04d}"
    page.text(f["store"], bold=True, x=w // 2 - round(page.font(1.1, True).getlength(f["store"]) / 2), scale=1.1)
    page.text(f"{f['date']}  {f['time']}")
    page.text(f"Cashier: {f['cashier']}")
    page.rule()
    total = 0
    for name, lo, hi in rng.sample(names.ITEMS[-7:] + names.ITEMS[:4], rng.randint(2, 7)):
        price = rng.randint(lo, hi)
        total += price
        page.text(name, advance=False)
        page.text(_money(price, cur), x=w - m, right=True)
    page.rule()
    f["total"] = _money(total, cur)
    page.text("TOTAL", bold=True, advance=False)
    page.text(f["total"], x=w - m, right=True, bold=True)
    page.text(f"CARD **** {f['card']}")
    page.text("Thank you for shopping with us!", scale=0.9)
    doc.questions += [("name", "What is the name of the store?", "store"),
                      ("date", "On what date was this receipt issued?", "date"),
                      ("identifier", "At what time was the purchase made?", "time"),
                      ("name", "What is the cashier's name?", "cashier"),
                      ("amount", "What is the total?", "total"),
                      ("identifier", "What are the last four digits of the card?", "card")]


def _form(rng: random.Random, page: Page, doc: Document) -> None:
    f = doc.fields
    w, m = page.image.width, page.style["margin"]
    title = rng.choice(["Membership Application", "Patient Registration Form", "Employee Details Form",
                        "Library Card Application"])
    f["form_title"], f["form_id"] = title, f"F-{rng.randint(100, 999)}-{rng.choice('ABCDEFGH')}"
    f["name"], f["birth_date"], f["address"] = _person(rng), _date(rng, 1950, 2005), _address(rng)
    f["phone"] = f"+{rng.randint(1, 49)} {rng.randint(100, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    first, last = f["name"].lower().split()
    f["email"] = f"{first}.{last}@{rng.choice(['example.com', 'mail.net', 'post.org'])}"
    f["occupation"] = rng.choice(names.JOB_TITLES)
    page.text(title, scale=1.4, bold=True)
    page.text(f"Form {f['form_id']}", scale=0.85)
    page.rule()
    hand = rng.choice([("serif", True), ("mono", False), ("sans", True)])
    for label, key in (("Full name", "name"), ("Date of birth", "birth_date"), ("Address", "address"),
                       ("Phone", "phone"), ("Email", "email"), ("Occupation", "occupation")):
        page.text(f"{label}:", bold=True, advance=False)
        x = m + int(w * 0.3)
        page.text(f[key], x=x, family=hand[0], italic=hand[1], fill="#1a237e", advance=False)
        page.finish_row()
        page.y += round(page.size * 1.3)
        page.draw.line([x, page.y, w - m, page.y], fill="#999999")
        page.y += round(page.size * 0.6)
    doc.questions += [("text_span", "What is the title of the form?", "form_title"),
                      ("identifier", "What is the form number?", "form_id"),
                      ("name", "What is the applicant's full name?", "name"),
                      ("date", "What is the date of birth?", "birth_date"),
                      ("address", "What address is given on the form?", "address"),
                      ("identifier", "What phone number is written on the form?", "phone"),
                      ("identifier", "What email address is given?", "email"),
                      ("text_span", "What is the applicant's occupation?", "occupation")]


def _letter(rng: random.Random, page: Page, doc: Document) -> None:
    f = doc.fields
    w, m = page.image.width, page.style["margin"]
    f["company"], f["sender_address"], f["date"] = rng.choice(names.COMPANIES), _address(rng), _date(rng)
    f["recipient"], f["sender"], f["sender_title"] = _person(rng), _person(rng), rng.choice(names.JOB_TITLES)
    f["reference"] = f"REF/{rng.randint(10, 99)}/{rng.randint(1000, 9999)}"
    f["meeting_date"], f["amount"] = _date(rng), _money(rng.randint(50_000, 5_000_000), rng.choice(["$", "€", "£"]))
    page.text(f["company"], scale=1.3, bold=True)
    page.text(f["sender_address"], scale=0.9)
    page.y += page.size
    page.text(f["date"], x=w - m, right=True)
    page.text(f"Our reference: {f['reference']}")
    page.y += page.size // 2
    page.text(f"Dear {f['recipient']},")
    body = (f"Thank you for your letter about the proposed agreement. We are pleased to confirm a budget of "
            f"{f['amount']} for the first phase. We would like to meet on {f['meeting_date']} to agree the next "
            f"steps. {rng.choice(FILLER)} {rng.choice(FILLER)}")
    page.paragraph(body, m, w - 2 * m)
    page.text("Yours sincerely,")
    page.y += page.size
    page.text(f["sender"], bold=True)
    page.text(f["sender_title"])
    doc.questions += [("name", "Who wrote the letter?", "sender"),
                      ("name", "To whom is the letter addressed?", "recipient"),
                      ("date", "What is the date of the letter?", "date"),
                      ("identifier", "What is the reference of the letter?", "reference"),
                      ("date", "On what date does the sender propose to meet?", "meeting_date"),
                      ("amount", "What budget is confirmed for the first phase?", "amount"),
                      ("text_span", "What is the sender's job title?", "sender_title")]


def _article(rng: random.Random, page: Page, doc: Document) -> None:
    f = doc.fields
    w, m = page.image.width, page.style["margin"]
    company = rng.choice(names.COMPANIES)
    f["title"] = rng.choice([f"{company} looks ahead", f"A year of change at {company}", f"Inside {company}"])
    f["author"], f["founded"], f["city"] = _person(rng), str(rng.randint(1950, 2015)), rng.choice(names.CITIES)
    f["employees"] = f"{rng.randint(20, 9000):,}"
    page.text(f["title"], scale=1.6, bold=True)
    page.text(f"By {f['author']}", italic=True, scale=0.9)
    page.rule()
    facts = [f"{company} was founded in {f['founded']} and is based in {f['city']}.",
             f"Today the company employs {f['employees']} people."]
    sentences = facts + rng.sample(FILLER, 5)
    rng.shuffle(sentences)
    half = len(sentences) // 2
    gap, top = 24, page.y
    col_w = (w - 2 * m - gap) // 2
    page.paragraph(" ".join(sentences[:half]), m, col_w)
    page.y = top
    page.paragraph(" ".join(sentences[half:]), m + col_w + gap, col_w)
    doc.questions += [("text_span", "What is the title of the article?", "title"),
                      ("name", "Who wrote the article?", "author"),
                      ("date", f"In what year was {company} founded?", "founded"),
                      ("address", f"In which city is {company} based?", "city"),
                      ("amount", f"How many people does {company} employ?", "employees")]


DRAW = {"invoice": _invoice, "receipt": _receipt, "form": _form, "letter": _letter, "article": _article}


def render_document(rng: random.Random, kind: str, image_px: int) -> tuple[Document, Image.Image]:
    """The document drawn and scaled to image_px wide; `doc.text_boxes` says what it drew where."""
    style = {"font": rng.choice(FONT_FAMILIES), "font_px": rng.randint(16, 22), "margin": rng.randint(30, 60),
             "paper": rng.choice(["white", "white", "#fdfcf7", "#f7f7f7"])}
    width = 480 if kind == "receipt" else 850
    doc = Document(kind=kind, fields={}, questions=[], style=style)
    page = Page(width, 1400, style, doc.lines)
    DRAW[kind](rng, page, doc)
    image = page.image.crop((0, 0, width, min(1400, page.y + style["margin"])))
    cropped = image.size
    scale = image_px / 850  # every kind shares one scale, so a receipt stays narrow on its background
    image = image.resize((max(32, round(image.width * scale)), max(32, round(image.height * scale))), Image.LANCZOS)
    sx, sy, dx, dy = image.width / cropped[0], image.height / cropped[1], 0, 0
    if kind == "receipt":
        backdrop = Image.new("RGB", (image_px, image.height + 2 * round(20 * scale)), "#b9b4aa")
        dx, dy = (image_px - image.width) // 2, round(20 * scale)
        backdrop.paste(image, (dx, dy))
        image = backdrop
    doc.text_boxes = moved(page.boxes.entries, sx, sy, dx, dy, image.width, image.height)
    return doc, image


def make_record(rng: random.Random, key: str, image_px: int = 512, noise: bool = True) -> Record:
    kind = rng.choice(KINDS)
    doc, image = render_document(rng, kind, image_px)
    picked = rng.sample(doc.questions, min(len(doc.questions), rng.randint(4, 6)))
    qas = [(qtype, question, doc.fields[name]) for qtype, question, name in picked]
    args = [{"field": name} for _, _, name in picked]
    if rng.random() < 0.3:
        qas.append(("unanswerable", ABSENT[kind], REFUSAL))
        args.append({})
    order = list(range(len(qas)))
    rng.shuffle(order)
    qas, args = [qas[i] for i in order], [args[i] for i in order]
    text_boxes = list(doc.text_boxes)
    data, ext = encode_image(image, rng, noise, text_boxes)
    meta = {"qa_types": [q[0] for q in qas], "qa_args": args,
            "document": {"kind": kind, "fields": doc.fields, "style": doc.style}, "transcript": "\n".join(doc.lines),
            "text_boxes": text_boxes}
    return Record(key=key, image=data, image_ext=ext, messages=qa_messages(qas), source=SOURCE, task=TASK, meta=meta)


def synthesize(out_dir, num_images: int, seed: int, split: str = "train", image_px: int = 512, workers: int = 1,
               shard_size: int = 1000, progress: bool = True, noise: bool = True,
               replace_own: bool = True,
               overwrite: bool = False, engine: str = "local",
               ray_address: str | None = None) -> dict[str, Any]:
    """Write `num_images` document records as shards (see synth/common.py for determinism and reuse)."""
    from data_pipelines.synth.common import synthesize_with
    return synthesize_with(__name__, out_dir, num_images, seed, split=split, image_px=image_px, workers=workers,
                           shard_size=shard_size, progress=progress, params={"noise": noise},
                           replace_own=replace_own, overwrite=overwrite,
                           engine=engine, ray_address=ray_address)

