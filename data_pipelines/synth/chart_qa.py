"""The data behind a chart of the full variety, and questions with answers computed exactly from it.

A `ChartData` holds categories, one or more named series and their values (already rounded to the
decimals the chart shows). Every question records its type and the indices it is about (`args`), so
that anyone can recompute its answer from ``meta["chart"]``. Answers follow ChartQA: plain numbers
without units or %, labels as written on the chart, "Yes"/"No", a letter for multiple choice, and
`REFUSAL` when the chart does not hold the answer.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from data_pipelines.synth import names
from data_pipelines.synth.common import REFUSAL, fmt_number

KINDS = ("bar", "hbar", "grouped_bar", "stacked_bar", "line", "area", "pie", "donut", "scatter")
KIND_NAMES = {"bar": "bar", "hbar": "horizontal bar", "grouped_bar": "grouped bar", "stacked_bar": "stacked bar",
              "line": "line", "area": "area", "pie": "pie", "donut": "donut", "scatter": "scatter"}
MULTI_SERIES = {"grouped_bar", "stacked_bar"}  # always 2+ series; line and area may have 1-3
QUESTION_TYPES = ("chart_type", "count", "value", "max_label", "min_label", "max_value", "compare",
                  "difference", "sum", "average", "trend", "yes_no", "multiple_choice", "unanswerable")
LETTERS = "ABCD"


@dataclass
class ChartData:
    kind: str
    categories: list[str]
    series: list[str]            # legend names; one series is named after its measure
    values: list[list[float]]    # values[s][c]; for scatter, series = [x name, y name] and values = [xs, ys]
    decimals: int
    measure: str                 # what the values are ("Revenue"); scatter: the y measure
    category_noun: str           # "country"
    title: str | None = None
    x_name: str | None = None
    y_name: str | None = None
    log_scale: bool = False
    absent: str = ""             # a category of the same kind that the chart does not show
    style: dict[str, Any] = field(default_factory=dict)

    def fmt(self, x: float) -> str:
        return fmt_number(x, self.decimals)

    def transcript(self) -> str:
        """The chart's text and data in reading order: type, title, axes, legend, then every value."""
        parts = [f"{KIND_NAMES[self.kind]} chart"]
        parts += [f"Title: {self.title}"] if self.title else []
        # x_name names the categories and y_name the values; a horizontal bar chart swaps their axes.
        x_name, y_name = (self.y_name, self.x_name) if self.kind == "hbar" else (self.x_name, self.y_name)
        parts += [f"x axis: {x_name}"] if x_name else []
        parts += [f"y axis: {y_name}"] if y_name else []
        if self.kind == "scatter":
            parts += [", ".join(f"{c} ({self.fmt(x)}, {self.fmt(y)})"
                                for c, x, y in zip(self.categories, *self.values))]
        elif len(self.series) == 1:
            unit = "%" if self.kind in ("pie", "donut") else ""
            parts += [", ".join(f"{c} {self.fmt(v)}{unit}" for c, v in zip(self.categories, self.values[0]))]
        else:
            parts += [f"Legend: {', '.join(self.series)}"]
            parts += ["; ".join(f"{c}: " + ", ".join(f"{s} {self.fmt(vals[i])}" for s, vals in
                                                      zip(self.series, self.values))
                                for i, c in enumerate(self.categories))]
        return ". ".join(parts)


