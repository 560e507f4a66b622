"""The levers of the from-scratch recipe (experiments/recipe_study.py): single-digit number tokens and a
convolutional stem in front of the ViT."""
from __future__ import annotations

import pytest
import torch

from molmini.config import VisionConfig
from molmini.data.tokenizer import train_bpe_tokenizer
from molmini.model.vision import ConvStem, VisionTower
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config

NUMBERS = [f"The value of North is {v}. South {v + 1}, East {v + 7}." for v in range(5, 96)] * 3


def test_split_digits_writes_numbers_digit_by_digit_and_decodes_them_back():
    merged = train_bpe_tokenizer(NUMBERS, vocab_size=400)
    split = train_bpe_tokenizer(NUMBERS, vocab_size=400, split_digits=True)
    text = "North 42, South 87"
    # Trained on these numbers, plain BPE merges them into whole-number tokens; split keeps digits apart.
    assert "Ġ42" in merged.tokenize(text)
    assert [t for t in split.tokenize(text) if any(c.isdigit() for c in t)] == ["4", "2", "8", "7"]
    assert split.decode(split(text)["input_ids"]) == text
    # Only ten digit tokens (plus their merges with neighbouring non-digits, none here) carry numbers.
    digit_tokens = [t for t in split.get_vocab() if any(c.isdigit() for c in t)]
    assert all(len(t.strip("Ġ")) == 1 for t in digit_tokens)


def test_split_digits_survives_save_and_load(tmp_path):
    split = train_bpe_tokenizer(NUMBERS, vocab_size=400, split_digits=True)
    split.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.tokenize("value 63") == split.tokenize("value 63")
    assert "6" in loaded.tokenize("value 63")


def tower_cfg(**kw) -> VisionConfig:
    return VisionConfig(vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
                        **kw)


def test_conv_stem_gives_the_patch_grid_of_the_patch_embedding_it_replaces():
    plain, stem = VisionTower(tower_cfg()), VisionTower(tower_cfg(conv_stem=[8, 16]))
    assert isinstance(stem.visual.conv1, ConvStem) and not isinstance(plain.visual.conv1, ConvStem)
    x = torch.randn(2, 3, 32, 32)
    assert stem(x).shape == plain(x).shape == (2, 16, 64)
    # Each output patch sees only its own 8x8 pixels plus the 3x3 kernels' one-pixel halo: changing a
    # pixel far from patch 0 leaves patch 0's stem features unchanged.
    y = x.clone()
    y[:, :, 20:, 20:] += 1
    with torch.no_grad():
        a, b = stem.visual.conv1(x), stem.visual.conv1(y)
    assert torch.equal(a[..., 0, 0], b[..., 0, 0]) and not torch.equal(a[..., 3, 3], b[..., 3, 3])


def test_conv_stem_rejects_what_it_cannot_replace():
    with pytest.raises(ValueError, match="more than the patch size"):
        VisionTower(tower_cfg(conv_stem=[8, 8, 8, 8]))
    with pytest.raises(ValueError, match="pretrained"):
        VisionTower(tower_cfg(conv_stem=[8], pretrained="weights.safetensors"))


def test_a_model_with_both_levers_trains_saves_and_reloads_to_identical_logits(tmp_path):
    cfg = tiny_config("model.vision.conv_stem=[8,16]", "model.tokenizer.split_digits=true")
    records = make_records(8)
    tok = train_bpe_tokenizer([m["content"] for r in records for m in r.messages], 300, split_digits=True)
    torch.manual_seed(0)
    model = MolminiModel(cfg.model, tok).train()
    batch = model.processor.collate([model.processor.process_record(r, r.messages) for r in records])
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch)["loss"]
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] * 0.8
    model.eval().save_pretrained(tmp_path / "ckpt")
    loaded = MolminiModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded.vision.visual.conv1, ConvStem)
    with torch.no_grad():
        assert torch.equal(model(**batch)["logits"], loaded(**batch)["logits"])
