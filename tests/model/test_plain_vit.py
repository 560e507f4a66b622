"""open_clip's ViT in plain torch (molmini/model/plain_vit.py), the tower a self-contained checkpoint runs: built
from `plain_tower_spec` of molmini's open_clip tower, it takes that tower's state dict key for key and gives
exactly its patch features, for the tower options molmini's presets use; towers it cannot rebuild say why."""
from __future__ import annotations

import pytest
import torch

from molmini.config import VisionConfig
from molmini.model.plain_vit import PlainVisionTower
from molmini.model.vision import VisionTower, plain_tower_spec

TINY = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32}


@pytest.mark.parametrize("cfg", [
    VisionConfig(vision_cfg=TINY),
    VisionConfig(vision_cfg=TINY, feature_layers=[-3, -1]),  # several layers, concatenated
    VisionConfig(vision_cfg=TINY, conv_stem=[8, 16]),  # molmini's conv stem in place of conv1
    VisionConfig(vision_cfg={**TINY, "ls_init_value": 0.5, "no_ln_pre": True}),  # layer scale, no ln_pre
    VisionConfig(model_name="ViT-B-32-quickgelu", vision_cfg=TINY),  # OpenAI CLIP's activation
], ids=["plain", "two-layers", "conv-stem", "layer-scale", "quick-gelu"])
def test_the_plain_tower_loads_the_open_clip_state_dict_and_gives_the_same_features(cfg):
    torch.manual_seed(0)
    tower = VisionTower(cfg, load_pretrained=False).eval()
    spec, why_not = plain_tower_spec(tower)
    assert spec is not None, why_not
    plain = PlainVisionTower(**spec).eval()
    plain.load_state_dict(tower.state_dict(), strict=True)  # the same keys, and nothing more
    assert plain.output_dim == tower.output_dim
    x = torch.randn(3, 3, tower.image_size, tower.image_size)
    with torch.no_grad():
        assert torch.equal(plain(x), tower(x))


def test_a_timm_tower_has_no_plain_twin_and_says_why():
    tower = VisionTower(VisionConfig(model_name="molmini-convnext", vision_cfg={"image_size": 64},
                                     feature_layers=[-2]), load_pretrained=False)
    spec, why_not = plain_tower_spec(tower)
    assert spec is None and "not an open_clip VisionTransformer" in why_not
