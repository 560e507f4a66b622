"""Pretrained presets, offline: each preset's loading code runs on tiny backbones of the same kinds saved
to local files first; connectors train on both tower kinds; checkpoints reload to identical logits."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from molmini.config import load_config
from molmini.config.presets import PRESETS
from molmini.data.tokenizer import SPECIAL_TOKENS, build_tokenizer, special_token_ids
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config
from tests.helpers.backbones import TINY_TOWERS, stand_in_overrides


def build(overrides, **kw):
    cfg = load_config(None, overrides)
    tokenizer = build_tokenizer(cfg, [])
    torch.manual_seed(0)
    return cfg, MolminiModel(cfg.model, tokenizer, **kw)


def batch_of(model, records):
    return model.processor.collate([model.processor.process_record(r) for r in records])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_loads_its_backbones_and_reloads_to_identical_logits(preset, tmp_path):
    overrides = stand_in_overrides(preset, tmp_path)
    cfg, model = build(overrides, max_length=1024)
    # the tower's weights are the saved ones (kept blocks), the LM's too (its original vocabulary rows)
    saved = load_file(str(cfg.model.vision.pretrained))
    tower = dict(model.vision.visual.named_parameters())
    name = "trunk.patch_embed.proj.weight" if "timm_model_name" in TINY_TOWERS[cfg.model.vision.model_name] \
        else "conv1.weight"
    assert torch.equal(tower[name], saved[f"visual.{name}"])
    lm = AutoModelForCausalLM.from_pretrained(cfg.model.lm.name_or_path)
    n = lm.get_input_embeddings().num_embeddings
    assert torch.equal(model.lm.get_input_embeddings().weight[:n], lm.get_input_embeddings().weight)
    assert len(model.processor.tokenizer) > n  # molmini's tokens were added and the embeddings resized
    # turns use the LM's own chat template
    assert model.processor.chat.first_user_prefix.startswith("<|im_start|>system")
    assert model.processor.chat.assistant_suffix == "<|im_end|>\n"
    assert model.processor.stop_token_id == model.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    batch = batch_of(model, make_records(2))
    out = model(**batch)
    out["loss"].backward()
    assert model.connector.mlp.down.weight.grad.abs().sum() > 0

    model.save_pretrained(tmp_path / "ckpt")
    loaded = MolminiModel.from_pretrained(tmp_path / "ckpt")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch)["logits"], loaded(**batch)["logits"])
    # special tokens and the template survive the tokenizer's round trip
    tok_a, tok_b = model.processor.tokenizer, loaded.processor.tokenizer
    assert special_token_ids(tok_a) == special_token_ids(tok_b)
    assert tok_a.chat_template == tok_b.chat_template
    assert batch_of(loaded, make_records(2))["input_ids"].equal(batch["input_ids"])
    prompt = loaded.processor.process_prompt(make_records(1)[0].load_image(), "What colour are the bars?")
    text = tok_b.decode(prompt["input_ids"])
    assert text.endswith("What colour are the bars?<|im_end|>\n<|im_start|>assistant\n")
    assert tok_b.decode(tok_b.encode(" ".join(SPECIAL_TOKENS), add_special_tokens=False)).split() == SPECIAL_TOKENS


@pytest.mark.parametrize("tower", ["molmini-vit", "ViT-B-16-SigLIP"])
@pytest.mark.parametrize("connector", ["attention_pool_2x2", "pixel_shuffle", "mlp"])
def test_every_connector_trains_on_both_tower_kinds(tower, connector, tokenizer):
    vision = ["model.vision.model_name=ViT-B-16-SigLIP",
              "model.vision.vision_cfg={timm_model_name: vit_molmini_test_siglip_p16, image_size: 32}"] \
        if tower != "molmini-vit" else []
    cfg = tiny_config(*vision, f"model.connector.kind={connector}", "model.vision.feature_layers=[-1, -2]",
                      "model.image.max_crops=2")
    torch.manual_seed(0)
    model = MolminiModel(cfg.model, tokenizer)
    assert model.vision.is_timm == (tower != "molmini-vit")
    assert model.vision.output_dim == 2 * (32 if model.vision.is_timm else 64)  # two layers concatenated
    batch = batch_of(model, make_records(2))
    model(**batch)["loss"].backward()
    for part in (model.connector, model.vision):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), part.__class__.__name__
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(**batch)["loss"].item()
    for _ in range(5):
        opt.zero_grad()
        model(**batch)["loss"].backward()
        opt.step()
    assert model(**batch)["loss"].item() < first


def test_unknown_preset_names_the_choices():
    from molmini.config import ConfigError
    with pytest.raises(ConfigError, match="siglip-b16-smollm2-135m"):
        load_config(None, ["model.preset=siglip-huge"])


def test_preset_keys_can_be_overridden():
    cfg = load_config(None, ["model.preset=clip-l14-336-qwen2.5-1.5b", "model.image.max_crops=4"])
    assert cfg.model.vision.model_name == "ViT-L-14-336" and cfg.model.image.max_crops == 4
    assert cfg.model.lm.name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"


@pytest.mark.slow
def test_a_preset_trains_and_evaluates_through_train_py(tmp_path):
    """The preset's config file, pointed at stand-in backbones, through train.py's main: pretrained
    weights load, conversations use the LM's chat template, a checkpoint is written and evaluated."""
    import json
    import sys

    from data_pipelines.synth.charts import synthesize
    from tests.helpers import ROOT
    synthesize(tmp_path / "train", 16, 0, split="train", image_px=48, shard_size=16, progress=False)
    synthesize(tmp_path / "test", 4, 1, split="test", image_px=48, shard_size=4, progress=False)
    overrides = stand_in_overrides("siglip-b16-smollm2-135m", tmp_path) + [
        f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}", "data.synth=null",
        "data.num_workers=0", "data.shuffle_buffer=8", "train.max_steps=2", "train.batch_size=4",
        "train.log_every=1", "train.trackers=[]", "train.checkpoint_every=0", "train.eval_every=0",
        f"train.output_dir={tmp_path / 'runs'}", "train.run_name=preset", "train.mixed_precision=no",
        "eval.max_items=4", "eval.batch_size=4", "model.image.max_crops=2"]
    # In this process: the stand-in tower is registered with timm here (train.py's main, not a subprocess).
    sys.path.insert(0, str(ROOT))
    import train as train_cli
    assert train_cli.main(["--config", str(ROOT / "configs" / "siglip-b16-smollm2-135m.yaml"), *overrides]) == 0
    run = tmp_path / "runs" / "preset"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    assert set(log[0]) >= {"lr_connector", "lr_vision", "lr_lm"}
    model = MolminiModel.from_pretrained(run / "checkpoint")
    assert model.config.multi_annotation == "masked" and model.config.vision.model_name == "ViT-B-16-SigLIP"
    assert model.processor.chat.assistant_suffix == "<|im_end|>\n"
    assert json.loads((run / "eval_results.json").read_text())["overall"]["n"] == 4
    # the prompt template the results record is the LM's chat template the model was asked in
    template = json.loads((run / "eval_results.json").read_text())["prompt_template"]
    assert "<|im_start|>user\n<image>{question}<|im_end|>\n<|im_start|>assistant\n" in template
