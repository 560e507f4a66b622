"""Convolutional towers from open_clip (timm's ConvNeXt, as CLIP ConvNeXt and molmini-convnext): the chosen
stage's feature map becomes the patch grid, so crops, pad marks, every connector and the reading loss work
as with a ViT."""
from __future__ import annotations

import pytest
import torch

from molmini.config import VisionConfig
from molmini.model.vision import VisionTower
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config

CONVNEXT = ["model.vision.model_name=molmini-convnext", "model.vision.vision_cfg={image_size: 64}",
            "model.vision.feature_layers=[-2]"]


def test_the_stage_map_is_the_patch_grid_row_major():
    tower = VisionTower(VisionConfig(model_name="molmini-convnext", vision_cfg={"image_size": 64}, feature_layers=[-2]))
    assert (tower.patch_size, tower.image_size, tower.output_dim) == (16, 64, 160)
    x = torch.randn(2, 3, 64, 64)
    feats = tower(x)
    assert feats.shape == (2, 16, 160)
    maps = tower.visual.trunk.forward_intermediates(x, indices=tower.layers, intermediates_only=True)
    assert torch.equal(feats[:, 5], maps[-1][:, :, 1, 1])  # patch 5 of a 4x4 grid is row 1, column 1
    with torch.no_grad():  # a patch far from a changed corner keeps nearly its features: the grid is spatial
        y = x.clone()
        y[:, :, :16, :16] += 3
        moved = (tower(y) - feats).abs().mean(-1)
    assert moved[:, 0].min() > moved[:, 15].max()
    assert not any(n.startswith("trunk.stages.3") for n, _ in tower.visual.named_parameters())  # pruned


def test_stages_of_two_strides_are_refused_by_name():
    with pytest.raises(ValueError, match="share one stride"):
        VisionTower(VisionConfig(model_name="molmini-convnext", feature_layers=[-1, -2]))
    with pytest.raises(ValueError, match="conv_stem is for ViT towers"):
        VisionTower(VisionConfig(model_name="molmini-convnext", feature_layers=[-2], conv_stem=[16]))


@pytest.mark.parametrize("connector", ["attention_pool_2x2", "pixel_shuffle", "mlp"])
def test_a_convnext_model_trains_through_crops_with_every_connector(tokenizer, connector):
    torch.manual_seed(0)
    cfg = tiny_config(*CONVNEXT, f"model.connector.kind={connector}", "model.image.max_crops=4",
                      "model.reading.weight=0.5")
    model = MolminiModel(cfg.model, tokenizer).train()
    records = make_records(4)
    batch = model.processor.collate([model.processor.process_record(r) for r in records])
    batch.pop("keys")
    assert batch["pixel_values"].shape[0] > len(records)  # crops beside the global views
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        out = model(**batch, return_logits=False)
        (out["loss_sum"] / out["num_loss_tokens"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out["loss_sum"].item() / out["num_loss_tokens"].item())
    assert losses[-1] < losses[0]
    model.enable_gradient_checkpointing()  # the tower's stages and the LM's blocks
    assert all(stage.grad_checkpointing for stage in model.vision.visual.trunk.stages)
