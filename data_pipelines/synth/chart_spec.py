"""What a basic synthetic chart is, and its Axes renderer: the chart kinds and question types, the label
themes and value ranges, the layout constants (figure size, font sizes, palette) that both renderers use,
`ChartSpec` (the data one chart shows), how one is sampled, its exactly computed questions, and
`render_chart` (matplotlib with an Axes). The generator entry point is charts.py; the faster direct
renderer for bar and line charts is fast_charts.py. The full-variety charts are varied_charts.py.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: no display, and the fastest raster backend
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_pipelines.synth.text_boxes import figure_text_boxes  # noqa: E402


CHART_KINDS = ("bar", "line", "pie")
QUESTION_TYPES = ("chart_type", "count", "largest_label", "value", "compare", "colour_largest", "trend")
QUESTION_TYPES_BY_KIND = {
    "bar": ("chart_type", "count", "largest_label", "value", "compare", "colour_largest"),
    "line": ("chart_type", "count", "largest_label", "value", "compare", "trend"),
    "pie": ("chart_type", "count", "largest_label", "colour_largest"),
}
# Matplotlib's tab10 colours, which carry exactly these names (tab:red, tab:blue, ...).
PALETTE = {"red": "#d62728", "blue": "#1f77b4", "green": "#2ca02c", "orange": "#ff7f0e",
           "purple": "#9467bd", "brown": "#8c564b", "pink": "#e377c2", "gray": "#7f7f7f"}
# Labels come from one theme per chart, so a chart reads naturally; every theme has >= 7 labels.
LABEL_THEMES = {
    "regions": ("North", "South", "East", "West", "Central", "Coast", "Valley"),
    "fruits": ("Apple", "Pear", "Plum", "Lime", "Mango", "Kiwi", "Fig", "Peach"),
    "months": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
}
ORDERED_THEMES = {"months"}  # labels kept in their natural order
TITLES = ("Sales", "Revenue", "Visitors", "Rainfall", "Votes", "Orders", "Survey", "Budget", "Exports")
MIN_CATEGORIES, MAX_CATEGORIES = 3, 7
MIN_VALUE, MAX_VALUE = 5, 95  # bar and line values
MIN_SHARE = 5  # smallest pie share, in percent
FIG_INCHES = 2.0  # the dpi is chosen so that this many inches is image_px pixels
# Font sizes in points; at image_px=128 (64 dpi) one point is 0.89 pixels.
TITLE_PT, TICK_PT, VALUE_PT = 10.0, 8.0, 7.5
CHAR_WIDTH = 0.6  # average DejaVu Sans character width, in ems
TITLE_PROBABILITY = 0.5
VALUE_LABEL_PROBABILITY = 0.5
COUNT_NOUNS = {"bar": "How many bars are there?", "line": "How many points does the line have?",
               "pie": "How many slices does the pie have?"}


@dataclass
class ChartSpec:
    """What one chart shows. For a line chart `colours` holds the single line colour."""
    kind: str
    labels: list[str]
    values: list[int]
    colours: list[str]
    title: str | None
    value_labels: bool

    def argmax(self) -> int:
        return self.values.index(max(self.values))

    def transcript(self) -> str:
        unit = "%" if self.kind == "pie" else ""
        items = ", ".join(f"{label} {value}{unit}" for label, value in zip(self.labels, self.values))
        return ". ".join([f"{self.kind} chart"] + ([self.title] if self.title else []) + [items])


def sample_chart(rng: random.Random) -> ChartSpec:
    kind = rng.choice(CHART_KINDS)
    n = rng.randint(MIN_CATEGORIES, MAX_CATEGORIES)
    theme = rng.choice(sorted(LABEL_THEMES))
    labels = rng.sample(LABEL_THEMES[theme], n)
    if theme in ORDERED_THEMES:
        labels.sort(key=LABEL_THEMES[theme].index)
    if kind == "pie":
        values = _sample_pie_shares(rng, n)
    else:
        # Distinct values: a unique maximum, and any two labels can be compared with a definite answer.
        values = rng.sample(range(MIN_VALUE, MAX_VALUE + 1), n)
    if kind == "line" and (values[-1] > values[0]) != (rng.random() < 0.5):
        values[0], values[-1] = values[-1], values[0]  # so that "up" and "down" are equally likely
    colours = rng.sample(sorted(PALETTE), 1 if kind == "line" else n)
    title = rng.choice(TITLES) if rng.random() < TITLE_PROBABILITY else None
    value_labels = rng.random() < VALUE_LABEL_PROBABILITY
    return ChartSpec(kind, labels, values, colours, title, value_labels)


def _sample_pie_shares(rng: random.Random, n: int) -> list[int]:
    """n integer percentages, each >= MIN_SHARE, summing to 100, with a unique maximum."""
    spare = 100 - MIN_SHARE * n
    while True:
        cuts = sorted(rng.randint(0, spare) for _ in range(n - 1))
        extras = [b - a for a, b in zip([0] + cuts, cuts + [spare])]
        shares = [MIN_SHARE + e for e in extras]
        if shares.count(max(shares)) == 1:
            return shares


def make_questions(rng: random.Random, spec: ChartSpec) -> list[tuple[str, str, str]]:
    """(question type, question, answer) for every type that applies to the chart, in a shuffled order."""
    big = spec.labels[spec.argmax()]
    qas = []
    for qtype in QUESTION_TYPES_BY_KIND[spec.kind]:
        if qtype == "chart_type":
            qa = ("What type of chart is this?", spec.kind)
        elif qtype == "count":
            qa = (COUNT_NOUNS[spec.kind], str(len(spec.labels)))
        elif qtype == "largest_label":
            qa = ("Which category has the largest value?", big)
        elif qtype == "value":
            i = rng.randrange(len(spec.labels))
            qa = (f"What is the value of {spec.labels[i]}?", str(spec.values[i]))
        elif qtype == "compare":
            i, j = rng.sample(range(len(spec.labels)), 2)
            want_yes = rng.random() < 0.5
            if (spec.values[i] > spec.values[j]) != want_yes:
                i, j = j, i
            qa = (f"Is {spec.labels[i]} greater than {spec.labels[j]}?", "Yes" if want_yes else "No")
        elif qtype == "colour_largest":
            part = "bar" if spec.kind == "bar" else "slice"
            qa = (f"What colour is the largest {part}?", spec.colours[spec.argmax()])
        elif qtype == "trend":
            qa = ("Does the line go up or down from the first point to the last?",
                  "up" if spec.values[-1] > spec.values[0] else "down")
        else:
            raise AssertionError(qtype)
        qas.append((qtype, *qa))
    rng.shuffle(qas)
    return qas


_FIGURES: dict[int, Figure] = {}  # one reused figure per image size, per process (creating one is slow)


def _figure(image_px: int) -> Figure:
    fig = _FIGURES.get(image_px)
    if fig is None:
        fig = Figure(figsize=(FIG_INCHES, FIG_INCHES), dpi=image_px / FIG_INCHES, facecolor="white")
        FigureCanvasAgg(fig)
        _FIGURES[image_px] = fig
    # Cheaper than fig.clf(), which first resets every axes only to throw it away; we add nothing
    # to the figure but axes and texts, so removing those leaves it blank.
    for ax in list(fig.axes):
        fig.delaxes(ax)
    for artist in list(fig.texts) + list(fig.artists):  # artists: those of the direct renderer (fast_charts)
        artist.remove()
    return fig


def render_chart(spec: ChartSpec, image_px: int = 128) -> bytes:
    """PNG bytes of the chart, exactly image_px x image_px RGB."""
    return render_chart_and_text(spec, image_px)[0]


def render_chart_and_text(spec: ChartSpec, image_px: int = 128) -> tuple[bytes, list[dict]]:
    """PNG bytes of the chart and the text it drew where (synth/text_boxes.py: matplotlib's own extents)."""
    fig = _figure(image_px)
    top = 0.86 if spec.title else 0.95
    if spec.title:
        fig.text(0.5, 0.975, spec.title, ha="center", va="top", fontsize=TITLE_PT, weight="bold")
    if spec.kind == "pie":
        _draw_pie(fig, spec, top)
    else:
        _draw_bar_or_line(fig, spec, top)
    fig.canvas.draw()
    boxes = figure_text_boxes(fig, image_px)
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    if image.size != (image_px, image_px):  # only for sizes whose dpi rounds badly
        image = image.resize((image_px, image_px), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), boxes


def _draw_bar_or_line(fig: Figure, spec: ChartSpec, top: float) -> None:
    n = len(spec.labels)
    # Tick labels that would not fit side by side are slanted; they then need a deeper bottom margin.
    left, right = 0.15, 0.98
    label_width = max(map(len, spec.labels)) * CHAR_WIDTH * TICK_PT / 72 / FIG_INCHES  # figure fraction
    gap = 1.5 * CHAR_WIDTH * TICK_PT / 72 / FIG_INCHES  # room between neighbouring labels
    slant = n * (label_width + gap) > right - left
    bottom = 0.09 + (0.7 * label_width if slant else 0.02)
    ax = fig.add_axes((left, bottom, right - left, top - bottom))
    x = list(range(n))
    if spec.kind == "bar":
        ax.bar(x, spec.values, width=0.7, color=[PALETTE[c] for c in spec.colours], zorder=2)
    else:
        ax.plot(x, spec.values, color=PALETTE[spec.colours[0]], marker="o", markersize=3.5, linewidth=1.5,
                zorder=2)
    if spec.value_labels:
        for i, v in enumerate(spec.values):
            # A line point in a dip is labelled below it, so that the label does not sit on the line.
            neighbours = spec.values[max(i - 1, 0):i] + spec.values[i + 1:i + 2]
            below = spec.kind == "line" and v < min(neighbours)
            ax.text(i, v - 5 if below else v + (2 if spec.kind == "bar" else 4), str(v), ha="center",
                    va="top" if below else "bottom", fontsize=VALUE_PT)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 112 if spec.value_labels else 100)
    ax.set_yticks([0, 25, 50, 75, 100])
    ax.set_xticks(x)
    if slant:
        ax.set_xticklabels(spec.labels, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels(spec.labels)
    ax.tick_params(labelsize=TICK_PT, length=2, pad=1)
    ax.yaxis.grid(True, color="#dddddd", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_pie(fig: Figure, spec: ChartSpec, top: float) -> None:
    # A small square axes in the middle leaves room around the pie for the labels.
    size = 0.52
    ax = fig.add_axes((0.5 - size / 2, (top - size) / 2, size, size))
    ax.pie(spec.values, labels=spec.labels, colors=[PALETTE[c] for c in spec.colours], startangle=90,
           counterclock=False, labeldistance=1.1, textprops={"fontsize": TICK_PT},
           autopct=(lambda pct: f"{round(pct)}") if spec.value_labels else None, pctdistance=0.65,
           wedgeprops={"linewidth": 0.5, "edgecolor": "white"})
    ax.set_aspect("equal")
