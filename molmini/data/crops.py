"""Molmo's multi-crop ("overlap-and-resize"): a low-resolution global view of the whole image, then a grid
of crops at the tower's resolution chosen to need the least rescaling.

Neighbouring crops overlap by `margin` patches on each inner side. Each crop's margin patches see context
across the crop edge but their features are dropped: the patches that are kept tile the resized image
exactly once. The kept patches of each view are returned as an index grid into the flattened patch
features of all crops, so the model can gather them in one indexing operation and pool them 2x2 as if the
tower had seen the whole image at once.

Images keep their aspect ratio: they are resized to fit and padded with the tower's mean colour; the
fraction of every patch that is padding is returned so the model can mark padded patches with a learned
embedding.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class TiledImage:
    """One image cut for the tower."""
    crops: torch.Tensor  # uint8 [N, 3, S, S]; crop 0 is the global view
    pad_fraction: torch.Tensor  # float [N, g*g]: share of each patch that is padding (0 = all image)
    # One patch-index grid per view ([rows, cols] into the N*g*g flattened patch features): the global
    # view first, then the kept patches of the crop grid (absent when there are no crops).
    views: list[torch.Tensor] = field(default_factory=list)
    tiling: tuple[int, int] = (0, 0)  # rows, cols of crops
    canvas_size: tuple[int, int] = (0, 0)  # height, width of the resized image the crops were cut from
    # Where each crop's pixels come from: (scale_y, scale_x, shift_y, shift_x) maps a point (y, x) of the
    # original image to (y * scale_y + shift_y, x * scale_x + shift_x) in the crop (the reading targets' map).
    placements: list[tuple[float, float, float, float]] = field(default_factory=list)


def select_tiling(height: int, width: int, window: int, max_crops: int) -> tuple[int, int]:
    """Rows and columns of crops (rows * cols <= max_crops) whose kept windows hold the image with the least
    upscaling, or, when every grid must shrink it, the least downscaling; ties go to fewer crops."""
    best: tuple[float, int, tuple[int, int]] | None = None
    candidates = [(r, c) for r in range(1, max_crops + 1) for c in range(1, max_crops // r + 1)]
    scales = {rc: min(rc[0] * window / max(height, 1), rc[1] * window / max(width, 1)) for rc in candidates}
    fitting = {rc: s for rc, s in scales.items() if s >= 1.0}
    if fitting:  # the smallest upscale among grids that hold the whole image
        best = min((s, rc[0] * rc[1], rc) for rc, s in fitting.items())
    else:  # every grid shrinks the image: shrink it the least
        best = min((-s, rc[0] * rc[1], rc) for rc, s in scales.items())
    return best[2]


def as_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """An RGB image as a uint8 [3, H, W] tensor (a tensor given is taken as such: decoded by torchvision)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be uint8 [3, H, W], got {image.dtype} {list(image.shape)}")
        return image
    array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # convert() would copy
    with warnings.catch_warnings():  # read-only: the crops only ever read it (resizes and slices copy)
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).permute(2, 0, 1)


def resize_and_pad(image: Image.Image | torch.Tensor, height: int, width: int, fill: tuple[int, int, int]
                   ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The image resized to fit height x width with its aspect ratio kept, centred on a `fill` canvas;
    returns the uint8 canvas [3, H, W] and where the image lies on it (top, left, image height, width).

    The resize is torch's antialiased bicubic on uint8 (its vectorised CPU kernel, on the tensor's device),
    several times faster than PIL's and within a few levels of it."""
    pixels = as_uint8_tensor(image)
    h0, w0 = pixels.shape[1:]
    scale = min(height / h0, width / w0)
    new_w, new_h = max(1, min(width, round(w0 * scale))), max(1, min(height, round(h0 * scale)))
    if (new_w, new_h) != (w0, h0):
        pixels = F.interpolate(pixels.unsqueeze(0), size=(new_h, new_w), mode="bicubic", antialias=True)[0]
    canvas = torch.tensor(fill, dtype=torch.uint8, device=pixels.device).view(3, 1, 1).expand(3, height, width).clone()
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top:top + new_h, left:left + new_w] = pixels
    return canvas, (top, left, new_h, new_w)


def _coverage(start: int, length: int, size: int, patch: int) -> torch.Tensor:
    """Share of each patch of a 1-D run of `size` pixels that falls in [start, start + length)."""
    edges = torch.arange(0, size + 1, patch, dtype=torch.float64)
    lo, hi = edges[:-1].clamp(min=start, max=start + length), edges[1:].clamp(min=start, max=start + length)
    return (hi - lo) / patch


