"""Bring your own VLM (molmini/model/transformers_vlm.py): tiny random transformers VLMs of each family trained through
molmini's loop, on shards written here; checkpoints reloaded with plain transformers in a fresh process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROOT, make_records, tiny_config
from tests.helpers.hf_tiny_vlms import save_tiny_llava, save_tiny_vlm

FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "paligemma", "molmo2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipelines.shards import ShardWriter
    folder = tmp_path_factory.mktemp("hf-shards")
    for split, seed in (("train", 0), ("test", 1)):
        with ShardWriter(folder / split, generator="test", maxcount=8) as w:
            for r in make_records(16, seed=seed):
                w.write(r)
    return folder


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory, tokenizer):
    folders = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family)
        if family == "llava":
            save_tiny_llava(folder, tokenizer)
        else:
            save_tiny_vlm(family, folder)
        folders[family] = folder
    return folders


def hf_config(shards, vlm_folder, *extra):
    return tiny_config(f"data.train_dir={shards / 'train'}", f"data.test_dir={shards / 'test'}", "data.synth=null",
                       "data.num_workers=0", "data.shuffle_buffer=0", "train.batch_size=4", "train.log_every=1",
                       "train.trackers=[]", "optim.warmup_steps=0", "optim.lr=3e-3", f"model.hf_vlm={vlm_folder}",
                       *extra)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "paligemma"])
def test_labels_cover_exactly_the_assistant_tokens(family, tiny_vlms):
    """Decoding the labelled tokens gives each answer and the end-of-turn text that stops it, nothing else."""
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    model = HFVisionLanguageModel.from_pretrained(str(tiny_vlms[family]), max_length=512)
    processor = model.processor
    records = make_records(2, seed=3)
    samples = [processor.process_record(r) for r in records]
    batch = processor.collate(samples)
    tokenizer = processor.tokenizer
    for row, (record, sample) in enumerate(zip(records, samples)):
        labelled = (batch["labels"][row] != -100).nonzero().squeeze(-1).tolist()
        runs, run = [], [labelled[0]]
        for i in labelled[1:]:
            if i == run[-1] + 1:
                run.append(i)
            else:
                runs.append(run)
                run = [i]
        runs.append(run)
        decoded = [tokenizer.decode(batch["input_ids"][row, r]) for r in runs]
        expected = [sample["text"][a:b] for a, b in sample["spans"]]
        assert decoded == expected
        answers = [m["content"] for m in record.messages[1::2]]
        assert [d.strip().startswith(a) for d, a in zip(decoded, answers)] == [True] * len(answers)
        assert all(d.strip() != a for d, a in zip(decoded, answers))  # the end-of-turn token is learned too
        assert tokenizer.eos_token * 2 not in sample["text"]  # an answer's end-of-turn token is not doubled


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "molmo2"])
def test_text_only_and_two_image_records_train_beside_one_image_records(family, tiny_vlms):
    """LLaVA-665k's text-only conversations and records with several images: labels still cover exactly
    the answers, and the batch gives a finite loss with gradients."""
    from molmini.data.records import Record
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    from tests.helpers import png_bytes
    model = HFVisionLanguageModel.from_pretrained(str(tiny_vlms[family]), max_length=1024)
    text_only = Record(key="t0", image=None, messages=[{"role": "user", "content": "Say hello."},
                                                          {"role": "assistant", "content": "hello"}])
    two = Record(key="m0", image=png_bytes("red", bars=1), extra_images=[(png_bytes("blue", bars=3), "png")],
                 messages=[{"role": "user", "content": "<image><image>Which has more bars?"},
                           {"role": "assistant", "content": "the second"}])
    records = [make_records(1, seed=7)[0], text_only, two]
    samples = [model.processor.process_record(r) for r in records]
    batch = model.processor.collate(samples)
    for row, sample in enumerate(samples):
        labelled = batch["input_ids"][row][batch["labels"][row] != -100]
        assert model.processor.tokenizer.decode(labelled) == "".join(sample["text"][a:b] for a, b in sample["spans"])
    batch.pop("keys")
    out = model(**batch, return_logits=False)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                               if p.grad is not None)


def test_paligemma_labels_are_its_answer_after_the_prefix(tiny_vlms):
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    processor = HFVisionLanguageModel.from_pretrained(str(tiny_vlms["paligemma"])).processor
    record = make_records(1, seed=4)[0]
    batch = processor.collate([processor.process_record(record)])
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled, skip_special_tokens=True).strip() == record.messages[1]["content"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_steps_lower_the_loss_and_the_checkpoint_loads_with_plain_transformers(family, tiny_vlms, shards,
                                                                                      tmp_path):
    from molmini.train.loop import train
    run = tmp_path / "run"
    summary = train(hf_config(shards, tiny_vlms[family], "train.max_steps=12"), run)
    curve = losses(run)
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 * 0.9, curve
    assert set(summary["trainable_parameters"]) == {"vision", "connector", "lm"}
    assert all(n > 0 for n in summary["trainable_parameters"].values())
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert config["architectures"] == json.loads((tiny_vlms[family] / "config.json").read_text())["architectures"]
    assert "molmini" in (run / "checkpoint" / "README.md").read_text()


def greedy_in_fresh_process(folder: Path, prompts: list[str], image_pngs: list[Path]) -> list[str]:
    """Plain transformers, no molmini import: the chat template, generate, decode past the prompt."""
    code = f"""
