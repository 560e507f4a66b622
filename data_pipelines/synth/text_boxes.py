"""What a renderer drew where: each piece of text a synthetic image shows, as its string and its box in image
pixels, recorded by the renderer itself while it draws (matplotlib's own text extents, PIL's own text
boxes), never guessed afterwards.

A record keeps them in ``meta["text_boxes"]``: a list of ``{"text": str, "box": [x0, y0, x1, y1]}`` with
the origin at the image's top-left corner, x to the right and y down, x0 <= x1 and y0 <= y1, inside the
image; slanted text adds ``"angle"`` (degrees, counter-clockwise) and its box is the upright box around
the slanted text. The record reader checks the shape (molmini/data/records.py); the tower's reading loss
is built from it (molmini/data/reading.py).
"""
from __future__ import annotations

from typing import Any, Iterable


def box_entry(text: str, x0: float, y0: float, x1: float, y1: float, width: int, height: int,
              angle: float = 0.0) -> dict[str, Any] | None:
    """One entry, clipped to the image; None for empty text or a box wholly outside it."""
    text = text.strip()
    x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
    y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
    if not text or x1 <= x0 or y1 <= y0:
        return None
    entry: dict[str, Any] = {"text": text, "box": [round(float(v), 1) for v in (x0, y0, x1, y1)]}
    if round(angle, 1) % 360:
        entry["angle"] = round(float(angle), 1)
    return entry


def figure_text_boxes(fig, image_px: int | tuple[int, int], texts: Iterable[Any] | None = None
                      ) -> list[dict[str, Any]]:
    """The text a drawn matplotlib figure shows (every visible Text artist in it, or `texts`), in the pixels
    of the image it becomes: image_px square, or (width, height). Call after the figure is drawn.

    Only text that left ink counts: an axis keeps tick labels for ticks outside its view, visible but never
    drawn. Mathtext (a log axis's ``$10^{3}$``) is left out: its source is not the text the image shows."""
    import numpy as np
    from matplotlib.text import Text
    out_w, out_h = (image_px, image_px) if isinstance(image_px, int) else image_px
    renderer = fig.canvas.get_renderer()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.int16)
    width, height = fig.bbox.width, fig.bbox.height
    sx, sy = out_w / width, out_h / height
    out = []
    for t in texts if texts is not None else fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or "$" in t.get_text():
            continue
        bb = t.get_window_extent(renderer)  # display pixels, origin bottom-left
        rows = slice(max(0, int(height - bb.y1)), max(0, int(np.ceil(height - bb.y0))))
        cols = slice(max(0, int(bb.x0)), max(0, int(np.ceil(bb.x1))))
        region = pixels[rows, cols].reshape(-1, 3)
        if not len(region) or (region.max(0) - region.min(0)).max() < 48:
            continue  # nothing drawn there
        entry = box_entry(t.get_text(), bb.x0 * sx, (height - bb.y1) * sy, bb.x1 * sx, (height - bb.y0) * sy,
                          out_w, out_h, t.get_rotation())
        if entry is not None:
            out.append(entry)
    return out


class PilTextBoxes:
    """Records each `ImageDraw.text` call's box (PIL's own `textbbox`) as the renderer makes it; `scaled`
    maps them onto the image the drawing is resized to."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.entries: list[dict[str, Any]] = []

    def text(self, draw, xy, text: str, font, **kwargs: Any) -> None:
        """Draw `text` as `draw.text(xy, text, font=font, **kwargs)` does, and record its box. One line at a
        time: a box per line is what the reading loss needs."""
        if "\n" in text:
            raise ValueError(f"draw {text!r} one line at a time, so that each line gets its own box")
        draw.text(xy, text, font=font, **kwargs)
        x0, y0, x1, y1 = draw.textbbox(xy, text, font=font, anchor=kwargs.get("anchor"))
        entry = box_entry(text, x0, y0, x1, y1, self.width, self.height)
        if entry is not None:
            self.entries.append(entry)

    def scaled(self, width: int, height: int) -> list[dict[str, Any]]:
        """The boxes on the drawing resized to width x height."""
        return moved(self.entries, width / self.width, height / self.height, 0, 0, width, height)


def moved(boxes: list[dict[str, Any]], sx: float, sy: float, dx: float, dy: float, width: int, height: int
          ) -> list[dict[str, Any]]:
    """`boxes` scaled by (sx, sy), then shifted by (dx, dy), on an image width x height (clipped to it)."""
    out = []
    for e in boxes:
        x0, y0, x1, y1 = e["box"]
        entry = box_entry(e["text"], x0 * sx + dx, y0 * sy + dy, x1 * sx + dx, y1 * sy + dy, width, height,
                          e.get("angle", 0.0))
        if entry is not None:
            out.append(entry)
    return out


def rotated(boxes: list[dict[str, Any]], degrees: float, width: int, height: int) -> list[dict[str, Any]]:
    """The boxes on an image that PIL's `rotate(degrees)` turned about its centre (counter-clockwise on
    screen, the canvas kept): each box becomes the upright box around its turned corners."""
    import math
    a = math.radians(degrees)
    cx, cy = width / 2, height / 2
    out = []
    for e in boxes:
        x0, y0, x1, y1 = e["box"]
        xs, ys = [], []
        for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
            # y points down, so a counter-clockwise turn on screen is (dx cos + dy sin, -dx sin + dy cos)
            xs.append(cx + (x - cx) * math.cos(a) + (y - cy) * math.sin(a))
            ys.append(cy - (x - cx) * math.sin(a) + (y - cy) * math.cos(a))
        entry = box_entry(e["text"], min(xs), min(ys), max(xs), max(ys), width, height, e.get("angle", 0.0) + degrees)
        if entry is not None:
            out.append(entry)
    return out