def _patch_padding(placed: tuple[int, int, int, int], y: int, x: int, size: int, patch: int) -> torch.Tensor:
    """The share of padding of each patch of the `size` px square at (y, x) of a canvas on which the image
    lies at `placed` (top, left, height, width); row-major [(size/patch)^2]. Exact, from the rectangle."""
    top, left, h, w = placed
    rows = _coverage(top - y, h, size, patch)
    cols = _coverage(left - x, w, size, patch)
    return (1.0 - torch.outer(rows, cols)).reshape(-1).float()


def tile_image(image: Image.Image | torch.Tensor, image_size: int, patch_size: int, max_crops: int, margin: int,
               fill: tuple[int, int, int] = (0, 0, 0)) -> TiledImage:
    """Cut `image` into the global view plus up to `max_crops` overlapping crops (none when max_crops=0)."""
    image = as_uint8_tensor(image)
    g = image_size // patch_size
    h0, w0 = image.shape[1:]
    glob, glob_placed = resize_and_pad(image, image_size, image_size, fill)
    crops = [glob]
    pads = [_patch_padding(glob_placed, 0, 0, image_size, patch_size)]
    views = [torch.arange(g * g).view(g, g)]
    placements = [_placement(glob_placed, h0, w0, 0, 0)]
    if max_crops <= 0:
        return _pack(crops, pads, views, (0, 0), (image_size, image_size), placements)

    window = g - 2 * margin  # kept patches per crop side, away from the image border
    if window <= 0:
        raise ValueError(f"overlap margin {margin} leaves no kept patches in a {g}-patch crop; use a margin "
                         f"below {g / 2:g} (model.image.overlap_margin)")
    margin_px, window_px = margin * patch_size, window * patch_size
    rows, cols = select_tiling(h0 - 2 * margin_px, w0 - 2 * margin_px, window_px, max_crops)
    height, width = rows * window_px + 2 * margin_px, cols * window_px + 2 * margin_px
    canvas, placed = resize_and_pad(image, height, width, fill)

    # index grid of the kept patches over the whole canvas: [rows*window + 2m, cols*window + 2m]
    kept = torch.empty(rows * window + 2 * margin, cols * window + 2 * margin, dtype=torch.long)
    for i in range(rows):
        for j in range(cols):
            y, x = i * window_px, j * window_px
            crops.append(canvas[:, y:y + image_size, x:x + image_size])
            pads.append(_patch_padding(placed, y, x, image_size, patch_size))
            placements.append(_placement(placed, h0, w0, y, x))
            first = (len(crops) - 1) * g * g
            # a crop keeps its margins only on the sides that are the image's border
            r0, r1 = (0 if i == 0 else margin), (g if i == rows - 1 else g - margin)
            c0, c1 = (0 if j == 0 else margin), (g if j == cols - 1 else g - margin)
            local = first + torch.arange(g * g).view(g, g)[r0:r1, c0:c1]
            kept[i * window + r0:i * window + r1, j * window + c0:j * window + c1] = local
    views.append(kept)
    return _pack(crops, pads, views, (rows, cols), (height, width), placements)


def _placement(placed: tuple[int, int, int, int], h0: int, w0: int, y: int, x: int
               ) -> tuple[float, float, float, float]:
    """The map from the original h0 x w0 image onto the crop at (y, x) of a canvas it lies on at `placed`."""
    top, left, h, w = placed
    return h / h0, w / w0, float(top - y), float(left - x)


def _pack(crops, pads, views, tiling, canvas_size, placements) -> TiledImage:
    return TiledImage(crops=torch.stack(crops), pad_fraction=torch.stack(pads), views=views, tiling=tiling,
                      canvas_size=canvas_size, placements=placements)


def pool_windows(view: torch.Tensor, pool: int) -> torch.Tensor:
    """[rows, cols] patch indices -> [ceil(rows/pool) * ceil(cols/pool), pool*pool] windows, row-major,
    -1 where a window passes the grid's edge (odd sizes)."""
    if pool == 1:
        return view.reshape(-1, 1)
    rows, cols = view.shape
    pr, pc = pooled_shape(view, pool)
    padded = torch.full((pr * pool, pc * pool), -1, dtype=torch.long)
    padded[:rows, :cols] = view
    return padded.view(pr, pool, pc, pool).permute(0, 2, 1, 3).reshape(pr * pc, pool * pool)


def pooled_shape(view: torch.Tensor, pool: int) -> tuple[int, int]:
    rows, cols = view.shape
    return -(-rows // pool), -(-cols // pool)