import json, sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, prompts, images = {str(folder)!r}, {prompts!r}, {[str(p) for p in image_pngs]!r}
processor = AutoProcessor.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder).eval()
assert "molmini" not in sys.modules
answers = []
for prompt, image in zip(prompts, images):
    turn = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": prompt}}]}}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[Image.open(image).convert("RGB")]], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False,
                         pad_token_id=processor.tokenizer.pad_token_id)
    answers.append(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
print(json.dumps(answers))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder.parent,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "molmo2"])
def test_lora_is_merged_and_the_saved_model_answers_as_before_saving(family, tiny_vlms, shards, tmp_path):
    """LoRA on the LM with vision and connector frozen: those stay bit-identical, the LM's weights change by
    the merged adapters, no adapter weight is saved, and plain transformers in a fresh process gives the
    in-memory model's greedy answers."""
    from molmini.config import save_config  # noqa: F401  (the config module loads with the model)
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    from molmini.train.loop import start_run, train_step
    cfg = hf_config(shards, tiny_vlms[family], "train.max_steps=6", "train.lora.r=4", "optim.freeze=[vision, connector]",
                    "train.lora.target_modules=[q_proj, v_proj]")
    run = start_run(cfg, tmp_path / "run", None, "")
    model: HFVisionLanguageModel = run.accelerator.unwrap_model(run.model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    while run.step < cfg.train.max_steps:
        train_step(run)
    images = [r.load_image() for r in make_records(3, seed=9)]
    prompts = ["What colour are the bars?", "How many bars are there?", "What colour are the bars?"]
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    before = model.generate(images, prompts, max_new_tokens=6)
    pngs = []
    for i, image in enumerate(images):
        pngs.append(tmp_path / f"{i}.png")
        image.save(pngs[-1])
    assert greedy_in_fresh_process(folder, prompts, pngs) == before
    assert not any("lora" in k for k in load_file(folder / "model.safetensors"))
    from transformers import AutoModelForImageTextToText

    from molmini.model.transformers_vlm import component_of
    saved = AutoModelForImageTextToText.from_pretrained(folder).state_dict()
    base = AutoModelForImageTextToText.from_pretrained(tiny_vlms[family]).state_dict()
    assert saved.keys() == base.keys()
    changed = {component_of(k) for k in base if not torch.equal(saved[k], base[k])}
    assert changed == {"lm"}


def test_a_resumed_run_matches_an_uninterrupted_one(tiny_vlms, shards, tmp_path):
    from molmini.train.loop import train
    steps = ("train.max_steps=6", "train.checkpoint_every=3", "train.keep_checkpoints=2")
    whole = tmp_path / "whole"
    train(hf_config(shards, tiny_vlms["smolvlm"], *steps), whole)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoints" / "step-3", resumed / "checkpoints" / "step-3")
    shutil.copy(whole / "config.yaml", resumed / "config.yaml")
    (resumed / "train_log.jsonl").write_text("".join(l + "\n" for l in (whole / "train_log.jsonl").read_text()
                                                     .splitlines()[:3]))
    summary = train(hf_config(shards, tiny_vlms["smolvlm"], *steps), resumed, resume="auto")
    assert summary["resumed_from_step"] == 3
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)


