"""Multi-crop: the kept patches tile the image exactly once, and the processor's image tokens match the
model's features for 1, 4 and 12 crops, tiny and huge images and extreme aspect ratios."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from molmini.data.crops import resize_and_pad, select_tiling, tile_image
from molmini.data.tokenizer import IMAGE_END, IMAGE_PATCH, IMAGE_ROW_END, IMAGE_START
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config

SIZES = [(16, 16), (37, 251), (251, 37), (300, 200), (4000, 16), (16, 4000), (1000, 1000)]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("max_crops", [1, 4, 12])
@pytest.mark.parametrize("grid,margin", [(8, 2), (7, 1), (6, 0)])
def test_kept_patches_cover_every_pixel_of_the_resized_image_exactly_once(size, max_crops, grid, margin):
    patch = 4
    image = noise(*size)
    tiled = tile_image(image, grid * patch, patch, max_crops, margin, fill=(1, 2, 3))
    rows, cols = tiled.tiling
    assert 1 <= rows * cols <= max_crops and tiled.crops.shape[0] == 1 + rows * cols
    kept = tiled.views[1]
    assert kept.unique().numel() == kept.numel()  # no patch kept twice
    # put every kept patch's pixels where the index grid says it goes: that must rebuild the whole canvas
    patches = tiled.crops.view(-1, 3, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, patch, patch)
    rebuilt = patches[kept.flatten()].view(*kept.shape, 3, patch, patch).permute(0, 3, 1, 4, 2)
    rebuilt = rebuilt.reshape(kept.shape[0] * patch, kept.shape[1] * patch, 3)
    canvas, _ = resize_and_pad(image.convert("RGB"), *tiled.canvas_size, fill=(1, 2, 3))
    assert torch.equal(rebuilt, canvas.permute(1, 2, 0))
    # and the global view is the whole image, aspect ratio kept
    glob, _ = resize_and_pad(image, grid * patch, grid * patch, fill=(1, 2, 3))
    assert torch.equal(tiled.crops[0], glob)


@pytest.mark.parametrize("size", [(1024, 768), (300, 900), (33, 47)])
def test_the_uint8_resize_is_close_to_pil_and_the_padding_exact(size):
    """torch's antialiased bicubic on uint8 against PIL's bicubic; the per-patch padding computed from the
    placed rectangle equals the mean of a pixel mask."""
    image = noise(*size).filter(ImageFilter.GaussianBlur(2))  # smooth content, as images are
    canvas, (top, left, h, w) = resize_and_pad(image, 224, 336, fill=(0, 0, 0))
    ours = canvas[:, top:top + h, left:left + w].permute(1, 2, 0).numpy().astype(int)
    pil = np.asarray(image.resize((w, h), Image.BICUBIC)).astype(int)
    assert np.abs(ours - pil).mean() < 1.5 and np.percentile(np.abs(ours - pil), 99) <= 6
    mask = torch.zeros(224, 336)
    mask[top:top + h, left:left + w] = 1
    tiled = tile_image(image, 56, 8, 4, 1)
    assert tiled.pad_fraction.shape == (tiled.crops.shape[0], 49)
    from molmini.data.crops import _patch_padding
    expected = 1 - mask[8:64, 16:72].reshape(7, 8, 7, 8).mean(dim=(1, 3)).reshape(-1)
    assert torch.allclose(_patch_padding((top, left, h, w), 8, 16, 56, 8), expected)


def test_tiling_needs_the_least_rescaling():
    window = 100
    assert select_tiling(50, 50, window, 12) == (1, 1)  # small: one crop, upscaled least
    assert select_tiling(180, 390, window, 12) == (2, 4)  # fits in 2x4 windows without shrinking
    assert select_tiling(100, 1200, window, 12) == (1, 12)
    # too big for any grid: shrink least; 3x4 shrinks a square no less than 3x3, so the fewer crops win
    assert select_tiling(5000, 5000, window, 12) == (3, 3)
    assert select_tiling(5000, 6000, window, 12) == (3, 4)
    assert select_tiling(5000, 5000, window, 4) == (2, 2)
    for h, w in [(10, 3000), (3000, 10), (777, 333)]:
        rows, cols = select_tiling(h, w, window, 12)
        assert rows * cols <= 12


def test_padding_is_marked_per_patch():
    image = Image.new("RGB", (64, 16), "red")  # 4:1, letterboxed top and bottom in the square global view
    tiled = tile_image(image, 32, 4, 0, 0)
    pad = tiled.pad_fraction[0].view(8, 8)
    assert (pad[0] == 1).all() and (pad[-1] == 1).all()  # whole rows of padding
    partial = tile_image(Image.new("RGB", (64, 18), "red"), 32, 4, 0, 0).pad_fraction[0].view(8, 8)
    assert torch.allclose(partial[2], torch.tensor(0.75))  # image rows 11..19 of 32: patch row 2 is 3/4 padding
    assert (pad[3:5] == 0).all()  # the middle rows are image
    assert tiled.crops[0, :, 0, 0].tolist() == [0, 0, 0] and tiled.crops[0, :, 16, 16].tolist() == [255, 0, 0]


@pytest.mark.parametrize("connector", ["attention_pool_2x2", "pixel_shuffle", "mlp"])
@pytest.mark.parametrize("max_crops", [1, 4, 12])
def test_image_tokens_equal_model_features_for_any_shape(connector, max_crops, tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(f"model.connector.kind={connector}", f"model.image.max_crops={max_crops}",
                      "model.vision.vision_cfg={image_size: 24, patch_size: 4, width: 32, layers: 1, head_width: 16}")
    model = MolminiModel(cfg.model, tokenizer, max_length=4096).eval()
    proc = model.processor
    images = [noise(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    batch = proc.prompt_batch(images, ["What colour are the bars?"] * len(images))
    placeholders = (batch["input_ids"] == model.token_ids[IMAGE_PATCH]).sum(1)
    counts = [proc.process_image(im)["image_tokens"].count(model.token_ids[IMAGE_PATCH]) for im in images]
    assert placeholders.tolist() == counts
    feats = model.image_features(batch["pixel_values"], batch["pad_fraction"], batch["pool_index"])
    assert feats.shape[0] == sum(counts)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "keys"})
    assert torch.isfinite(out["logits"]).all()
    # more crops for a big image: more tokens, never more crops than asked for
    big = proc.process_image(noise(1000, 1000))
    assert big["pixel_values"].shape[0] <= 1 + max_crops


def test_row_ends_and_view_markers_lay_out_the_grid(tokenizer):
    cfg = tiny_config("model.image.max_crops=4")
    model = MolminiModel(cfg.model, tokenizer)
    ids = model.token_ids
    tokens = model.processor.process_image(noise(80, 40))["image_tokens"]
    assert tokens.count(ids[IMAGE_START]) == 2 and tokens.count(ids[IMAGE_END]) == 2  # global + crops
    first_view = tokens[1:tokens.index(ids[IMAGE_END])]
    rows = [len(r) for r in _split(first_view, ids[IMAGE_ROW_END])]
    assert len(set(rows)) == 1 and len(rows) == rows[0]  # the square global view: g x g pooled patches
    crop_view = tokens[tokens.index(ids[IMAGE_END]) + 2:-1]
    crop_rows = [len(r) for r in _split(crop_view, ids[IMAGE_ROW_END])]
    assert len(set(crop_rows)) == 1 and crop_rows[0] > len(crop_rows)  # a wide image: wider than tall


def _split(tokens, sep):
    rows, row = [], []
    for t in tokens:
        if t == sep:
            rows.append(row)
            row = []
        else:
            row.append(t)
    return rows


def test_several_images_in_one_prompt(tokenizer):
    torch.manual_seed(0)
    model = MolminiModel(tiny_config("model.image.max_crops=2").model, tokenizer).eval()
    a, b = make_records(2)
    prompt = "<image> and <image>: which has more bars?"
    sample = model.processor.process_prompt([a.load_image(), b.load_image()], prompt)
    assert (torch.tensor(sample["input_ids"]) == model.token_ids[IMAGE_START]).sum() == 2 * 2
    batch = model.processor.collate([sample, model.processor.process_prompt(a.load_image(), "How many bars?")],
                                    padding_side="left")
    assert model.generate_ids(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values",
                                                       "pad_fraction", "pool_index")}, max_new_tokens=2).shape[0] == 2
    with pytest.raises(Exception, match="markers"):
        model.processor.process_prompt([a.load_image()], prompt)
