"""A non-editable install works: the wheel built from this tree holds every module, the shipped configs and
the published scores, and its commands run from a directory that is not the clone.

The wheel is built from a copy of the tree (a build writes build/ and *.egg-info beside the sources) with the
venv's own setuptools, offline, and installed with --no-deps into a fresh venv that reaches this venv's
packages (torch, transformers, ...) through a .pth path: plain paths, so this venv's editable install of
molmini stays out and every import of molmini comes from the wheel.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from molmini.config import load_config
from tests.helpers import ROOT, synth_tiny_charts

pytestmark = pytest.mark.slow  # end to end: the wheel built and installed into a fresh venv

PACKAGES = ("molmini", "eval", "data_pipelines")
BUILD_INPUTS = ("pyproject.toml", "README.md", "train.py", "configs", *PACKAGES)


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "src").mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp / "src" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, tmp / "src" / name)
    run([sys.executable, "-m", "pip", "wheel", str(tmp / "src"), "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp / "dist")], cwd=tmp)
    [built] = (tmp / "dist").glob("molmini-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with the wheel installed."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root)
    python = root / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    Path(purelib.stdout.strip(), "molmini_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel)], cwd=root)
    return root / "bin"


def test_the_wheel_holds_every_module_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = [p for package in PACKAGES for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
    missing = sorted(str(p.relative_to(ROOT)) for p in tree if str(p.relative_to(ROOT)) not in names)
    assert not missing, f"add their packages to [tool.setuptools] packages / package-data in pyproject.toml: {missing}"
    configs = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs and all(f"molmini/configs/{c}" in names for c in configs)
    assert "train.py" in names and "eval/published_scores.csv" in names


def test_installed_commands_run_from_another_directory(venv, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([str(venv / "python"), "-c", "import molmini, eval, train, data_pipelines; from eval.report import "
                 "PUBLISHED_SCORES as p; print(molmini.__file__, eval.__file__, train.__file__, p, p.is_file())"],
                cwd=work).stdout.split()
    assert all(str(venv.parent) in path for path in where[:4]) and where[-1] == "True"

    printed = run([str(venv / "molmini-train"), "--print-config"], cwd=work).stdout
    assert yaml.safe_load(printed) == load_config(ROOT / "configs" / "default.yaml").to_dict()
    assert "# total" in printed
    recipe = run([str(venv / "molmini-train"), "--print-config", "--config", "configs/recipes/chart-reader-cpu.yaml",
                  "train.max_steps=7"], cwd=work).stdout
    assert yaml.safe_load(recipe) == load_config(ROOT / "configs" / "recipes" / "chart-reader-cpu.yaml",
                                                 ["train.max_steps=7"]).to_dict()
    assert "usage: molmini" in run([str(venv / "molmini"), "--help"], cwd=work).stdout
    assert sorted(os.listdir(work)) == []  # no run folder, no data

    charts = synth_tiny_charts(tmp_path / "charts")
    run([str(venv / "python"), "-m", "eval", "run", "--baselines", "majority", "--benchmarks",
         f"synthetic={charts / 'test'}", "--out", "results"], cwd=work)
    run([str(venv / "python"), "-m", "eval", "report", "results", "--out", "report"], cwd=work)
    report = json.loads((work / "report" / "report.json").read_text())
    assert report["benchmarks"] == ["synthetic"] and [r["kind"] for r in report["rows"]] == ["baseline"]


def test_a_configs_path_names_the_shipped_config_from_any_directory(tmp_path, monkeypatch):
    from molmini.config import ConfigError
    from molmini.config.shipped import resolve_config
    monkeypatch.chdir(tmp_path)
    recipe = "configs/recipes/chart-reader-cpu.yaml"
    assert resolve_config(recipe).read_text() == (ROOT / recipe).read_text()
    assert resolve_config("stages/1_align.yaml").read_text() == (ROOT / "configs/stages/1_align.yaml").read_text()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("train: {max_steps: 3}\n")
    assert resolve_config("configs/default.yaml") == Path("configs/default.yaml")  # a file here comes first
    with pytest.raises(ConfigError, match="configs/nope.yaml.*does not exist") as error:
        resolve_config("configs/nope.yaml")
    assert recipe in str(error.value) and "accelerate" not in str(error.value)
