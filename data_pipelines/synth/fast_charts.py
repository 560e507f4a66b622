"""A faster renderer for the basic bar and line charts: the same layout as `chart_spec._draw_bar_or_line`,
drawn as artists (rectangles, lines, texts) placed in figure coordinates, with no Axes, over a saved
background of the y axis (which is the same for every chart of one layout).

An Axes costs most of a small chart's time (its creation, the tick machinery and its layout); drawing the
few artists a bar chart needs directly is several times faster (see bench/synth_throughput.py). The
pixels differ slightly from the Axes renderer (anti-aliasing, text positions within a pixel or two), so
it is an option (`renderer="direct"`), and the default run keeps the Axes renderer its measured results
were made with. Pie charts always use the Axes renderer.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data_pipelines.synth import chart_spec as charts  # noqa: E402
from data_pipelines.synth.chart_spec import CHAR_WIDTH, FIG_INCHES, PALETTE, TICK_PT, TITLE_PT, VALUE_PT  # noqa: E402
from data_pipelines.synth.text_boxes import figure_text_boxes  # noqa: E402

Y_TICKS = (0, 25, 50, 75, 100)


def _points(pt: float) -> float:
    """A length in points as a fraction of the (square) figure."""
    return pt / 72 / FIG_INCHES


# (image_px, bottom, top, y_max) -> the saved pixels of the static part and the text boxes of its tick labels
_BACKGROUNDS: dict[tuple, tuple[object, list[dict]]] = {}


def render_chart_direct(spec: charts.ChartSpec, image_px: int = 128) -> bytes:
    """PNG bytes of a bar or line chart (a pie goes to the Axes renderer), image_px x image_px RGB."""
    return render_chart_direct_and_text(spec, image_px)[0]


def render_chart_direct_and_text(spec: charts.ChartSpec, image_px: int = 128) -> tuple[bytes, list[dict]]:
    """PNG bytes of the chart and the text it drew where (synth/text_boxes.py), as the Axes renderer's."""
    if spec.kind == "pie":
        return charts.render_chart_and_text(spec, image_px)
    fig = charts._figure(image_px)
    n = len(spec.labels)
    top = 0.86 if spec.title else 0.95
    left, right = 0.15, 0.98
    label_width = max(map(len, spec.labels)) * CHAR_WIDTH * TICK_PT / 72 / FIG_INCHES
    slant = n * (label_width + 1.5 * CHAR_WIDTH * TICK_PT / 72 / FIG_INCHES) > right - left
    bottom = 0.09 + (0.7 * label_width if slant else 0.02)
    y_max = 112 if spec.value_labels else 100

    def fx(x: float) -> float:
        return left + (x + 0.6) / (n + 0.2) * (right - left)  # x limits -0.6 .. n - 0.4

    def fy(y: float) -> float:
        return bottom + y / y_max * (top - bottom)

    tick, pad = _points(2), _points(2 + 1)
    # The y axis (grid, ticks, labels, spine) is the same for every chart of one layout: it is drawn once,
    # saved, and restored under each chart's own artists (matplotlib's blitting).
    key = (image_px, round(bottom, 6), top, y_max)
    if key not in _BACKGROUNDS:
        for t in Y_TICKS:
            fig.add_artist(Line2D([left, right], [fy(t)] * 2, color="#dddddd", linewidth=0.6, zorder=0))
            fig.add_artist(Line2D([left - tick, left], [fy(t)] * 2, color="black", linewidth=0.8, zorder=3))
            fig.text(left - pad, fy(t), str(t), ha="right", va="center", fontsize=TICK_PT)
        fig.add_artist(Line2D([left, left], [bottom, top], color="black", linewidth=0.8, zorder=3))
        fig.canvas.draw()
        _BACKGROUNDS[key] = fig.canvas.copy_from_bbox(fig.bbox), figure_text_boxes(fig, image_px)
        charts._figure(image_px)  # remove the static artists again
    background, boxes = _BACKGROUNDS[key]
    boxes = list(boxes)
    fig.canvas.restore_region(background)
    texts = []

    def draw(artist) -> None:
        artist.set_figure(fig)
        artist.set_transform(fig.transFigure)
        fig.draw_artist(artist)
        if isinstance(artist, Text):
            texts.append(artist)

    if spec.kind == "bar":
        for i, (v, c) in enumerate(zip(spec.values, spec.colours)):
            draw(Rectangle((fx(i - 0.35), fy(0)), fx(i + 0.35) - fx(i - 0.35), fy(v) - fy(0), facecolor=PALETTE[c],
                           linewidth=0))
    else:
        draw(Line2D([fx(i) for i in range(n)], [fy(v) for v in spec.values], color=PALETTE[spec.colours[0]],
                    marker="o", markersize=3.5, linewidth=1.5))
    draw(Line2D([left, right], [bottom, bottom], color="black", linewidth=0.8))
    for i, label in enumerate(spec.labels):
        draw(Line2D([fx(i)] * 2, [bottom - tick, bottom], color="black", linewidth=0.8))
        if slant:
            draw(Text(fx(i), bottom - pad, label, ha="right", va="top", rotation=45, rotation_mode="anchor",
                      fontsize=TICK_PT))
        else:
            draw(Text(fx(i), bottom - pad, label, ha="center", va="top", fontsize=TICK_PT))
    if spec.value_labels:
        for i, v in enumerate(spec.values):
            neighbours = spec.values[max(i - 1, 0):i] + spec.values[i + 1:i + 2]
            below = spec.kind == "line" and v < min(neighbours)
            y = v - 5 if below else v + (2 if spec.kind == "bar" else 4)
            draw(Text(fx(i), fy(y), str(v), ha="center", va="top" if below else "bottom", fontsize=VALUE_PT))
    if spec.title:
        draw(Text(0.5, 0.975, spec.title, ha="center", va="top", fontsize=TITLE_PT, weight="bold"))
    boxes += figure_text_boxes(fig, image_px, texts)
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    if image.size != (image_px, image_px):
        image = image.resize((image_px, image_px), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), boxes
