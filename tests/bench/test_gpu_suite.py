"""bench/gpu_suite.sh in its CPU dry run: every part runs (tiny shapes, a few steps) and the gathered results
file holds each part's status and figures, as a GPU run's would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SUITE = ROOT / "bench" / "gpu_suite.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the suite is a bash script using coreutils' timeout")


def run_suite(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SUITE), *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_dry_run_gathers_every_part_with_numbers(tmp_path):
    out = tmp_path / "results"
    done = run_suite("--dry-run", "--out", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("dryrun-*.json")
    report = json.loads(path.read_text())
    assert report["dry_run"] is True and report["total_seconds"] > 0
    parts = report["parts"]
    assert parts["install"] is None  # a dry run installs nothing
    for name in ("train_eager", "train_compiled", "generate", "train_run", "fsdp"):
        assert parts[name]["status"] == "ok", (name, parts[name])
        assert 0 < parts[name]["seconds"] <= parts[name]["budget_s"]
    eager, compiled = parts["train_eager"]["result"], parts["train_compiled"]["result"]
    assert eager["models"].keys() == {"molmini attention_pool_2x2", "molmini mlp", "llava"}
    assert compiled["compiled"] == "aot_eager" and compiled["models"].keys() == {"molmini mlp", "llava"}
    for result in (eager, compiled):
        assert all(m["samples_per_s"] > 0 and m["lm_tokens_per_s"] > 0 for m in result["models"].values())
        assert all(r["samples_per_s"] > 0 for r in result["ratio_to_llava"].values())
    generate = parts["generate"]["result"]
    assert all(v["new_tokens_per_s"] > 0 for m in generate["models"].values() for v in m.values())
    run, fsdp = parts["train_run"]["result"], parts["fsdp"]["result"]
    assert run["steps"] == 2 and run["samples_per_s"] > 0 and run["heldout_overall"]["n"] == 8
    assert fsdp["steps"] == 2 and fsdp["num_processes"] == 1 and fsdp["loss_last"] > 0
    assert report["headline"]["train_run"]["samples_per_s"] == run["samples_per_s"]


def test_unknown_arguments_and_missing_values_are_named(tmp_path):
    done = run_suite("--dry", tmp_path=tmp_path)
    assert done.returncode == 2 and "unknown argument '--dry'" in done.stderr
    done = run_suite("--wheels", tmp_path=tmp_path)
    assert done.returncode == 2 and "--wheels needs a value" in done.stderr
