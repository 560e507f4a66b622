"""Charts of the full variety: vertical, horizontal, grouped and stacked bars, lines with several series,
areas, pies, donuts and labelled scatter plots, in varied fonts, sizes, palettes, gridlines, legends,
value labels, rotated long tick labels and log axes. The data and questions live in `chart_qa`; this
module only draws. One figure per image size is reused (creating one costs more than drawing a chart).
"""
from __future__ import annotations

import io
import random
from dataclasses import asdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from data_pipelines.synth.chart_qa import ChartData, make_questions, sample_chart_data  # noqa: E402
from data_pipelines.synth.common import qa_messages  # noqa: E402
from data_pipelines.synth.text_boxes import figure_text_boxes  # noqa: E402
from molmini.data.records import Record  # noqa: E402

SOURCE = "synth-charts-full"
TASK = "chart_qa"
FIG_W = 4.0  # inches; the dpi makes this image_px pixels wide
CHAR_W = 0.6  # average character width in ems
PALETTES = {
    "tab10": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf"],
    "set2": ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3", "#1b9e77",
             "#d95f02"],
    "dark2": ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#386cb0",
              "#f0027f"],
    "blues": ["#08306b", "#2171b5", "#6baed6", "#9ecae1", "#4292c6", "#c6dbef", "#084594", "#deebf7", "#3182bd",
              "#63a1d1"],
    "earth": ["#8c510a", "#bf812d", "#dfc27d", "#80cdc1", "#35978f", "#01665e", "#543005", "#f6e8c3", "#c7eae5",
              "#003c30"],
}
FONTS = ("DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono", "STIXGeneral")
BACKGROUNDS = ("white", "white", "white", "#f5f5f5", "#fbf8ef", "#eef3f8")


def sample_style(rng: random.Random, data: ChartData) -> dict[str, Any]:
    return {"font": rng.choice(FONTS), "font_pt": rng.choice([7.0, 8.0, 9.0]), "palette": rng.choice(sorted(PALETTES)),
            "grid": rng.choice(["none", "value", "both"]), "background": rng.choice(BACKGROUNDS),
            "aspect": rng.choice([0.7, 0.75, 0.8, 1.0]), "value_labels": rng.random() < 0.5,
            "legend": rng.choice(["upper left", "upper right", "outside"]), "open_spines": rng.random() < 0.6,
            "pie_labels": rng.random() < 0.6, "marker": rng.choice(["o", "s", "^", ""])}


_FIGURES: dict[tuple[int, int], Figure] = {}


def _figure(width_px: int, height_px: int) -> Figure:
    fig = _FIGURES.get((width_px, height_px))
    if fig is None:
        dpi = width_px / FIG_W
        fig = Figure(figsize=(FIG_W, height_px / dpi), dpi=dpi)
        FigureCanvasAgg(fig)
        _FIGURES[width_px, height_px] = fig
    for ax in list(fig.axes):
        fig.delaxes(ax)
    for text in list(fig.texts):
        text.remove()
    for legend in list(fig.legends):
        legend.remove()
    return fig


def image_size(data: ChartData, image_px: int) -> tuple[int, int]:
    return image_px, max(32, round(image_px * data.style["aspect"]))


def render(data: ChartData, image_px: int) -> bytes:
    """PNG bytes of the chart, image_px wide and image_px * aspect high."""
    return render_and_text(data, image_px)[0]


def render_and_text(data: ChartData, image_px: int) -> tuple[bytes, list[dict]]:
    """PNG bytes of the chart and the text it drew where (synth/text_boxes.py: matplotlib's own extents)."""
    width, height = image_size(data, image_px)
    fig = _figure(width, height)
    st = data.style
    rc = {"font.family": st["font"], "font.size": st["font_pt"], "axes.titlesize": st["font_pt"] + 2,
          "axes.labelsize": st["font_pt"], "xtick.labelsize": st["font_pt"], "ytick.labelsize": st["font_pt"],
          "legend.fontsize": st["font_pt"] - 0.5, "axes.edgecolor": "#555555"}
    with matplotlib.rc_context(rc):
        fig.set_facecolor(st["background"])
        if data.kind in ("pie", "donut"):
            _draw_pie(fig, data)
        else:
            _draw_axes_chart(fig, data)
        fig.canvas.draw()
        boxes = figure_text_boxes(fig, (width, height))
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=3)
    return out.getvalue(), boxes


