"""Nothing lost, nothing hangs: every bad record is counted once, by reason, and skipped, by the one record
reader that training, evaluation, curation and inspection share; input that can give no record at all
stops the run with one line naming it."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile

import pytest
import torch

from data_pipelines.shards import ShardWriter
from molmini.data.reader import BadRecords, find_shards, read_records
from molmini.data.records import Record, UnusableDataError
from molmini.data.stream import ShardStream
from tests.helpers import ROOT, TINY_OVERRIDES, make_records, png_bytes, tiny_config

# ---- writing shards with anything in them -------------------------------------------------------------

def members(record: Record) -> list[tuple[str, bytes]]:
    """The tar members of a record, as ShardWriter writes them (json first)."""
    sample = record.to_sample()
    return [(f"{record.key}.json", sample["json"]), (f"{record.key}.{record.image_ext}", sample[record.image_ext])]


def write_tar(path, entries: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def write_manifest(folder, counts: dict[str, int]) -> None:
    """The part of manifest.json that readers check counts against."""
    (folder / "manifest.json").write_text(json.dumps(
        {"shards": [{"name": name, "num_samples": n} for name, n in counts.items()]}))


def with_json(record: Record, body) -> list[tuple[str, bytes]]:
    """The record's members with its json replaced by `body` (any JSON value, or raw bytes)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [(f"{record.key}.json", raw), (f"{record.key}.png", record.image)]


def body(record: Record, **changes):
    out = {"messages": record.messages, "source": record.source, "task": record.task, "meta": record.meta}
    out.update(changes)
    return out


def keys_transform(record: Record, rng) -> dict:
    record.load_image()  # decode, as the training transform does
    return {"key": record.key}


class Hang(BaseException):
    """Not an Exception: no `except Exception` in the code under test can swallow it."""