def test_the_family_components_are_named_and_an_unknown_layout_is_an_error():
    from molmini.model.transformers_vlm import component_of
    assert component_of("model.visual.merger.mlp.0.weight") == "connector"
    assert component_of("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert component_of("model.multi_modal_projector.linear_1.weight") == "connector"
    assert component_of("model.text_model.layers.0.self_attn.q_proj.weight") == "lm"
    assert component_of("lm_head.weight") == "lm"
    with pytest.raises(ValueError, match="adapter.weight"):
        component_of("model.adapter.weight")


@pytest.mark.slow
def test_train_py_fine_tunes_and_evaluates_a_transformers_vlm(tiny_vlms, shards, tmp_path):
    """The user's path end to end: train.py with model.hf_vlm, then its held-out evaluation and model card."""
    cfg_args = [f"data.train_dir={shards / 'train'}", f"data.test_dir={shards / 'test'}", "data.synth=null",
                "data.num_workers=0", "train.batch_size=4", "train.max_steps=4", "train.trackers=[]",
                f"model.hf_vlm={tiny_vlms['idefics3']}", f"train.output_dir={tmp_path}", "train.run_name=ft",
                "eval.max_items=8", "eval.max_new_tokens=4"]
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *cfg_args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "ft" / "eval_results.json").read_text())
    assert results["overall"]["n"] == 8
    assert "Assistant:" in results["prompt_template"]
    card = (tmp_path / "ft" / "checkpoint" / "README.md").read_text()
    assert "Evaluation on" in card and "Training cost" in card


def test_activation_checkpointing_gives_the_same_loss_and_gradients(tiny_vlms):
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    results = []
    for checkpointed in (False, True):
        model = HFVisionLanguageModel.from_pretrained(str(tiny_vlms["qwen2_vl"])).train()
        if checkpointed:
            model.enable_gradient_checkpointing()
            assert getattr(model.hf, "is_activation_checkpointing", None) or model.hf.is_gradient_checkpointing
        batch = model.processor.collate([model.processor.process_record(r) for r in make_records(2, seed=5)])
        batch.pop("keys")
        out = model(**batch, return_logits=False)
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "smolvlm", "paligemma", "molmo2"])
def test_the_answer_only_loss_equals_the_familys_own_loss_and_gradients(family, tiny_vlms):
    """molmini's loss (the LM head at answer positions only) against the family's forward with labels,
    which runs the head at every position: same mean loss and gradients to 1e-5."""
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    model = HFVisionLanguageModel.from_pretrained(str(tiny_vlms[family])).train()
    batch = model.processor.collate([model.processor.process_record(r) for r in make_records(3, seed=6)])
    batch.pop("keys")
    ours = model(**batch, return_logits=False)
    ours["loss"].backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = model.hf(**batch)  # transformers' own shifted cross-entropy, mean over the labelled tokens
    theirs.loss.backward()
    assert ours["loss"].item() == pytest.approx(theirs.loss.item(), rel=1e-5)
    assert ours_grads and all(torch.allclose(g, dict(model.named_parameters())[n].grad, rtol=1e-4, atol=1e-6)
                              for n, g in ours_grads.items())


def test_the_smolvlm_lora_config_names_the_hub_model_and_validates():
    from molmini.config import load_config, validate
    from molmini.model.transformers_vlm import resolve_hf_vlm
    cfg = load_config(ROOT / "configs" / "smolvlm-256m-lora.yaml")
    validate(cfg)
    assert resolve_hf_vlm(cfg.model.hf_vlm) == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert cfg.train.lora.r == 16 and cfg.optim.freeze == ["vision"]
