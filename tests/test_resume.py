"""Surviving a kill: a run SIGKILLed while writing a checkpoint keeps the previous one loadable, and
`--resume auto` from it logs the same losses and ends with the same weights as a run never interrupted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import ROOT, TINY_OVERRIDES, synth_tiny_charts
from molmini.checkpointing import complete_checkpoints, resolve_resume

# Dies by SIGKILL once the state of step `die_at` is on disk but before it is marked complete and renamed.
KILLED_DURING_WRITE = """
import os, signal, sys
import molmini.checkpointing as C
write = C._write_synced
def dying(path, text):
    if path.name == C.COMPLETE and path.parent.name == ".tmp-step-{die_at}":
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, text)
C._write_synced = dying
sys.argv = ["train.py", *sys.argv[1:]]
sys.path.insert(0, {root!r})
import train
sys.exit(train.main())
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_tiny_charts(tmp_path_factory.mktemp("charts"), train_shard_size=8)


def args(data, name):
    return TINY_OVERRIDES + [
        f"data.train_dir={data / 'train'}", f"data.test_dir={data / 'test'}", "data.synth=null",
        "data.num_workers=1", "data.shuffle_buffer=8", "data.transcript_prob=0.5",
        "train.max_steps=12", "train.batch_size=4", "train.log_every=1", "train.trackers=[]",
        "train.checkpoint_every=4", "train.keep_checkpoints=1", "optim.warmup_steps=2",
        f"train.run_name={name}", "--no-eval"]


def start(cmd, cwd):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def launch(cmd, cwd):
    return finish(start(cmd, cwd))


def losses(run_dir):
    return {r["step"]: (r["loss"], r["grad_norm"], r["lr"])
            for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())}


def test_kill_during_checkpoint_write_then_resume_matches_uninterrupted_run(data, tmp_path):
    full = start([sys.executable, str(ROOT / "train.py"), *args(data, "full")], tmp_path)  # alongside
    script = KILLED_DURING_WRITE.format(die_at=8, root=str(ROOT))
    killed = launch([sys.executable, "-c", script, *args(data, "killed")], tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "killed"
    assert (run_dir / "checkpoints" / ".tmp-step-8").is_dir()  # the half-written one
    assert not (run_dir / "checkpoint").exists()
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-4"]
    assert resolve_resume(run_dir, "auto").name == "step-4"
    assert max(losses(run_dir)) >= 8  # it had trained past the checkpoint it resumes from

    resumed = launch([sys.executable, str(ROOT / "train.py"), *args(data, "killed"), "--resume", "auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = finish(full)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "(step 4)" in resumed.stdout
    expected, got = losses(tmp_path / "runs" / "full"), losses(run_dir)
    assert sorted(got) == list(range(1, 13))
    assert {s: got[s] for s in range(5, 13)} == {s: expected[s] for s in range(5, 13)}
    a = load_file(tmp_path / "runs" / "full" / "checkpoint" / "model.safetensors")
    b = load_file(run_dir / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # The rewrite of step 8 replaced the half-written folder, and only the last checkpoint is kept.
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-8"]
    assert not (run_dir / "checkpoints" / ".tmp-step-8").exists()


def test_resume_auto_without_a_checkpoint_starts_fresh_and_needs_a_run_name(tmp_path):
    assert resolve_resume(tmp_path, "auto") is None
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        resolve_resume(tmp_path, str(tmp_path))
    res = launch([sys.executable, str(ROOT / "train.py"), "--resume", "auto"], tmp_path)
    assert res.returncode == 2 and "train.run_name" in res.stderr
