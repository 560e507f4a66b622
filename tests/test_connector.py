"""The three connectors behind one interface: token counts, gradients, and the processor's agreement."""
from __future__ import annotations

import pytest
import torch

from conftest import make_records, tiny_config
from molmini import tokenizer as T
from molmini.connector import CONNECTORS, AttentionPool2x2, PixelShuffleLinear, _windows_2x2
from molmini.model import MolminiModel


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
@pytest.mark.parametrize("grid", [3, 4])
def test_each_connector_gives_its_token_count_and_trains(kind, grid):
    torch.manual_seed(0)
    conn = CONNECTORS[kind](in_dim=16, out_dim=24)
    feats = torch.randn(2, grid * grid, 16, requires_grad=True)
    out = conn(feats, grid)
    assert out.shape == (2, conn.pooled_grid(grid) ** 2, 24)
    out.square().mean().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn.parameters())


def test_windows_are_the_2x2_neighbourhoods():
    grid = 4
    feats = torch.arange(grid * grid, dtype=torch.float32).view(1, grid * grid, 1)
    windows = _windows_2x2(feats, grid)
    assert windows[0, 0, :, 0].tolist() == [0, 1, 4, 5]
    assert windows[0, 3, :, 0].tolist() == [10, 11, 14, 15]


def test_attention_pool_gives_identical_windows_identical_tokens():
    pool = AttentionPool2x2(8, 8)
    same = torch.randn(1, 1, 8).expand(1, 16, 8)
    windows = _windows_2x2(same, 4).reshape(4, 4, 8)
    pooled, _ = pool.attn(windows.mean(1, keepdim=True), windows, windows)
    # attention over four equal keys/values returns the value projection of that one vector
    torch.testing.assert_close(pooled, pooled[:1].expand_as(pooled))


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
def test_processor_emits_as_many_placeholders_as_the_connector_gives_features(kind, tokenizer):
    cfg = tiny_config(f"model.connector.kind={kind}").model
    model = MolminiModel(cfg, tokenizer)
    batch = model.processor.collate([model.processor.process_record(r) for r in make_records(2)])
    n_placeholders = int((batch["input_ids"][0] == model.token_ids[T.IMAGE_PATCH]).sum())
    assert n_placeholders == model.image_features(batch["pixel_values"]).shape[1]
    out = model(**batch)
    out["loss"].backward()
    assert all(p.grad is not None for n, p in model.connector.named_parameters())


def test_unknown_connector_kind_names_the_choices(tokenizer):
    with pytest.raises(ValueError, match="attention_pool_2x2"):
        MolminiModel(tiny_config("model.connector.kind=qformer").model, tokenizer)


def test_pixel_shuffle_keeps_every_patch_value():
    conn = PixelShuffleLinear(2, 8)
    feats = torch.randn(1, 16, 2)
    flat = _windows_2x2(feats, 4).flatten(2)
    assert sorted(flat.flatten().tolist()) == sorted(feats.flatten().tolist())
    assert conn(feats, 4).shape == (1, 4, 8)