def _inches(chars: int, pt: float) -> float:
    return chars * CHAR_W * pt / 72


def _draw_axes_chart(fig: Figure, data: ChartData) -> None:
    st, pt = data.style, data.style["font_pt"]
    fig_h = fig.get_figheight()
    colours = PALETTES[st["palette"]]
    n, horizontal = len(data.categories), data.kind == "hbar"
    longest = max(map(len, data.categories))
    # Margins in inches: room for tick labels, axis names, the title and an outside legend.
    left, right, top, bottom = 0.55, 0.15, 0.12, 0.3
    legend = len(data.series) > 1 and data.kind != "scatter"
    if legend and st["legend"] == "outside":
        right += 0.35 + _inches(max(map(len, data.series)) + 4, pt)  # + the legend's line or patch
    left += 0.2 if (data.y_name if not horizontal else data.x_name) else 0
    rotation = 0
    if horizontal:
        left += _inches(longest, pt) - 0.35
        bottom += 0.1
    elif data.kind != "scatter":
        room = (FIG_W - left - right) / n  # per category label
        if _inches(longest + 1, pt) > room:
            rotation = 90 if _inches(longest, pt) * 0.7 > fig_h * 0.35 or room < 2 * pt / 72 else 45
            bottom += _inches(longest, pt) * (1.0 if rotation == 90 else 0.72)
    bottom += 0.2 if (data.x_name if not horizontal else data.y_name) else 0
    top += 0.3 if data.title else 0
    width = max(FIG_W - left - right, 1.0)
    height = max(fig_h - top - bottom, 0.8)
    ax = fig.add_axes((left / FIG_W, bottom / fig_h, width / FIG_W, height / fig_h))
    ax.set_facecolor(st["background"])
    x = np.arange(n)
    k = len(data.series)
    labels = st["value_labels"]
    if data.kind in ("bar", "hbar"):
        bar = ax.barh if horizontal else ax.bar
        one_colour = st["palette"] == "blues" or len(data.series) > 1
        cont = bar(x, data.values[0], 0.65, color=colours[0] if one_colour else colours[:n], zorder=2)
        if labels:
            ax.bar_label(cont, labels=[data.fmt(v) for v in data.values[0]], padding=1, fontsize=pt - 1)
    elif data.kind == "grouped_bar":
        w = 0.8 / k
        for s, vals in enumerate(data.values):
            cont = ax.bar(x - 0.4 + w * (s + 0.5), vals, w, color=colours[s], label=data.series[s], zorder=2)
            if labels:
                ax.bar_label(cont, labels=[data.fmt(v) for v in vals], padding=1, fontsize=pt - 2)
    elif data.kind == "stacked_bar":
        base = np.zeros(n)
        for s, vals in enumerate(data.values):
            cont = ax.bar(x, vals, 0.65, bottom=base, color=colours[s], label=data.series[s], zorder=2)
            base += np.asarray(vals)
            if labels:
                ax.bar_label(cont, labels=[data.fmt(v) for v in vals], label_type="center", fontsize=pt - 2)
    elif data.kind in ("line", "area"):
        for s, vals in enumerate(data.values):
            if data.kind == "area":
                ax.fill_between(x, vals, alpha=0.35 if k > 1 else 0.6, color=colours[s], zorder=2, linewidth=0)
            ax.plot(x, vals, color=colours[s], marker=st["marker"] or None, markersize=3, linewidth=1.5,
                    label=data.series[s], zorder=3)
            if labels and k == 1:
                for i, v in enumerate(vals):
                    ax.annotate(data.fmt(v), (i, v), textcoords="offset points", xytext=(0, 3), ha="center",
                                fontsize=pt - 1)
    elif data.kind == "scatter":
        xs, ys = data.values
        ax.scatter(xs, ys, s=14, color=colours[0], zorder=3)
        for c, xv, yv in zip(data.categories, xs, ys):
            ax.annotate(c, (xv, yv), textcoords="offset points", xytext=(3, 2), fontsize=pt - 1.5)
    value_axis = ax.xaxis if horizontal else ax.yaxis
    if data.kind != "scatter":
        cat_axis = ax.yaxis if horizontal else ax.xaxis
        cat_axis.set_ticks(x)
        if horizontal:
            ax.set_yticklabels(data.categories)
            ax.invert_yaxis()  # first category on top, as it is read
        elif rotation:
            ax.set_xticklabels(data.categories, rotation=rotation, ha="right" if rotation == 45 else "center",
                               rotation_mode="anchor" if rotation == 45 else "default")
        else:
            ax.set_xticklabels(data.categories)
        if data.log_scale:
            (ax.set_xscale if horizontal else ax.set_yscale)("log")
        else:
            # Headroom for value labels, and for a legend inside the axes.
            tops = [sum(col) for col in zip(*data.values)] if data.kind == "stacked_bar" else sum(data.values, [])
            room = 1.05 + (0.1 if labels else 0) + (0.2 if legend and st["legend"] != "outside" else 0)
            (ax.set_xlim if horizontal else ax.set_ylim)(0, max(tops) * room)
    else:  # room on the right for the point labels, however long
        low, high = min(data.values[0]), max(data.values[0])
        label_share = min(0.45, (_inches(longest, pt - 1.5) + 0.1) / width)  # of the axes width
        ax.set_xlim(low - 0.05 * (high - low), high + (high - low) * (0.05 + label_share) / (1 - label_share))
    if st["grid"] != "none":
        (ax.grid if st["grid"] == "both" else value_axis.grid)(True, color="#cccccc", linewidth=0.5, zorder=0)
        ax.set_axisbelow(True)
    if st["open_spines"]:
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    ax.tick_params(length=2, pad=1.5)
    if data.x_name:
        (ax.set_ylabel if horizontal else ax.set_xlabel)(data.x_name)
    if data.y_name:
        (ax.set_xlabel if horizontal else ax.set_ylabel)(data.y_name)
    if data.title:
        fig.text(0.5, 1 - 0.06 / fig_h, data.title, ha="center", va="top", fontsize=pt + 2, weight="bold")
    if legend:
        if st["legend"] == "outside":
            ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        else:
            ax.legend(loc=st["legend"], framealpha=0.8)


