"""The throughput benchmarks (bench/train_throughput.py, bench/generate_throughput.py) at their tiny shape: equal
shapes for molmini and LLaVA, answer-only labels, the FLOP count the peer reference uses, and the figures each
run writes. A CUDA variant checks bf16, MFU and GPU memory; it skips without a GPU."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import generate_throughput  # noqa: E402
import peer_models as P  # noqa: E402
import train_throughput  # noqa: E402

TINY = P.get_shape("tiny")


def test_molmini_mlp_and_llava_have_equal_shape_and_answer_only_labels():
    mlp, pooled = P.build_molmini(TINY, "mlp"), P.build_molmini(TINY, "attention_pool_2x2")
    llava = P.build_llava(TINY)
    assert P.count_params(mlp) == P.count_params(llava)  # same tower, projector and LM, tied heads
    patches = (TINY.vision["image_size"] // TINY.vision["patch_size"]) ** 2
    for model, batch, image_tokens in [(mlp, P.molmini_batch(mlp, TINY, 3), patches),
                                       (pooled, P.molmini_batch(pooled, TINY, 3), patches // 4)]:
        assert batch["pool_index"].shape[0] == 3 * image_tokens
        assert ((batch["labels"] != -100).sum(1) == TINY.answer_tokens).all()
        # the labels are the last text tokens, as the answers of a conversation are
        assert torch.equal(batch["labels"][:, -TINY.answer_tokens:], batch["input_ids"][:, -TINY.answer_tokens:])
    batch = P.llava_batch(llava, TINY, 3)
    assert int((batch["input_ids"][0] == llava.config.image_token_index).sum()) == patches
    assert ((batch["labels"] != -100).sum(1) == TINY.answer_tokens).all()
    assert batch["input_ids"].shape[1] == patches + TINY.text_tokens


def test_flop_count_reproduces_the_peer_reference_mfu():
    """../shared/reference/peer_throughput.md: LLaVA eager 299 samples/s is 11.4% MFU, nanoVLM with pixel
    shuffle (49 image tokens) 399 samples/s is 10.1%, against 989 TFLOP/s."""
    lm = 49152 * 576 + 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576) + 576  # SmolLM2-135M shape
    vision = 85_795_584  # SigLIP-B/16 without its pooling head
    for samples_per_s, image_tokens, projector, reported in [(299, 196, 768 * 576 + 576 * 576 + 1152, 0.114),
                                                             (399, 49, 4 * 768 * 576, 0.101)]:
        tokens = image_tokens + 128
        parts = {"vision": (vision, 196), "connector": (projector, image_tokens), "lm": (lm, tokens)}
        flops = P.flops_per_sample(parts, [(12, 196, 768, False), (30, tokens, 576, True)])
        assert flops * samples_per_s / 989e12 == pytest.approx(reported, abs=0.002)


def test_train_throughput_reports_every_model_with_ratios(tmp_path):
    out = tmp_path / "results.json"
    result = train_throughput.main(["--shape", "tiny", "--steps", "2", "--warmup", "1", "--memory-steps", "0",
                                    "--json", str(out)])
    saved = json.loads(out.read_text())["train/tiny"]
    assert saved["models"].keys() == {"molmini attention_pool_2x2", "molmini mlp", "llava"}
    peer = saved["models"]["llava"]
    for name, m in saved["models"].items():
        assert len(m["step_s_all"]) == 2
        assert m["samples_per_s"] == pytest.approx(TINY.batch / m["step_s_median"], rel=1e-2)
        assert math.isfinite(m["loss_first"]) and m["flops_per_sample"] > 0
        assert saved["answer_label_fraction"][name] == pytest.approx(TINY.answer_tokens / m["lm_tokens_per_sample"],
                                                                     abs=1e-3)
        if name != "llava":
            ratio = saved["ratio_to_llava"][name]
            assert ratio["samples_per_s"] == pytest.approx(m["samples_per_s"] / peer["samples_per_s"], rel=1e-2)
            low, high = ratio["samples_per_s_paired_range"]
            assert low <= ratio["samples_per_s_paired_median"] <= high
    assert saved["models"]["molmini attention_pool_2x2"]["image_tokens_per_sample"] * 4 == \
        saved["models"]["molmini mlp"]["image_tokens_per_sample"] == peer["image_tokens_per_sample"]
    assert saved["load_average_start"] is not None and saved["machine"]["cpu_count"] >= 1
    assert result["models"] == saved["models"]


@pytest.mark.parametrize("kind", ["mlp", P.PEER])
def test_checkpointing_recomputes_every_block_and_keeps_the_loss(kind):
    """--gradient-checkpointing: every block of the tower and the LM runs under activation checkpointing (molmini's
    train.gradient_checkpointing, LLaVA's own), the step's loss and gradients are those of the plain step, and the
    forward keeps fewer tensors for backward."""
    def step(checkpointing: bool):
        torch.manual_seed(0)
        c = train_throughput.build_contender(kind, TINY, torch.device("cpu"), 2, checkpointing=checkpointing)
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
            out = c.model(**c.batch) if c.peer else c.model(**c.batch, return_logits=False)
        (out.loss if c.peer else out["loss"]).backward()
        grads = [p.grad.clone() for p in c.model.parameters() if p.grad is not None]
        return c, float(out.loss if c.peer else out["loss"]), grads, sum(kept)

    plain, plain_loss, plain_grads, plain_kept = step(False)
    checked, loss, grads, kept = step(True)
    if kind == P.PEER:
        assert checked.model.model.language_model.is_activation_checkpointing
        assert checked.model.model.vision_tower.is_activation_checkpointing
    else:
        assert checked.model.vision.visual.transformer.grad_checkpointing and checked.model.lm.is_activation_checkpointing
    assert loss == pytest.approx(plain_loss, abs=1e-6) and len(grads) == len(plain_grads)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, plain_grads))
    assert kept < plain_kept


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_cpu_memory_probe_counts_the_training_state():
    """Gradients and AdamW's two moments alone are 3x the fp32 weights; the probe (a fresh process) must see
    at least that."""
    probe = train_throughput.cpu_peak_memory("S1", "mlp", batch_size=2, steps=2)
    assert probe["step_peak_mib"] >= 3 * probe["weights_mib"]
    assert probe["peak_memory_mib"] >= probe["step_peak_mib"]


def test_profile_names_the_phases_and_top_operators(tmp_path):
    out = tmp_path / "profile.txt"
    train_throughput.main(["--shape", "tiny", "--steps", "0", "--no-peer", "--connector", "mlp", "--profile", str(out)])
    text = out.read_text()
    for phase in ("forward: vision tower", "forward: connector", "forward: LM decoder", "backward", "clip + AdamW"):
        assert phase in text
    assert "aten::mm" in text and "ops with a vocabulary-sized (300) input" in text


def test_generate_throughput_makes_exactly_the_new_tokens_for_each_model(tmp_path):
    out = tmp_path / "results.json"
    generate_throughput.main(["--shape", "tiny", "--steps", "1", "--warmup", "0", "--batch-sizes", "1,3",
                              "--json", str(out)])
    saved = json.loads(out.read_text())["generate/tiny"]
    assert saved["new_tokens"] == TINY.gen_new_tokens
    for name, m in saved["models"].items():
        assert m.keys() == {"batch_1", "batch_3"}
        for key, b in (("batch_1", 1), ("batch_3", 3)):
            assert m[key]["new_tokens_per_s"] == pytest.approx(b * TINY.gen_new_tokens / m[key]["call_s_median"],
                                                               rel=1e-2)
    assert saved["ratio_to_llava"].keys() == {"molmini attention_pool_2x2", "molmini mlp"}


def test_generate_throughput_measures_a_checkpoints_cpu_variants_with_their_accuracy(tmp_path, model_config,
                                                                                       tokenizer):
    """--checkpoint mode: each variant timed beside fp32, scored on the held-out set, and kept or not by its
    accuracy change."""
    from tests.helpers import synth_tiny_charts, trained_checkpoint
    charts = synth_tiny_charts(tmp_path / "charts")
    checkpoint = trained_checkpoint(model_config, tokenizer, tmp_path / "checkpoint", steps=10)
    out = tmp_path / "results.json"
    generate_throughput.main(["--checkpoint", str(checkpoint), "--variants", "fp32,int8-dynamic",
                              "--test-dir", str(charts / "test"), "--train-dir", str(charts / "train"),
                              "--steps", "1", "--warmup", "0", "--batch-sizes", "1,2", "--new-tokens", "3",
                              "--json", str(out)])
    rows = json.loads(out.read_text())["generate/checkpoints"]["checkpoints"][str(checkpoint)]
    assert rows.keys() == {"fp32", "int8-dynamic"}
    for name, row in rows.items():
        assert row["batch_2"]["new_tokens_per_s"] == pytest.approx(2 * 3 / row["batch_2"]["call_s_median"], rel=1e-2)
        assert row["heldout_items"] > 0 and 0 <= row["heldout_relaxed_accuracy"] <= 100
        assert row["kept"] == (row["accuracy_change_points"] >= -1.0)
    assert rows["fp32"]["speed_vs_fp32"] == {"batch_1": 1.0, "batch_2": 1.0}
    assert not any("fp32_in_group" in row for row in rows.values())  # eager variants: timed with fp32 itself
    assert rows["int8-dynamic"]["options"]["quantize"] == "int8-dynamic"
    assert rows["int8-dynamic"]["options"]["parameters"] == rows["fp32"]["options"]["parameters"]
    with pytest.raises(ValueError, match="give fp32 and any of"):
        generate_throughput.main(["--checkpoint", str(checkpoint), "--variants", "int8-dynamic"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--shape 'S9' is unknown"):
        train_throughput.main(["--shape", "S9"])
    with pytest.raises(ValueError, match="--connector 'pixel' is unknown"):
        train_throughput.main(["--shape", "tiny", "--connector", "pixel"])
    with pytest.raises(ValueError, match="--batch-sizes '1,x'"):
        generate_throughput.main(["--shape", "tiny", "--batch-sizes", "1,x"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_step_runs_in_bf16_with_mfu_and_gpu_memory(tmp_path):
    result = train_throughput.main(["--shape", "tiny", "--steps", "2", "--warmup", "1"])
    assert result["device"] == "cuda" and result["dtype"] == "bf16"
    for m in result["models"].values():
        assert 0 < m["mfu"] < 1 and m["peak_memory_mib"] > m["step_peak_mib"] > 0


def test_saved_activations_show_the_peer_keeping_full_logits_and_molmini_none():
    import saved_activations
    llava, molmini = (saved_activations.saved_bytes(kind, TINY, 2) for kind in (P.PEER, "mlp"))
    c = train_throughput.build_contender(P.PEER, TINY, torch.device("cpu"), 2)
    logits_bytes = c.batch["input_ids"].numel() * TINY.vocab * 4
    assert llava["(outside modules)"] >= logits_bytes          # the peer's loss keeps [tokens, vocab] floats
    assert molmini["(outside modules)"] < logits_bytes / 4      # the answer-only loss keeps none
    assert sum(molmini.values()) > 0 and any(name.startswith("lm") for name in molmini)
