"""The main job end to end on real parts, small: synthesize, train, evaluate, reload, generate."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, TINY_OVERRIDES

pytestmark = pytest.mark.slow  # end to end: train.py runs and a two-process launch, in subprocesses

SMALL = TINY_OVERRIDES + [
    "data.synth.num_train=96", "data.synth.num_test=16", "data.synth.shard_size=24", "data.synth.image_px=32",
    "data.synth.workers=1", "data.shuffle_buffer=16", "data.num_workers=1",
    "train.max_steps=12", "train.batch_size=8", "train.log_every=4", "train.trackers=[]", "optim.warmup_steps=2",
    "eval.max_new_tokens=4",
]


def run(args, cwd, **kw):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("job")
    res = run([sys.executable, str(ROOT / "train.py"), *SMALL, "train.run_name=small"], work)
    return work, work / "runs" / "small", res.stdout


def test_run_folder_holds_checkpoint_results_and_log(finished_run):
    work, run_dir, stdout = finished_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "README.md"):
        assert (run_dir / "checkpoint" / name).is_file(), name
    log = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 12]
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["overall"]["n"] == sum(r["n"] for r in results["per_type"].values()) > 16
    for qtype, row in results["per_type"].items():
        assert qtype in stdout and "majority_answer" in row
    assert (work / "data" / "charts" / "train" / "manifest.json").is_file()
    card = (run_dir / "checkpoint" / "README.md").read_text()
    assert "model-index" in card
    cost = json.loads((run_dir / "cost.json").read_text())  # what training cost, also in the model card
    assert cost["wall_time_s"] > 0 and cost["gpu_hours"] == 0 and cost["energy_kwh"] is None  # a CPU run
    assert f"- total_wall_time_s: {cost['wall_time_s']}" in card and "- gpu_hours: 0" in card
    assert "- energy_kwh: not measured" in card


def test_checkpoint_reloads_in_a_new_process_and_reproduces_the_evaluation(finished_run):
    work, run_dir, _ = finished_run
    script = f"""
import json
from molmini import MolminiModel
from molmini.data.reader import find_shards, iter_records

model = MolminiModel.from_pretrained({str(run_dir / 'checkpoint')!r})
rows = [json.loads(l) for l in open({str(run_dir / 'eval_predictions.jsonl')!r})]
records = {{r.key: r for r in iter_records(find_shards({str(work / 'data/charts/test')!r}))}}
answers = model.generate(images=[records[r['key']].load_image() for r in rows],
                         prompts=[r['question'] for r in rows], max_new_tokens=4, batch_size=7)
print(json.dumps([answers, [r['prediction'] for r in rows]]))
"""
    res = run([sys.executable, "-c", script], work)
    answers, recorded = json.loads(res.stdout.strip().splitlines()[-1])
    assert answers == recorded


def test_second_run_reuses_the_data(finished_run):
    work, _, _ = finished_run
    shard = work / "data" / "charts" / "train" / "shard-000000.tar"
    before = shard.stat().st_mtime_ns
    res = run([sys.executable, str(ROOT / "train.py"), *SMALL, "train.max_steps=2", "train.run_name=again",
               "--no-eval"], work)
    assert "reusing 96 chart images" in (res.stdout + res.stderr)
    assert shard.stat().st_mtime_ns == before


def test_two_process_launch_reads_different_shards_and_writes_one_checkpoint(tmp_path):
    run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train.py"),
         *SMALL, "train.run_name=ddp", "--no-eval"], tmp_path)
    run_dir = tmp_path / "runs" / "ddp"
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    by_rank = summary["shards_by_rank"]
    assert len(by_rank) == 2 and by_rank[0] and by_rank[1] and not set(by_rank[0]) & set(by_rank[1])
    assert list(tmp_path.joinpath("runs").iterdir()) == [run_dir]
    assert (run_dir / "checkpoint" / "model.safetensors").is_file()
    # The schedule advances once per optimizer step, however many processes there are.
    from molmini.train.optim import warmup_cosine
    log = [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == pytest.approx([5e-4 * warmup_cosine(2, 12)(r["step"]) for r in log])


def test_training_counts_and_skips_a_corrupt_image_without_stopping(tmp_path):
    from data_pipelines.shards import ShardWriter
    from tests.helpers import make_records
    records = make_records(24)
    records[5].image = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
    for split in ("train", "test"):
        with ShardWriter(tmp_path / split, generator="test", maxcount=12) as w:
            for r in records:
                w.write(r)
    res = run([sys.executable, str(ROOT / "train.py"), *SMALL, "data.synth=null", "data.shuffle_buffer=0",
               f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}",
               "train.max_steps=6", "train.batch_size=6", "train.run_name=corrupt"], tmp_path)
    summary = json.loads((tmp_path / "runs" / "corrupt" / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_records"] >= 1
    assert records[5].key in res.stderr and "cannot be decoded" in res.stderr
    results = json.loads((tmp_path / "runs" / "corrupt" / "eval_results.json").read_text())
    assert results["skipped_records"] == 1 and results["overall"]["n"] == 2 * 23
