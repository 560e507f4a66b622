"""Training stages on real tiny runs: each stage config of configs/stages/, chained through init_from;
freezing is real (frozen weights bit-identical, not in the optimizer); LoRA merges into a loadable
checkpoint; per-component learning rates and warmups."""
from __future__ import annotations

import json

import pytest
import torch
from accelerate.utils import set_seed

from molmini.config import load_config
from molmini.data.reader import find_shards
from molmini.model.interface import COMPONENTS
from molmini.model.vlm import MolminiModel
from molmini.train.loop import build_model, train
from molmini.train.optim import param_groups, warmup_cosine
from molmini.train.stages import prepare_stage
from tests.helpers import ROOT, TINY_OVERRIDES, synth_tiny_charts, tiny_config

STAGES = ROOT / "configs" / "stages"


def small(data, *extra):
    return TINY_OVERRIDES + [
        f"data.train_dir={data / 'train'}", f"data.test_dir={data / 'test'}", "data.synth=null",
        "data.num_workers=0", "data.shuffle_buffer=8", "data.max_length=256",
        "train.max_steps=4", "train.batch_size=4", "train.log_every=2", "train.trackers=[]",
        "train.checkpoint_every=2", "train.eval_every=2", "train.eval_batches=1", *extra]


@pytest.fixture(scope="module")
def charts(tmp_path_factory):
    return synth_tiny_charts(tmp_path_factory.mktemp("charts"), train_shard_size=16)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def component(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """A component's weights; what is neither vision nor LM (the connector and the pad embedding) is the
    connector's."""
    owner = lambda k: k.split(".", 1)[0] if k.split(".", 1)[0] in ("vision", "lm") else "connector"  # noqa: E731
    return {k: v for k, v in state.items() if owner(k) == name}


def log_of(run_dir):
    return [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage_runs(charts, tmp_path_factory):
    """The three stage configs run in order, each from the previous stage's checkpoint."""
    runs = tmp_path_factory.mktemp("stages")
    out = {}
    previous = None
    for name in ("1_align", "2_caption", "3_sft"):
        extra = [f"train.init_from={previous}"] if previous else []
        cfg = load_config(STAGES / f"{name}.yaml", small(charts, *extra))
        set_seed(cfg.train.seed)
        initial = weights(build_model(load_config(STAGES / f"{name}.yaml", small(charts, *extra)),
                                      find_shards(cfg.data.train_dir)))
        summary = train(cfg, runs / name)
        out[name] = (cfg, runs / name, initial, summary)
        previous = runs / name / "checkpoint"
    return out


def test_align_stage_trains_the_connector_alone(stage_runs):
    cfg, run_dir, initial, summary = stage_runs["1_align"]
    assert cfg.optim.freeze == ["vision", "lm"] and not cfg.data.train_questions
    after = weights(MolminiModel.from_pretrained(run_dir / "checkpoint"))
    for frozen in ("vision", "lm"):
        before_c, after_c = component(initial, frozen), component(after, frozen)
        assert before_c.keys() == after_c.keys() and before_c
        assert all(torch.equal(before_c[k], after_c[k]) for k in before_c), f"{frozen} changed"
    assert any(not torch.equal(initial[k], after[k]) for k in component(initial, "connector"))
    assert summary["trainable_parameters"]["vision"] == summary["trainable_parameters"]["lm"] == 0
    # The optimizer holds the connector's tensors and nothing else.
    optimizer = torch.load(run_dir / "checkpoints" / "step-2" / "optimizer.bin", weights_only=False)
    n_connector = sum(1 for k in component(initial, "connector"))
    assert len(optimizer["state"]) == n_connector
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == n_connector
    assert {g["component"] for g in optimizer["param_groups"]} == {"connector"}


def test_caption_stage_starts_from_align_and_trains_everything_at_its_own_rates(stage_runs):
    cfg, run_dir, initial, summary = stage_runs["2_caption"]
    aligned = weights(MolminiModel.from_pretrained(stage_runs["1_align"][1] / "checkpoint"))
    assert all(torch.equal(initial[k], aligned[k]) for k in aligned)  # init_from loaded stage 1's weights
    after = weights(MolminiModel.from_pretrained(run_dir / "checkpoint"))
    for name in COMPONENTS:
        assert any(not torch.equal(initial[k], after[k]) for k in component(initial, name)), name
    rec = log_of(run_dir)[0]
    for name in COMPONENTS:
        lr, warmup = getattr(cfg.optim, f"lr_{name}"), getattr(cfg.optim, f"warmup_{name}")
        assert rec[f"lr_{name}"] == pytest.approx(lr * warmup_cosine(warmup, cfg.train.max_steps)(rec["step"]))
    assert rec["lr_connector"] > rec["lr_lm"] > rec["lr_vision"] > 0
    assert "eval_loss" in rec and rec["eval_loss"] > 0


def test_sft_stage_accumulates_and_evaluates(stage_runs):
    cfg, run_dir, initial, summary = stage_runs["3_sft"]
    assert cfg.train.grad_accum_steps == 2 and cfg.data.train_questions
    assert summary["samples"] == cfg.train.max_steps * cfg.train.batch_size * 2
    assert [r["step"] for r in log_of(run_dir)] == [2, 4]
    captioned = weights(MolminiModel.from_pretrained(stage_runs["2_caption"][1] / "checkpoint"))
    assert all(torch.equal(initial[k], captioned[k]) for k in captioned)


def test_lora_run_merges_and_saves_a_loadable_checkpoint(stage_runs, charts, tmp_path):
    base = stage_runs["2_caption"][1] / "checkpoint"
    cfg = load_config(STAGES / "3_sft.yaml", small(charts, f"train.init_from={base}", "train.lora.r=4",
                                                   "train.max_steps=2", "optim.lr_lm=1e-2"))
    summary = train(cfg, tmp_path / "lora")
    assert 0 < summary["trainable_parameters"]["lm"] < sum(v.numel() for v in component(weights(
        MolminiModel.from_pretrained(base)), "lm").values())
    merged = MolminiModel.from_pretrained(tmp_path / "lora" / "checkpoint")  # strict: no adapter keys left
    before, after = weights(MolminiModel.from_pretrained(base)), weights(merged)
    assert before.keys() == after.keys()
    changed = [k for k in component(before, "lm") if not torch.equal(before[k], after[k])]
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    from PIL import Image
    assert len(merged.generate(images=[Image.new("RGB", (32, 32), "white")],
                               prompts=["What type of chart is this?"], max_new_tokens=2)) == 1


def test_frozen_parameters_are_left_out_of_the_optimizer(tokenizer, model_config):
    cfg = tiny_config("optim.freeze=[vision]", "optim.lr_connector=1e-3")
    model = MolminiModel(model_config, tokenizer)
    counts = prepare_stage(model, cfg.train, cfg.optim)
    groups = param_groups(model, cfg.optim)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert counts["vision"] == 0 and not in_optimizer & {id(p) for p in model.vision.parameters()}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert {g["component"]: g["lr"] for g in groups} == {"connector": 1e-3, "lm": cfg.optim.lr}
    # the pad embedding trains with the connector (it is read by nothing else)
    assert id(model.pad_embed) in {id(p) for g in groups if g["component"] == "connector" for p in g["params"]}


def test_bad_stage_settings_are_clear_errors(tokenizer, model_config):
    model = MolminiModel(model_config, tokenizer)
    with pytest.raises(ValueError, match=r"optim.freeze names \['projector'\].*connector"):
        prepare_stage(model, tiny_config().train, tiny_config("optim.freeze=[projector]").optim)
    with pytest.raises(ValueError, match="nothing to train"):
        cfg = tiny_config("optim.freeze=[vision, connector, lm]")
        prepare_stage(model, cfg.train, cfg.optim)
        param_groups(model, cfg.optim)
    with pytest.raises(ValueError, match=r"target_modules \['qkv'\]"):
        cfg = tiny_config("train.lora.r=2", "train.lora.target_modules=[qkv]")
        prepare_stage(MolminiModel(model_config, tokenizer), cfg.train, cfg.optim)


def test_activation_checkpointing_gives_the_same_gradients(tokenizer, model_config):
    from tests.helpers import make_records

    def grads(checkpointing):
        torch.manual_seed(0)
        model = MolminiModel(model_config, tokenizer).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.vision.visual.transformer.grad_checkpointing
            assert model.lm.model.gradient_checkpointing
        batch = model.processor.collate([model.processor.process_record(r, r.messages) for r in make_records(3)])
        batch.pop("keys")
        model(**batch)["loss"].backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, recomputed = grads(False), grads(True)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], recomputed[name], rtol=1e-5, atol=1e-6, msg=name)


def test_weights_gathered_from_shards_give_the_same_merged_lora_checkpoint(tokenizer, model_config, tmp_path):
    from molmini.train.accelerator import make_accelerator
    from molmini.train.checkpointing import publishable_model
    accelerator = make_accelerator(tiny_config("train.trackers=[]"))

    def lora_model():
        torch.manual_seed(0)
        model = MolminiModel(model_config, tokenizer)
        model.apply_lora(4, 8, 0.0, ["q_proj", "v_proj"])
        return model

    trained = lora_model()
    with torch.no_grad():  # adapters as training leaves them: B no longer zero
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_()
    copy = lora_model()
    copy.load_state_dict(weights(trained))
    direct = publishable_model(accelerator, accelerator.prepare(trained), lora_model, gather=False)
    gathered = publishable_model(accelerator, accelerator.prepare(copy), lora_model, gather=True)
    a, b = weights(direct), weights(gathered)
    assert a.keys() == b.keys() and not any("lora" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    plain = weights(MolminiModel(model_config, tokenizer))  # the same base weights, no adapters
    assert not torch.equal(a["lm.model.layers.0.self_attn.q_proj.weight"], plain["lm.model.layers.0.self_attn.q_proj.weight"])
