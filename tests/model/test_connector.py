"""The three connectors behind one interface: token counts, gradients, and the processor's agreement."""
from __future__ import annotations

import pytest
import torch

from molmini.data.crops import pool_windows
from molmini.data.tokenizer import IMAGE_PATCH
from molmini.model.connector import CONNECTORS, AttentionPool2x2, PixelShuffleLinear
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
@pytest.mark.parametrize("grid", [3, 4])
def test_each_connector_gives_one_token_per_window_and_trains(kind, grid):
    torch.manual_seed(0)
    conn = CONNECTORS[kind](in_dim=16, out_dim=24)
    feats = torch.randn(2 * grid * grid, 16, requires_grad=True)
    index = torch.cat([pool_windows(torch.arange(grid * grid).view(grid, grid) + k * grid * grid, conn.pool)
                       for k in range(2)])
    out = conn(feats[index.clamp(min=0)], index >= 0)
    pooled = -(-grid // conn.pool)
    assert out.shape == (2 * pooled * pooled, 24)
    out.square().mean().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conn.parameters())


def test_windows_are_the_2x2_neighbourhoods_and_odd_edges_are_marked():
    windows = pool_windows(torch.arange(16).view(4, 4), 2)
    assert windows[0].tolist() == [0, 1, 4, 5]
    assert windows[3].tolist() == [10, 11, 14, 15]
    odd = pool_windows(torch.arange(9).view(3, 3), 2)
    assert odd.tolist() == [[0, 1, 3, 4], [2, -1, 5, -1], [6, 7, -1, -1], [8, -1, -1, -1]]
    assert pool_windows(torch.arange(6).view(2, 3), 1).flatten().tolist() == list(range(6))


def test_attention_pool_ignores_positions_past_the_edge():
    torch.manual_seed(0)
    pool = AttentionPool2x2(8, 8)
    window = torch.randn(1, 4, 8)
    valid = torch.tensor([[True, False, True, False]])
    garbage = window.clone()
    garbage[:, [1, 3]] = 100.0
    torch.testing.assert_close(pool(window, valid), pool(garbage, valid))
    # a window holding only its valid patches gives the same token
    torch.testing.assert_close(pool(window, valid), pool(window[:, [0, 2]], valid[:, [0, 2]]))


def test_attention_pool_gives_identical_windows_identical_tokens():
    pool = AttentionPool2x2(8, 8)
    same = torch.randn(1, 1, 8).expand(3, 4, 8)
    out = pool(same, torch.ones(3, 4, dtype=torch.bool))
    torch.testing.assert_close(out, out[:1].expand_as(out))


@pytest.mark.parametrize("kind", sorted(CONNECTORS))
@pytest.mark.parametrize("crops", [0, 3])
def test_processor_emits_as_many_placeholders_as_the_connector_gives_features(kind, crops, tokenizer):
    cfg = tiny_config(f"model.connector.kind={kind}", f"model.image.max_crops={crops}").model
    model = MolminiModel(cfg, tokenizer)
    batch = model.processor.collate([model.processor.process_record(r) for r in make_records(2)])
    n_placeholders = int((batch["input_ids"] == model.token_ids[IMAGE_PATCH]).sum())
    assert n_placeholders == model.image_features(batch["pixel_values"], batch["pad_fraction"],
                                                  batch["pool_index"]).shape[0]
    out = model(**batch)
    out["loss"].backward()
    assert all(p.grad is not None for n, p in model.connector.named_parameters())


def test_unknown_connector_kind_names_the_choices(tokenizer):
    with pytest.raises(ValueError, match="attention_pool_2x2"):
        MolminiModel(tiny_config("model.connector.kind=qformer").model, tokenizer)


def test_pixel_shuffle_keeps_every_patch_value():
    conn = PixelShuffleLinear(2, 8)
    feats = torch.randn(16, 2)
    index = pool_windows(torch.arange(16).view(4, 4), 2)
    flat = feats[index].flatten(1)
    assert sorted(flat.flatten().tolist()) == sorted(feats.flatten().tolist())
    assert conn(feats[index], index >= 0).shape == (4, 8)


def test_an_option_the_connector_would_ignore_is_refused():
    from molmini.config import ConnectorConfig
    from molmini.model.connector import build_connector
    with pytest.raises(ValueError, match=r"mlp_hidden=64 has no effect on the pixel_shuffle connector"):
        build_connector(ConnectorConfig(kind="pixel_shuffle", mlp_hidden=64), 32, 48)
    def size(kind, hidden):
        return sum(p.numel() for p in build_connector(ConnectorConfig(kind=kind, mlp_hidden=hidden), 32, 48).parameters())
    for kind in ("attention_pool_2x2", "mlp"):  # these use it: their MLP's width changes with it
        assert size(kind, 64) != size(kind, 0)


def test_collate_refuses_a_batch_whose_placeholders_and_image_features_disagree(tokenizer):
    model = MolminiModel(tiny_config().model, tokenizer)
    sample = model.processor.process_record(make_records(1)[0])
    patch = model.token_ids[IMAGE_PATCH]
    cut = dict(sample, input_ids=[t for i, t in enumerate(sample["input_ids"])
                                  if not (t == patch and i == sample["input_ids"].index(patch))])
    cut["labels"] = sample["labels"][:len(cut["input_ids"])]
    with pytest.raises(ValueError, match=r"image placeholder tokens but its images give \d+ features"):
        model.processor.collate([cut])
    model.processor.collate([sample])  # the processor's own sample passes
