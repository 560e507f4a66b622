"""A trained checkpoint loads without open_clip's "initialized randomly" warning (its weights come right
after the tower is built); a tower that really starts random says so, once, in molmini's own words."""
from __future__ import annotations

import logging

import torch

from molmini.model.vlm import MolminiModel


def test_loading_a_checkpoint_does_not_warn_of_random_weights(tiny_model, tmp_path, caplog):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    with caplog.at_level(logging.INFO):
        loaded = MolminiModel.from_pretrained(tmp_path / "ckpt")
    assert not [r for r in caplog.records if "random" in r.getMessage().lower()], caplog.text
    key = "vision.visual.conv1.weight"
    assert torch.equal(loaded.state_dict()[key], tiny_model.state_dict()[key])


def test_a_from_scratch_tower_says_it_is_random(tokenizer, model_config, caplog):
    with caplog.at_level(logging.INFO):
        MolminiModel(model_config, tokenizer)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "initialized randomly" in m]  # open_clip's line, which names no fix
    assert len([m for m in messages if "starts from random weights" in m and "model.vision.pretrained" in m]) == 1
