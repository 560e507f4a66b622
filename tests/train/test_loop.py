"""The training loop's arithmetic and guards: gradients of a global batch independent of how it is split
over processes and accumulation steps; non-finite steps skipped, counted, and stopping the run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from molmini.train.accelerator import make_accelerator, resolve_mixed_precision
from tests.helpers import ROOT, tiny_config
from tests.helpers.grad_step import gradients


def launch_two_processes(script: str, out) -> dict:
    """Run tests/SCRIPT under `accelerate launch --multi_gpu --num_processes 2` (gloo on a CPU host) and load
    what its main process saved to `out`."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          str(ROOT / "tests" / "helpers" / script), str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
def test_two_processes_give_the_gradients_of_one_with_the_same_global_batch(tmp_path):
    two = launch_two_processes("grad_step.py", tmp_path / "grads.pt")
    assert two["world"] == 2
    one_grads, _, one_loss = gradients(make_accelerator(tiny_config("train.trackers=[]")), accum=1)
    for accum in (1, 2):
        tokens = two[accum]["tokens"]
        assert tokens[0] != tokens[1]  # unequal splits: averaging per process would weigh tokens unequally
        assert two[accum]["loss"] == pytest.approx(one_loss, abs=1e-5)
        grads = two[accum]["grads"]
        assert grads.keys() == one_grads.keys()
        for name, g in one_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=0, atol=1e-5, msg=f"{name} (accum {accum})")
    # and one process accumulating over two micro-batches gives them too
    accum_grads, _, _ = gradients(make_accelerator(tiny_config("train.trackers=[]")), accum=2)
    for name, g in one_grads.items():
        torch.testing.assert_close(accum_grads[name], g, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_two_fsdp2_processes_train_as_one_unsharded_process(tmp_path):
    """FSDP2 on gloo: the tiny model sharded as configs/accelerate/fsdp.yaml asks, over 2 CPU processes, gives
    one unsharded process's losses, gradient norms and weights over 4 steps (1 and 2 micro-batches a step)."""
    from tests.helpers import fsdp_step
    two = launch_two_processes("fsdp_step.py", tmp_path / "fsdp.pt")
    assert two["world"] == 2
    one = fsdp_step.train(make_accelerator(tiny_config("train.trackers=[]")), shard=False)
    assert one["sharded_parameters"] == 0
    for accum in (1, 2):
        sharded = two[accum]
        # every parameter was a sharded DTensor: 2 tower + 2 LM blocks were shard units, the rest the root's
        assert sharded["sharded_blocks"] == 4 and sharded["sharded_parameters"] == len(one["weights"])
        assert sharded["losses"] == pytest.approx(one["losses"], abs=1e-5)
        assert sharded["losses"][-1] < sharded["losses"][0] - 0.5  # it trained
        assert sharded["norms"] == pytest.approx(one["norms"], rel=1e-4)
        # weights to 1e-4, a thirtieth of one step's largest move (lr 3e-3): attention's key bias has a zero
        # true gradient, and AdamW turns the float noise of another summation order into steps of its own size
        for name, w in one["weights"].items():
            torch.testing.assert_close(sharded["weights"][name], w, rtol=0, atol=1e-4, msg=f"{name} (accum {accum})")


def test_mixed_precision_auto_is_off_on_a_cpu_and_follows_accelerate_launch(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision("auto") == ("bf16" if torch.cuda.is_available() else "no")
    assert resolve_mixed_precision("fp16") == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision("auto") == "bf16"
    with pytest.raises(ValueError, match="train.mixed_precision 'fp8x'"):
        make_accelerator(tiny_config("train.mixed_precision=fp8x"))


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    from data_pipelines.shards import ShardWriter
    from tests.helpers import make_records
    folder = tmp_path_factory.mktemp("toy")
    for split in ("train", "test"):
        with ShardWriter(folder / split, generator="test", maxcount=8) as w:
            for r in make_records(16):
                w.write(r)
    return folder


def toy_config(folder, *extra):
    return tiny_config(f"data.train_dir={folder / 'train'}", f"data.test_dir={folder / 'test'}", "data.synth=null",
                       "data.num_workers=0", "data.shuffle_buffer=0", "train.batch_size=4", "train.log_every=1",
                       "train.trackers=[]", "optim.warmup_steps=0", *extra)


def test_non_finite_steps_are_skipped_and_counted(toy_shards, tmp_path, monkeypatch):
    from molmini.model.vlm import MolminiModel
    from molmini.train.loop import train
    forward, calls = MolminiModel.forward, []

    def forward_with_nan_at_calls_3_and_5(self, *args, **kwargs):  # a fault injected into the real forward
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) in (3, 5):
            out["loss_sum"] = out["loss_sum"] * float("nan")
        return out

    monkeypatch.setattr(MolminiModel, "forward", forward_with_nan_at_calls_3_and_5)
    summary = train(toy_config(toy_shards, "train.max_steps=6", "train.max_nonfinite_steps=2"), tmp_path / "run")
    assert summary["steps"] == 6 and summary["nonfinite_steps"] == 2
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in log] == [0, 0, 1, 1, 2, 2]
    monkeypatch.undo()
    model = MolminiModel.from_pretrained(tmp_path / "run" / "checkpoint")
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN update reached the weights


