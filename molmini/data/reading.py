"""The reading loss's targets: what the renderer drew in each patch the tower sees.

A synthetic record says what it drew where (``meta["text_boxes"]``, molmini/data/records.py). Each box's
text is tokenized with the run's own tokenizer, and its tokens are laid along the text's line (left to
right, or up the slope of slanted text): token k of K sits at the point (k + 1/2) / K of the way along.
Every point is mapped through the crops (the global view and each crop of the grid, molmini/data/crops.py's
placements) onto their patch grids, so the patch that sees a token's ink is told which token it is. A
patch that holds no token's point is told "no text" (the tokenizer's pad id); a patch that is all
padding is left out (the loss's ignore index). Where two points fall in one patch, the first text drawn keeps it.

The model's reading head predicts these per patch (molmini/model/reading.py); they exist only when
model.reading.weight > 0, so a run without the reading loss computes none of this.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from molmini.data.crops import TiledImage


def token_points(box: Sequence[float], angle: float, count: int) -> list[tuple[float, float]]:
    """`count` points (x, y) along a text's line inside its upright `box` [x0, y0, x1, y1]: the horizontal
    midline for level text; for text slanted by `angle` degrees (counter-clockwise), the diagonal it climbs."""
    x0, y0, x1, y1 = box
    if abs(math.sin(math.radians(angle))) < 0.2:
        start, end = (x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)
    elif math.sin(math.radians(angle)) * math.cos(math.radians(angle)) > 0:  # rising to the right
        start, end = (x0, y1), (x1, y0)
    else:  # falling to the right (or read downward)
        start, end = (x0, y0), (x1, y1)
    return [(start[0] + (end[0] - start[0]) * (k + 0.5) / count, start[1] + (end[1] - start[1]) * (k + 0.5) / count)
            for k in range(count)]


def read_targets(tiled: TiledImage, boxes: Sequence[dict[str, Any]], tokenize: Callable[[str], list[int]],
                 no_text: int, ignore_index: int, image_size: int, patch_size: int) -> torch.Tensor:
    """long [N crops, g*g]: the token each patch of each crop sees, `no_text` where it sees none, and
    `ignore_index` on patches that are all padding."""
    g = image_size // patch_size
    targets = torch.full((len(tiled.placements), g * g), no_text, dtype=torch.long)
    taken = torch.zeros_like(targets, dtype=torch.bool)
    for entry in boxes:
        tokens = tokenize(entry["text"])
        if not tokens:
            continue
        for token, (x, y) in zip(tokens, token_points(entry["box"], entry.get("angle", 0.0), len(tokens))):
            for n, (sy, sx, dy, dx) in enumerate(tiled.placements):
                cy, cx = y * sy + dy, x * sx + dx
                if 0 <= cy < image_size and 0 <= cx < image_size:
                    patch = int(cy // patch_size) * g + int(cx // patch_size)
                    if not taken[n, patch]:
                        targets[n, patch], taken[n, patch] = token, True
    targets[tiled.pad_fraction >= 1] = ignore_index
    return targets
