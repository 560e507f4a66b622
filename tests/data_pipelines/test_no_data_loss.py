"""Nothing lost: a command that fails, or that finds a folder holding something it did not write, leaves
the user's files byte-identical, and says what to do instead."""
from __future__ import annotations

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.__main__ import main as pipelines
from data_pipelines.convert import write_shards
from data_pipelines.shards import verify_manifest
from tests.helpers import ROOT, TINY_OVERRIDES, make_records, synth_tiny_charts
from tests.helpers.file_hashes import folder_hashes

sys.path.insert(0, str(ROOT))
import train  # noqa: E402


@pytest.fixture
def user_shards(tmp_path):
    """A folder of converted shards (not synthetic), with a note of the user's beside them."""
    folder = tmp_path / "my_shards"
    write_shards(make_records(6), folder, generator="convert-llava", shard_size=2, progress=False)
    (folder / "NOTES.md").write_text("where these came from\n")
    return folder


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- 1. train.py never synthesizes over a folder it did not make ---------------------------------------

def test_train_py_with_default_synth_refuses_a_folder_of_other_shards(user_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = folder_hashes(user_shards)
    code = train.main([*TINY_OVERRIDES, f"data.train_dir={user_shards}", f"data.test_dir={tmp_path / 'test'}",
                       "data.synth.num_train=8", "data.synth.num_test=4", "data.synth.image_px=32",
                       "train.max_steps=1", "train.trackers=[]", "train.run_name=r", "--no-eval"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(user_shards) in line and "data.synth=null" in line and "another" in line
    assert folder_hashes(user_shards) == before
    assert not (tmp_path / "runs" / "r").exists()


def test_synthesis_into_a_folder_of_a_different_synthetic_set_is_refused_for_train_py(tmp_path, capsys, monkeypatch):
    # Made by data.synth, but with other parameters: still not replaced when train.py asks.
    monkeypatch.chdir(tmp_path)
    data = synth_tiny_charts(tmp_path / "charts")
    before = folder_hashes(data)
    code = train.main([*TINY_OVERRIDES, f"data.train_dir={data / 'train'}", f"data.test_dir={data / 'test'}",
                       "data.synth.num_train=12", "data.synth.image_px=32", "train.trackers=[]", "--no-eval"])
    assert code == 2 and "data.synth=null" in one_error_line(capsys.readouterr().err)
    assert folder_hashes(data) == before


# ---- 2. a failed conversion, synthesis or curation leaves --out as it was ---------------------------------

def test_failed_conversions_leave_the_output_folder_byte_identical(user_shards, tmp_path, capsys):
    before = folder_hashes(user_shards)
    malformed = tmp_path / "malformed.json"
    malformed.write_text('[{"id": "1", "image": "a.png", "conver')
    wrong_columns = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"picture": [b"x"], "question": ["Q"]}), wrong_columns)
    for args, needle in ((["llava", "--input", str(tmp_path / "missing.json")], "missing.json"),
                         (["llava", "--input", str(malformed)], ""),
                         (["chartqa", "--input", str(wrong_columns)], "column")):
        code = pipelines(["convert", *args, "--out", str(user_shards), "--overwrite"])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and needle in line, line
        assert folder_hashes(user_shards) == before, args
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["my_shards", "malformed.json", "wrong.parquet"])


def test_synth_and_curate_commands_leave_a_folder_they_did_not_write(user_shards, tmp_path, capsys):
    before = folder_hashes(user_shards)
    assert pipelines(["synth", "charts", "--out", str(user_shards), "--num", "4", "--image-px", "32"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(user_shards) in line and "empty or missing" in line
    assert pipelines(["curate", "--input", str(tmp_path / "nowhere"), "--out", str(user_shards)]) == 2
    assert "nowhere" in one_error_line(capsys.readouterr().err)
    assert folder_hashes(user_shards) == before


def test_a_finished_conversion_replaces_only_the_shard_set(user_shards, tmp_path):
    entries = [{"id": str(i), "image": "a.png", "conversations": [{"from": "human", "value": f"<image>Q{i}?"},
                                                                  {"from": "gpt", "value": "A."}]} for i in range(3)]
    (tmp_path / "a.png").write_bytes(make_records(1)[0].image)
    (tmp_path / "llava.json").write_text(json.dumps(entries))
    old = folder_hashes(user_shards)
    # The set there was written by another command line: --overwrite moves it aside, and the note stays.
    assert pipelines(["convert", "llava", "--input", str(tmp_path / "llava.json"), "--out", str(user_shards),
                      "--one-record-per-row", "--overwrite"]) == 0
    assert verify_manifest(user_shards)["num_samples"] == 3
    assert (user_shards / "NOTES.md").read_text() == "where these came from\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    aside, = tmp_path.glob("my_shards.replaced-*")
    assert {n: h for n, h in old.items() if n != "NOTES.md"} == folder_hashes(aside)


# ---- 3. and 4. run folders ------------------------------------------------------------------------------

def tiny_run(data, *extra):
    """train.py's arguments for a 2-step run; `extra` are more overrides, then flags."""
    return ["--no-eval", *TINY_OVERRIDES, f"data.train_dir={data / 'train'}", f"data.test_dir={data / 'test'}",
            "data.synth=null", "data.num_workers=0", "data.shuffle_buffer=4", "train.max_steps=2", "train.batch_size=2",
            "train.log_every=1", "train.trackers=[]", "optim.warmup_steps=1", *extra]


def test_a_run_folder_that_holds_a_run_is_not_reused_without_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = synth_tiny_charts(tmp_path / "charts")
    assert train.main(tiny_run(data, "train.run_name=mine", "train.checkpoint_every=1")) == 0
    run_dir = tmp_path / "runs" / "mine"
    before = folder_hashes(run_dir)
    capsys.readouterr()
    assert train.main(tiny_run(data, "train.run_name=mine", "optim.lr=1e-3")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "runs/mine" in line and "--resume auto" in line and "train.run_name" in line and "--overwrite" in line
    assert folder_hashes(run_dir) == before

    # A finished run without checkpoints/step-N is not "resumed" by training over it either.
    (tmp_path / "runs" / "done").mkdir()
    (tmp_path / "runs" / "done" / "train_summary.json").write_text("{}")
    assert train.main(tiny_run(data, "train.run_name=done", "--resume", "auto")) == 2
    assert "finished run" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in (tmp_path / "runs" / "done").iterdir()] == ["train_summary.json"]

    # --overwrite moves the old run aside, whole, and starts anew in an empty folder.
    assert train.main(tiny_run(data, "train.run_name=mine", "--overwrite")) == 0
    aside = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("mine.replaced-")]
    assert len(aside) == 1 and folder_hashes(aside[0]) == before
    assert "moved the run" in capsys.readouterr().out
    assert not (run_dir / "checkpoints").exists()  # the old run's step-N are not this run's to resume
    assert [json.loads(l)["step"] for l in (run_dir / "train_log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "/tmp/abs", ".."])
def test_a_run_name_that_leaves_the_output_dir_is_refused(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(["train.trackers=[]", f"train.run_name={name}"]) == 2
    assert "train.run_name" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
