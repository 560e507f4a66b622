"""Surviving a kill: a run SIGKILLed while writing a checkpoint keeps the previous one loadable, and
`--resume auto` from it logs the same losses and ends with the same weights as a run never interrupted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from molmini.train.checkpointing import complete_checkpoints, resolve_resume
from tests.helpers import ROOT, TINY_OVERRIDES, synth_tiny_charts

# Dies by SIGKILL once the state of step `die_at` is on disk but before it is marked complete and renamed.
KILLED_DURING_WRITE = """
import os, signal, sys
import molmini.train.checkpointing as C
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_auto_without_a_checkpoint_starts_fresh_and_needs_a_run_name(tmp_path):
    assert resolve_resume(tmp_path, "auto") is None
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        resolve_resume(tmp_path, str(tmp_path))
    res = launch([sys.executable, str(ROOT / "train.py"), "--resume", "auto"], tmp_path)
    assert res.returncode == 2 and "train.run_name" in res.stderr


# ---- what a resume refuses, and what it survives ---------------------------------------------------------

@pytest.fixture(scope="module")
def checkpointed_run(data, tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 2 and 4 (train.py's main, in this process)."""
    sys.path.insert(0, str(ROOT))
    import train
    work = tmp_path_factory.mktemp("work")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert train.main(resumable(data)) == 0
    finally:
        os.chdir(cwd)
    return work / "runs" / "ckpt"


def resumable(data, *extra):
    return ["--no-eval", *TINY_OVERRIDES, f"data.train_dir={data / 'train'}", f"data.test_dir={data / 'test'}",
            "data.synth=null", "data.num_workers=0", "data.shuffle_buffer=4", "train.max_steps=6",
            "train.batch_size=2", "train.log_every=1", "train.trackers=[]", "train.checkpoint_every=2",
            "train.keep_checkpoints=2", "optim.warmup_steps=1", "train.run_name=ckpt", *extra]


@pytest.fixture
def run_copy(checkpointed_run, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(checkpointed_run, tmp_path / "runs" / "ckpt")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs" / "ckpt"


def test_resuming_with_changed_training_settings_is_refused_naming_them(data, run_copy, capsys, caplog):
    import train
    from tests.helpers.file_hashes import folder_hashes
    before = folder_hashes(run_copy)
    assert train.main(resumable(data, "optim.lr=1e-3", "train.batch_size=4", "--resume", "auto")) == 2
    err = capsys.readouterr().err
    assert "optim.lr 0.0005 -> 0.001" in err and "train.batch_size 2 -> 4" in err and "Traceback" not in err
    assert folder_hashes(run_copy) == before
    # Settings that only change what is logged are applied, said, and recorded.
    assert train.main(resumable(data, "train.log_every=2", "--resume", "auto")) == 0
    out, err = capsys.readouterr()
    assert "(step 4)" in out and "train.log_every 1 -> 2" in caplog.text
    assert "log_every: 2" in (run_copy / "config.yaml").read_text()


def test_a_damaged_latest_checkpoint_is_named_and_the_one_before_it_resumed(data, run_copy, capsys, caplog):
    import train
    optimizer = run_copy / "checkpoints" / "step-4" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # cut short
    with open(run_copy / "train_log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a kill while writing the log
    assert train.main(resumable(data, "--resume", "auto")) == 0
    out = capsys.readouterr().out
    assert "step-4/optimizer.bin is 100 bytes" in caplog.text and "falling back" in caplog.text
    assert "step-2 (step 2)" in out
    assert [json.loads(l)["step"] for l in (run_copy / "train_log.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_a_cut_short_trainer_state_is_named(run_copy):
    state = run_copy / "checkpoints" / "step-4" / "trainer_state.json"
    state.write_text(state.read_text()[:10])
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        resolve_resume(run_copy, str(state.parent))
    assert resolve_resume(run_copy, "auto").name == "step-2"


def test_plot_leaves_out_a_last_log_line_cut_short(run_copy):
    from molmini.cli import main
    with open(run_copy / "train_log.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    assert main(["plot", str(run_copy)]) == 0 and (run_copy / "curves.png").is_file()