def _draw_pie(fig: Figure, data: ChartData) -> None:
    st, pt = data.style, data.style["font_pt"]
    fig_h = fig.get_figheight()
    top = 0.4 if data.title else 0.1
    side = min(fig_h - top - 0.5, FIG_W * (0.55 if st["pie_labels"] else 0.5))
    left = 0.5 if not st["pie_labels"] else (FIG_W - side) / 2
    ax = fig.add_axes((left / FIG_W, (fig_h - top - side) / 2 / fig_h, side / FIG_W, side / fig_h))
    colours = PALETTES[st["palette"]]
    values = data.values[0]
    wedges, *_ = ax.pie(values, labels=data.categories if st["pie_labels"] else None, colors=colours[:len(values)],
                        startangle=90, counterclock=False, labeldistance=1.08,
                        autopct=(lambda p: f"{p:.0f}%") if st["value_labels"] else None,
                        pctdistance=0.8 if data.kind == "donut" else 0.65, textprops={"fontsize": pt},
                        wedgeprops={"linewidth": 0.8, "edgecolor": "white",
                                    **({"width": 0.42} if data.kind == "donut" else {})})
    ax.set_aspect("equal")
    if not st["pie_labels"]:
        ax.legend(wedges, data.categories, loc="center left", bbox_to_anchor=(1.05, 0.5), frameon=False)
    if data.title:
        fig.text(0.5, 1 - 0.06 / fig_h, data.title, ha="center", va="top", fontsize=pt + 2, weight="bold")


def make_varied_chart_record(rng: random.Random, key: str, image_px: int = 384, kind: str | None = None) -> Record:
    """One chart of the full variety and its questions, drawn from `rng`."""
    data = sample_chart_data(rng, kind)
    data.style = sample_style(rng, data)
    qas = make_questions(rng, data)
    image, text_boxes = render_and_text(data, image_px)
    meta = {"qa_types": [q[0] for q in qas], "qa_args": [q[3] for q in qas], "chart": asdict(data),
            "transcript": data.transcript(), "text_boxes": text_boxes}
    return Record(key=key, image=image, messages=qa_messages([q[:3] for q in qas]), source=SOURCE, task=TASK,
                  meta=meta)