def test_consecutive_non_finite_steps_stop_the_run_naming_the_steps(toy_shards, tmp_path):
    from molmini.train.loop import NonFiniteLossError, train

    # A learning rate this large overflows the weights after one update; every later loss is inf/NaN.
    cfg = toy_config(toy_shards, "train.max_steps=20", "train.max_nonfinite_steps=3", "optim.lr=1e30")
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row \(steps 2 to 4.*lower learning rate "
                                                 r"\(optim.lr=1e\+30\).*train.mixed_precision=no"):
        train(cfg, tmp_path / "run")


def test_a_final_checkpoint_with_non_finite_weights_is_refused_naming_the_step(toy_shards, tmp_path, monkeypatch):
    """optim.lr=.inf exited 0 with a published checkpoint of NaN weights. The config now refuses it at load;
    past that check (a config changed in code, validation switched off here) and with max_nonfinite_steps=0,
    which never stops the run, the end of the run refuses to save, naming the update that did it."""
    import molmini.train.loop as loop

    cfg = toy_config(toy_shards, "train.max_steps=4", "train.max_nonfinite_steps=0")
    cfg.optim.lr = float("inf")
    monkeypatch.setattr(loop, "validate", lambda cfg: None)
    with pytest.raises(loop.NonFiniteLossError, match=r"weights are not finite .*update of step 1; the first step "
                                                      r"with a non-finite loss or gradient norm was step 2"):
        loop.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_weights_made_non_finite_by_the_last_update_are_refused_too(toy_shards, tmp_path, monkeypatch):
    """No later step sees a NaN loss: the final check alone finds them, and names the last update."""
    from molmini.train.loop import NonFiniteLossError, train

    step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):  # the third update writes a NaN into the first weight
        out = step(self, *args, **kwargs)
        poisoning_step.calls += 1
        if poisoning_step.calls == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out
    poisoning_step.calls = 0
    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    with pytest.raises(NonFiniteLossError, match=r"1 of \d+ tensors.*update of step 3\. No checkpoint"):
        train(toy_config(toy_shards, "train.max_steps=3"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_plot_draws_a_runs_curves(toy_shards, tmp_path):
    from PIL import Image

    from molmini.cli import main
    from molmini.train.loop import train
    train(toy_config(toy_shards, "train.max_steps=4", "train.eval_every=2", "train.eval_batches=1"), tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    image = Image.open(tmp_path / "run" / "curves.png")
    assert image.size[0] > 1000 and image.size[1] > 600  # loss, lr, grad norm, samples/s, tokens/s, data wait
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_tensorboard_tracker_records_the_curves_in_the_run_folder(toy_shards, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from molmini.train.loop import train
    cfg = toy_config(toy_shards, "train.max_steps=2", "train.trackers=[tensorboard]", f"train.output_dir={tmp_path}")
    train(cfg, tmp_path / "run")
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("loss", "lr_lm", "grad_norm", "tokens_per_s", "data_wait_s"):
        assert tag in tags, tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]


def test_training_forward_compiles_without_graph_breaks(tokenizer, model_config):
    from tests.model.test_model import batch_of

    from molmini.model.vlm import MolminiModel
    from tests.helpers import make_records
    torch._dynamo.reset()
    model = MolminiModel(model_config, tokenizer, max_length=128)
    batch = batch_of(model, make_records(3))
    report = torch._dynamo.explain(model)(**batch, return_logits=False)
    assert report.graph_break_count == 0, report.break_reasons
    assert report.graph_count == 1


def _losses(folder):
    return [json.loads(l)["loss"] for l in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses(toy_shards, tmp_path):
    from molmini.train.loop import train
    torch._dynamo.reset()
    steps = ["train.max_steps=20", "train.log_every=1", "train.checkpoint_every=0"]
    train(toy_config(toy_shards, *steps), tmp_path / "eager")
    train(toy_config(toy_shards, *steps, "train.compile=true"), tmp_path / "compiled")
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 20
    assert eager[-1] < eager[0]  # it trains, so equal losses are not equal constants
    assert compiled == pytest.approx(eager, rel=2e-3, abs=2e-4)


def test_bf16_autocast_trains_on_the_cpu(toy_shards, tmp_path):
    from accelerate.state import AcceleratorState

    from molmini.train.loop import train

    # accelerate keeps one process-wide state, and its precision cannot change once set: start afresh, and
    # leave full precision behind for the tests after this one.
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        summary = train(toy_config(toy_shards, "train.max_steps=12", "train.log_every=1",
                                   "train.mixed_precision=bf16", "optim.lr=2e-3"), tmp_path / "bf16")
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    losses = _losses(tmp_path / "bf16")
    assert summary["nonfinite_steps"] == 0 and all(map(math.isfinite, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