@contextlib.contextmanager
def within(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than `seconds`."""
    def expired(signum, frame):
        raise Hang(f"still running after {seconds} s: a hang")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def toy_config(train_dir, test_dir, *extra):
    return tiny_config(f"data.train_dir={train_dir}", f"data.test_dir={test_dir}", "data.synth=null",
                       "data.num_workers=0", "data.shuffle_buffer=0", "train.batch_size=4", "train.log_every=1",
                       "train.trackers=[]", "optim.warmup_steps=0", *extra)


def write_records(folder, records, per_shard=8) -> list[str]:
    with ShardWriter(folder, generator="test", maxcount=per_shard) as w:
        for r in records:
            w.write(r)
    return find_shards(folder)


# ---- 6: one bad record must not kill a run ------------------------------------------------------------

def bad_json_shard(folder) -> tuple[list[str], list[Record]]:
    good = make_records(11)
    bad = [
        with_json(good[1], None),                                               # a null body
        with_json(good[2], [body(good[2])]),                                     # a list
        with_json(good[3], body(good[3], meta=["not", "an", "object"])),
        with_json(good[4], body(good[4], messages=[{"role": "user", "content": 3},
                                                   {"role": "assistant", "content": "4"}])),
        with_json(good[5], body(good[5], messages=[{"speaker": "user"}, {"role": "assistant", "content": "x"}])),
        with_json(good[6], body(good[6], source=7)),
        with_json(good[7], body(good[7], meta={"qa_types": "colour"})),
        with_json(good[8], b"{not json"),
        with_json(good[9], b"[" * 100000 + b"]" * 100000),  # nested deeper than the parser recurses
    ]
    entries = members(good[0]) + [m for b in bad for m in b] + members(good[10])
    folder.mkdir(exist_ok=True)
    return [write_tar(folder / "shard-000000.tar", entries)], [good[0], good[10]]


def test_json_of_the_wrong_type_or_shape_is_counted_by_reason_and_skipped(tmp_path):
    shards, kept = bad_json_shard(tmp_path)
    bad = BadRecords()
    assert [r.key for r in read_records(shards, bad)] == [r.key for r in kept]
    assert bad.by_reason == {"invalid_json": 2, "invalid_schema": 7}
    # the stream, which training reads, skips them the same way
    out = list(ShardStream(shards, keys_transform))
    assert [s["key"] for s in out] == [r.key for r in kept]
    assert out[-1]["skipped"][2:] == (9, {"invalid_json": 2, "invalid_schema": 7})


def test_tokenizer_pass_reads_through_the_validated_reader(tmp_path):
    from molmini.data.tokenizer import iter_shard_texts
    shards, kept = bad_json_shard(tmp_path / "a")
    (tmp_path / "a" / "shard-000001.tar").write_bytes(b"this is not a tar at all" * 40)
    cut = make_records(4, seed=1)
    data = open(write_tar(tmp_path / "a" / "shard-000002.tar", [m for r in cut for m in members(r)]), "rb").read()
    (tmp_path / "a" / "shard-000002.tar").write_bytes(data[:len(data) // 2 + 300])  # cut inside a member
    texts = list(iter_shard_texts(find_shards(tmp_path / "a")))
    assert texts[:4] == [m["content"] for m in kept[0].messages]
    assert set(texts) >= {m["content"] for r in kept for m in r.messages}


def test_not_a_tar_and_a_tar_cut_inside_a_member_are_counted(tmp_path):
    records = make_records(16)
    shards = write_records(tmp_path, records, per_shard=8)
    open(shards[0], "wb").write(b"\x00garbage" * 300)
    data = open(shards[1], "rb").read()
    open(shards[1], "wb").write(data[:len(data) // 2 + 700])
    bad = BadRecords()
    got = [r.key for r in read_records(shards, bad)]
    assert 0 < len(got) < 8 and got == [r.key for r in records[8:8 + len(got)]]
    # every record the manifest lists is either read or counted: the unreadable shard as all 8 of its records
    assert bad.total + len(got) == 16
    assert bad.by_reason["unreadable_shard"] == 1 and bad.by_reason["truncated_member"] == 1
    assert bad.by_reason["truncated_shard"] == 16 - len(got) - 2


# ---- 7: counts are true --------------------------------------------------------------------------------

def cut_after_records(shard, keep: int) -> None:
    with tarfile.open(shard) as tar:
        offset = tar.getmembers()[2 * keep].offset
    open(shard, "rb+").truncate(offset)


def test_heldout_counts_every_sample_a_truncated_shard_is_missing(tmp_path, tiny_model):
    from eval.heldout import evaluate
    records = make_records(16)
    shards = write_records(tmp_path / "test", records, per_shard=8)
    write_records(tmp_path / "train", make_records(8, seed=1))
    cut_after_records(shards[0], keep=2)
    results, rows = evaluate(tiny_model, str(tmp_path / "test"),
                             str(tmp_path / "train"), max_new_tokens=2)
    assert results["skipped_records"] == 6 and results["skipped_by_reason"] == {"truncated_shard": 6}
    assert results["overall"]["n"] == 2 * 10


def test_a_shard_the_manifest_lists_but_that_is_missing_is_counted_by_every_consumer(tmp_path, tiny_model):
    """Its samples were neither used nor counted (0 skipped); now each consumer counts them as missing_shard,
    as many as the manifest lists for it: the reader, training (once, with two DataLoader workers), eval
    heldout, eval run's synthetic benchmark and curate."""
    from data_pipelines.__main__ import main as pipelines
    from eval.benchmarks import load_benchmark
    from eval.heldout import evaluate
    from molmini.train.loop import train
    from molmini.train.meters import SkipCounter
    shards = write_records(tmp_path / "train", make_records(24), per_shard=6)
    write_records(tmp_path / "test", make_records(8, seed=1), per_shard=4)
    os.remove(shards[1])
    messages = []
    bad = BadRecords(on_skip=lambda skip: messages.append(skip.message))
    assert len(list(read_records(find_shards(tmp_path / "train"), bad))) == 18
    assert bad.by_reason == {"missing_shard": 6} and messages == [
        f"shard-000001.tar: listed in {tmp_path / 'train'}/manifest.json with 6 samples but not there; restore the "
        "shard or regenerate the folder"]

    loader = torch.utils.data.DataLoader(ShardStream(find_shards(tmp_path / "train"), keys_transform), batch_size=None,
                                         num_workers=2)
    counter = SkipCounter()
    keys = []
    for sample in loader:
        counter.update([sample["skipped"]])
        keys.append(sample["key"])
    assert len(keys) == 18 and counter.by_reason == {"missing_shard": 6}
    summary = train(toy_config(tmp_path / "train", tmp_path / "test", "train.max_steps=2"), tmp_path / "run")
    assert summary["skipped_by_reason"] == {"missing_shard": 6}

    results, rows = evaluate(tiny_model, str(tmp_path / "train"), str(tmp_path / "test"), max_new_tokens=1)
    assert results["skipped_by_reason"] == {"missing_shard": 6} and results["overall"]["n"] == 18 * 2
    bench = load_benchmark("synthetic", tmp_path / "train")
    assert len(list(bench)) == 18 * 2 and dict(bench.skipped_by_reason) == {"missing_shard": 6}

    assert pipelines(["curate", "--input", str(tmp_path / "train"), "--out", str(tmp_path / "curated")]) == 0
    report = json.loads((tmp_path / "curated" / "curation_report.json").read_text())
    assert report["unreadable_by_reason"] == {"missing_shard": 6}


def test_an_endless_stream_counts_each_bad_record_once_over_many_passes(tmp_path):
    import itertools
    records = make_records(12)
    records[3].image = records[3].image[:40]
    dup = Record(key=records[1].key, image=png_bytes("green"), messages=records[1].messages)
    entries = [m for r in records[:6] for m in members(r)] + members(dup) + [m for r in records[6:] for m in members(r)]
    # an adjacent repeat of a key: one member group holding two json and two png members
    entries += members(records[11])
    shards = [write_tar(tmp_path / "shard-000000.tar", entries)]
    out = list(itertools.islice(ShardStream(shards, keys_transform, endless=True), 40))  # about 4 passes
    assert out[-1]["skipped"][2:] == (4, {"duplicate_key": 1, "duplicate_member": 2, "undecodable_image": 1})
    assert {s["key"] for s in out} == {r.key for i, r in enumerate(records) if i not in (3, 11)}


def test_training_reports_a_record_over_max_length_once_by_reason(tmp_path):
    from molmini.train.loop import train
    records = make_records(16)
    records[5].messages[1]["content"] = "red " * 400  # far over data.max_length
    write_records(tmp_path / "train", records)
    write_records(tmp_path / "test", make_records(8, seed=1))
    # 12 steps of 4: every record is read three times
    summary = train(toy_config(tmp_path / "train", tmp_path / "test", "train.max_steps=12"), tmp_path / "run")
    assert summary["skipped_records"] == 1 and summary["skipped_by_reason"] == {"over_max_length": 1}
    saved = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert saved["skipped_by_reason"] == {"over_max_length": 1}


def test_a_first_turn_with_more_image_markers_than_images_is_one_reason_for_training_and_eval(tmp_path, tiny_model):
    """One rule, in the record reader: two <image> markers for one image is `image_marker_mismatch` for the
    training stream (it was `invalid_record`, from the processor) and for `eval heldout` (it was scored)."""
    from eval.heldout import evaluate
    records = make_records(4)
    two_markers = with_json(records[1], body(records[1], messages=[
        {"role": "user", "content": "<image><image>What colour are the bars?"},
        {"role": "assistant", "content": "red"}]))
    (tmp_path / "test").mkdir()
    shards = [write_tar(tmp_path / "test" / "shard-000000.tar", members(records[0]) + two_markers
                        + [m for r in records[2:] for m in members(r)])]
    write_records(tmp_path / "train", make_records(4, seed=1))
    processor = tiny_model.processor
    samples = list(ShardStream(shards, lambda record, rng: processor.process_record(record)))
    assert [s["key"] for s in samples] == [records[0].key, records[2].key, records[3].key]
    assert samples[-1]["skipped"][2:] == (1, {"image_marker_mismatch": 1})
    results, rows = evaluate(tiny_model, str(tmp_path / "test"), str(tmp_path / "train"), max_new_tokens=2)
    assert results["skipped_by_reason"] == {"image_marker_mismatch": 1}
    assert {r["key"] for r in rows} == {records[0].key, records[2].key, records[3].key}


# ---- 8: keys are unique in a shard set -------------------------------------------------------------------

def test_a_repeated_key_is_skipped_and_counted_and_never_mixes_two_records(tmp_path, tiny_model):
    from eval.benchmarks import load_benchmark
    from eval.heldout import evaluate
    records = make_records(6)
    other = Record(key=records[0].key, image=png_bytes("green", bars=4), messages=[
        {"role": "user", "content": "<image>Is this the second record?"}, {"role": "assistant", "content": "yes"}])
    (tmp_path / "test").mkdir()
    write_tar(tmp_path / "test" / "shard-000000.tar",
              [m for r in records[:3] for m in members(r)] + members(other)
              + [m for r in records[3:] for m in members(r)])
    write_records(tmp_path / "train", make_records(4, seed=1))
    results, rows = evaluate(tiny_model, str(tmp_path / "test"),
                             str(tmp_path / "train"), max_new_tokens=2)
    assert results["skipped_by_reason"] == {"duplicate_key": 1}
    first = [(r["question"], r["answer"]) for r in rows if r["key"] == records[0].key]
    assert first == records[0].qa_pairs()
    bench = load_benchmark("synthetic", tmp_path / "test")
    items = list(bench)
    assert len(items) == len({i.id for i in items}) == 12
    assert items[0].image == records[0].image and bench.skipped_rows == 1


# ---- 9: evaluating nothing is an error -----------------------------------------------------------------

def test_evaluating_an_unreadable_folder_exits_2_with_one_line(tmp_path, tiny_model, capsys):
    from eval.__main__ import main
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "shard-000000.tar").write_bytes(b"not a tar" * 100)
    write_records(tmp_path / "train", make_records(4))
    tiny_model.save_pretrained(tmp_path / "model")
    assert main(["heldout", "--model", str(tmp_path / "model"), "--test-dir", str(tmp_path / "test"),
                 "--train-dir", str(tmp_path / "train")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: nothing to evaluate in") and "unreadable_shard" in err
    assert main(["run", "--baselines", "majority", "--benchmarks", f"synthetic={tmp_path / 'test'}",
                 "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no readable item to evaluate" in err and "not a readable tar" in err


# ---- 5: nothing hangs --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_max_length_below_the_image_tokens_stops_training_with_one_line(tmp_path):
    write_records(tmp_path / "train", make_records(16))
    write_records(tmp_path / "test", make_records(8, seed=1))
    args = [sys.executable, str(ROOT / "train.py"), *TINY_OVERRIDES, "data.synth=null", "data.max_length=8",
            f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}", "data.num_workers=1",
            "train.max_steps=4", "train.batch_size=4", "train.trackers=[]", "train.run_name=short"]
    # A session of its own, so that a hang ends with its DataLoader workers too (they hold the pipes open).
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={"PATH": "", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("train.py still running after 300 s: a hang")
    res = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "over max_length=8; raise data.max_length" in errors[0] and "over_max_length" in errors[0]
    assert res.stderr.count("over max_length=8") <= 17  # each record's warning once, then the error line


def test_every_record_corrupt_stops_training(tmp_path):
    from molmini.train.loop import train
    records = make_records(16)
    for r in records:
        r.image = r.image[:50]
    write_records(tmp_path / "train", records)
    write_records(tmp_path / "test", make_records(8, seed=1))
    with within(120), pytest.raises(UnusableDataError, match=r"the last 1000 records read were all skipped.*"
                                                             r"16 bad \(16 undecodable_image\)"):
        train(toy_config(tmp_path / "train", tmp_path / "test", "train.max_steps=4"), tmp_path / "run")


def test_no_readable_json_stops_before_a_tokenizer_is_trained_on_nothing(tmp_path):
    from molmini.train.loop import train
    records = make_records(8)
    (tmp_path / "train").mkdir()
    write_tar(tmp_path / "train" / "shard-000000.tar", [m for r in records for m in with_json(r, None)])
    write_records(tmp_path / "test", make_records(8, seed=1))
    with within(120), pytest.raises(UnusableDataError, match=r"no readable record to train the tokenizer on in .*"
                                                             r"train \(shard-000000.tar\): 8 bad \(8 invalid_schema\)"):
        train(toy_config(tmp_path / "train", tmp_path / "test", "train.max_steps=4"), tmp_path / "run")


def test_a_shard_that_is_not_a_tar_stops_a_run_from_a_checkpoint(tmp_path, tiny_model):
    from molmini.train.loop import train
    tiny_model.save_pretrained(tmp_path / "init")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "shard-000000.tar").write_bytes(b"\x1f\x8b not really gzip" * 64)
    write_records(tmp_path / "test", make_records(8, seed=1))
    cfg = toy_config(tmp_path / "train", tmp_path / "test", "train.max_steps=4", f"train.init_from={tmp_path / 'init'}")
    with within(120), pytest.raises(UnusableDataError, match=r"no readable record in .*shard-000000.tar.*"
                                                             r"1 bad \(1 unreadable_shard\).*not a readable tar"):
        train(cfg, tmp_path / "run")


def test_a_worker_that_gives_up_reaches_the_trainer_as_one_line(tmp_path):
    from molmini.data.loader import next_batch
    records = make_records(4)
    records[0].image = records[0].image[:30]
    shards = write_records(tmp_path, records[:1])
    loader = torch.utils.data.DataLoader(ShardStream(shards, keys_transform, endless=True, max_consecutive_skips=5),
                                         batch_size=None, num_workers=1)
    with within(60), pytest.raises(UnusableDataError) as info:
        next_batch(iter(loader))
    assert "\n" not in str(info.value) and "the last 5 records read were all skipped" in str(info.value)


# ---- 15: converted image paths stay inside --images ------------------------------------------------------

def test_llava_image_paths_outside_the_images_folder_are_refused_and_counted(tmp_path):
    from data_pipelines.convert import convert
    images = tmp_path / "dataset" / "images"
    images.mkdir(parents=True)
    (images / "ok.png").write_bytes(png_bytes("red"))
    secret = tmp_path / "secret.png"  # a real, readable image outside the images folder
    secret.write_bytes(png_bytes("blue"))
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    entries = [{"id": "a", "image": "ok.png", "conversations": turns},
               {"id": "b", "image": "../../secret.png", "conversations": turns},
               {"id": "c", "image": str(secret), "conversations": turns},
               {"id": "d", "image": "sub/../../images/ok.png", "conversations": turns}]
    (tmp_path / "dataset" / "llava.json").write_text(json.dumps(entries))
    manifest, stats = convert("llava", tmp_path / "dataset" / "llava.json", tmp_path / "out", images_dir=images,
                              progress=False, group_by_image=False)
    assert stats.skipped == {"unsafe_image_path": 2}
    assert manifest["num_samples"] == 2
    assert all(r.image == png_bytes("red") for r in read_records(find_shards(tmp_path / "out")))


def test_a_resumed_run_counts_each_bad_record_once(tmp_path):
    from molmini.train.loop import train
    records = make_records(16)
    for i in (2, 14):  # read at steps 1 and 4 of the first pass (4 records a step, no shuffle)
        records[i].image = records[i].image[:50]
    write_records(tmp_path / "train", records, per_shard=16)
    write_records(tmp_path / "test", make_records(8, seed=1))
    cfg = lambda: toy_config(tmp_path / "train", tmp_path / "test", "train.max_steps=8",  # noqa: E731
                             "train.checkpoint_every=2", "train.keep_checkpoints=4")
    run = tmp_path / "run"
    summaries = [train(cfg(), run)]  # 32 samples: more than two passes over the 14 usable records
    # From step 6 both were counted before the checkpoint and are met again after it; from step 2 one was.
    for step in (6, 2):
        summaries.append(train(cfg(), run, resume=str(run / "checkpoints" / f"step-{step}")))
        assert summaries[-1]["resumed_from_step"] == step
    for summary in summaries:
        assert summary["skipped_records"] == 2 and summary["skipped_by_reason"] == {"undecodable_image": 2}