def sample_chart_data(rng: random.Random, kind: str | None = None) -> ChartData:
    kind = kind or rng.choice(KINDS)
    # Lines and areas run over an ordered axis (years, months, ...), as they do in the wild.
    themes = sorted(names.ORDERED) if kind in ("line", "area") else sorted(names.CATEGORIES)
    theme = rng.choice(themes)
    pool = names.CATEGORIES[theme]
    measure, axis, low, high, decimals, decades = rng.choice(names.MEASURES)
    lo_n, hi_n = {"pie": (3, 6), "donut": (3, 6), "scatter": (5, 10), "line": (4, 10), "area": (4, 10)}.get(kind, (3, 7))
    n = rng.randint(lo_n, min(hi_n, len(pool) - 1))
    chosen = rng.sample(range(len(pool)), n + 1)
    absent, chosen = pool[chosen[0]], chosen[1:]
    if theme in names.ORDERED or kind in ("line", "area"):
        chosen.sort()
    categories = [pool[i] for i in chosen]
    log = False
    if kind in ("pie", "donut"):
        series, decimals, measure, axis = ["Share"], 0, "Share", None
        values = [_shares(rng, n)]
    elif kind == "scatter":
        # Both axes share the chart's decimals: only measures that still hold n distinct values at those.
        def fits(m: tuple, d: int) -> bool:
            return (m[3] - m[2]) * 10 ** d >= 3 * n
        y_measure = (measure, axis, low, high, decimals)
        x_measure = rng.choice([m for m in names.MEASURES if m[0] != measure
                                and fits(m, min(decimals, m[4], 1)) and fits(y_measure, min(decimals, m[4], 1))])
        decimals = min(decimals, x_measure[4], 1)
        values = [_distinct(rng, n, x_measure[2], x_measure[3], decimals, False),
                  _distinct(rng, n, low, high, decimals, False)]
        series = [x_measure[1], axis]
    else:
        if kind in MULTI_SERIES:
            k = None
        elif kind in ("line", "area"):
            k = rng.choice([1, 1, 2, 3])
        else:
            k = 1
        series_names = list(rng.choice([s for s in names.SERIES if k is None or len(s) >= k]))
        k = k or rng.randint(2, len(series_names))
        series = [measure] if k == 1 else series_names[:k]
        log = decades and kind in ("bar", "hbar", "line") and rng.random() < 0.5
        values = [_distinct(rng, n, low, high, decimals, log) for _ in series]
        if kind == "stacked_bar":  # totals per category are asked about too: distinct as well
            while len(set(_totals(values, decimals))) < n:
                values = [_distinct(rng, n, low, high, decimals, False) for _ in series]
    noun = "category" if kind == "scatter" else names.CATEGORY_NOUN[theme]
    data = ChartData(kind=kind, categories=categories, series=series, values=values, decimals=decimals,
                     measure=measure, category_noun=names.CATEGORY_NOUN[theme] if kind != "scatter" else noun,
                     absent=absent)
    data.log_scale = bool(log)
    data.title = rng.choice([f"{measure} by {data.category_noun}", measure, f"{measure}, 2024", None])
    if kind == "scatter":
        data.title = rng.choice([f"{measure} vs {series[0].split(' (')[0].lower()}", None])
        data.x_name, data.y_name = series
    elif kind not in ("pie", "donut"):
        data.x_name = rng.choice([data.category_noun.capitalize(), None])
        data.y_name = rng.choice([axis, axis, None])
    return data


def _shares(rng: random.Random, n: int) -> list[float]:
    """n distinct integer percentages >= 4 summing to 100 (so that any two compare with one answer)."""
    while True:
        cuts = sorted(rng.randint(0, 100 - 4 * n) for _ in range(n - 1))
        shares = [4 + b - a for a, b in zip([0] + cuts, cuts + [100 - 4 * n])]
        if len(set(shares)) == n:
            return [float(s) for s in shares]


def _distinct(rng: random.Random, n: int, low: float, high: float, decimals: int, log: bool) -> list[float]:
    """n distinct values in [low, high] rounded to `decimals` (log-uniform when `log`)."""
    if (high - low) * 10 ** decimals < 2 * n:
        raise ValueError(f"cannot draw {n} distinct values from [{low}, {high}] at {decimals} decimals")
    while True:
        if log:
            values = [round(low * (high / low) ** rng.random(), decimals) for _ in range(n)]
        else:
            values = [round(rng.uniform(low, high), decimals) for _ in range(n)]
        if len(set(values)) == n:
            return values


def _totals(values: list[list[float]], decimals: int) -> list[float]:
    return [round(sum(col), decimals) for col in zip(*values)]


