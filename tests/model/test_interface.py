"""One interface for the two model kinds (molmini/model/interface.py): molmini's own model and a transformers
VLM both implement VisionLanguageModel, so the stages, the loop's rebuild and evaluation use them alike."""
from __future__ import annotations

import torch

from molmini.config import COMPONENTS
from molmini.model.interface import VisionLanguageModel, load_trained
from molmini.model.transformers_vlm import HFVisionLanguageModel
from molmini.model.vlm import MolminiModel
from molmini.train.loop import rebuild_for_stage
from tests.helpers import make_records, tiny_config
from tests.helpers.hf_tiny_vlms import save_tiny_vlm


def test_both_kinds_implement_the_interface_and_map_every_parameter(tiny_model, tmp_path):
    hf = HFVisionLanguageModel.from_pretrained(str(save_tiny_vlm("qwen2_vl", tmp_path / "qwen")))
    for model, family in ((tiny_model, "molmini"), (hf, "transformers")):
        assert isinstance(model, VisionLanguageModel) and model.family == family
        owners = {model.component_of(name) for name, _ in model.named_parameters()}
        assert owners == set(COMPONENTS)
    assert MolminiModel.component_of("pad_embed") == "connector"
    assert not isinstance(torch.nn.Linear(2, 2), VisionLanguageModel)


def test_rebuild_gives_the_architecture_and_a_stage_s_lora_so_gathered_weights_load(tiny_model):
    cfg = tiny_config("train.lora.r=4", "train.lora.alpha=8")
    tiny_model.apply_lora(4, 8, 0.0, list(cfg.train.lora.target_modules))
    fresh = rebuild_for_stage(tiny_model, cfg)
    assert type(fresh) is MolminiModel and fresh is not tiny_model
    assert fresh.state_dict().keys() == tiny_model.state_dict().keys()
    fresh.load_state_dict(tiny_model.state_dict())
    fresh.merge_lora()
    tiny_model.merge_lora()
    batch = tiny_model.processor.collate([tiny_model.processor.process_record(r) for r in make_records(2)])
    batch.pop("keys")
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**batch)["logits"], tiny_model.eval()(**batch)["logits"])


def test_load_trained_tells_the_kinds_apart_by_their_folders(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "molmini")
    assert type(load_trained(tmp_path / "molmini")) is MolminiModel
    hf_folder = save_tiny_vlm("qwen2_vl", tmp_path / "qwen")
    loaded = load_trained(hf_folder, max_length=64)
    assert type(loaded) is HFVisionLanguageModel and loaded.processor.max_length == 64