def answerable_series(data: ChartData) -> list[tuple[str, list[float]]]:
    """(name, values) the value questions can be about: each series, and for stacked bars the totals."""
    if data.kind == "scatter":
        return [(data.series[1], data.values[1])]
    out = list(zip(data.series, data.values))
    if data.kind == "stacked_bar":
        out.append(("total", _totals(data.values, data.decimals)))
    return out


def make_questions(rng: random.Random, data: ChartData) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(type, question, answer, args) for a shuffled selection of the types that apply to this chart."""
    cats, noun, fmt = data.categories, data.category_noun, data.fmt
    n = len(cats)
    qas: list[tuple[str, str, str, dict[str, Any]]] = []

    def of(s: int) -> str:  # " for 2023" when the chart has several series
        name = answerable_series(data)[s][0]
        if len(answerable_series(data)) == 1:
            return ""
        return " in total" if name == "total" else f" for {name}"

    qas.append(("chart_type", "What type of chart is this?", KIND_NAMES[data.kind], {}))
    counted = {"pie": "slices", "donut": "segments", "scatter": "points"}.get(data.kind, f"{noun} categories")
    qas.append(("count", f"How many {counted} are shown?", str(n), {}))
    if len(data.series) > 1 and data.kind != "scatter":
        qas.append(("count", "How many series does the legend list?", str(len(data.series)), {"what": "series"}))
    s = rng.randrange(len(answerable_series(data)))
    name, vals = answerable_series(data)[s]
    i, j = rng.sample(range(n), 2)
    hi, lo = vals.index(max(vals)), vals.index(min(vals))
    measure = data.measure.lower()
    qas += [
        ("value", f"What is the {measure} of {cats[i]}{of(s)}?", fmt(vals[i]), {"s": s, "i": i}),
        ("max_label", f"Which {noun} has the highest {measure}{of(s)}?", cats[hi], {"s": s}),
        ("min_label", f"Which {noun} has the lowest {measure}{of(s)}?", cats[lo], {"s": s}),
        ("max_value", f"What is the highest {measure}{of(s)}?", fmt(vals[hi]), {"s": s}),
        ("compare", f"Which is greater{of(s)}, {cats[i]} or {cats[j]}?", cats[i] if vals[i] > vals[j] else cats[j],
         {"s": s, "i": i, "j": j}),
        ("difference", f"What is the difference in {measure} between {cats[i]} and {cats[j]}{of(s)}?",
         fmt(abs(vals[i] - vals[j])), {"s": s, "i": i, "j": j}),
        ("sum", f"What is the sum of all {measure} values{of(s)}?", fmt(sum(vals)), {"s": s}),
        ("average", f"What is the average {measure}{of(s)}?", fmt_number(sum(vals) / n, 2), {"s": s}),
    ]
    if data.kind in ("line", "area"):
        qas.append(("trend", f"Does the {measure}{of(s)} increase or decrease from {cats[0]} to {cats[-1]}?",
                    "increase" if vals[-1] > vals[0] else "decrease", {"s": s}))
    want_yes = rng.random() < 0.5
    a, b = (i, j) if (vals[i] > vals[j]) == want_yes else (j, i)
    qas.append(("yes_no", f"Is the {measure} of {cats[a]} higher than that of {cats[b]}{of(s)}?",
                "Yes" if want_yes else "No", {"s": s, "i": a, "j": b}))
    options = rng.sample(range(n), min(4, n))
    if lo not in options:
        options[rng.randrange(len(options))] = lo
    listed = " ".join(f"({LETTERS[k]}) {cats[o]}" for k, o in enumerate(options))
    qas.append(("multiple_choice", f"Which {noun} has the lowest {measure}{of(s)}? {listed}. Answer with the letter.",
                LETTERS[options.index(lo)], {"s": s, "options": options}))
    qas.append(("unanswerable", f"What is the {measure} of {data.absent}{of(s)}?", REFUSAL, {"s": s}))
    rng.shuffle(qas)
    return qas[:rng.randint(6, len(qas))]
