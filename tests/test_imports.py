"""The data commands and the top-level package stay light: `python -m data_pipelines synth|convert|curate|
inspect` never import torch, transformers or open_clip (they only read and write records), and
`import molmini` loads no model code until a model is asked for. Each command runs for real in a fresh
process, which then reports the heavy modules it loaded."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

HEAVY = ("torch", "transformers", "open_clip", "webdataset")
RUN_AND_REPORT = """
import json, runpy, sys
sys.argv = ["data_pipelines", *json.loads(sys.argv[1])]
try:
    runpy.run_module("data_pipelines", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def heavy_modules_of(*args: str) -> list[str]:
    code = RUN_AND_REPORT.format(heavy=HEAVY)
    res = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_data_commands_never_import_torch_transformers_or_open_clip(tmp_path):
    charts = tmp_path / "charts"
    assert heavy_modules_of("synth", "charts", "--out", str(charts), "--num", "6", "--workers", "1",
                            "--image-px", "64") == []
    assert heavy_modules_of("inspect", "--input", str(charts), "--out", str(tmp_path / "sheet.png"),
                            "--num", "4") == []
    assert heavy_modules_of("curate", "--input", str(charts), "--out", str(tmp_path / "curated")) == []
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(images / f"im{i}.png")
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": f"s{i}", "image": f"im{i}.png", "conversations": [
            {"from": "human", "value": "<image>\\nWhat colour?"}, {"from": "gpt", "value": "red"}]}
        for i in range(3)]))
    assert heavy_modules_of("convert", "llava", "--input", str(tmp_path / "llava.json"), "--images", str(images),
                            "--out", str(tmp_path / "converted")) == []


def test_import_molmini_loads_no_model_code_until_a_model_is_asked_for():
    code = ("import sys, molmini, molmini.config, molmini.data.records\n"
            "before = sorted(m for m in %r if m in sys.modules)\n"
            "molmini.MolminiModel\n"
            "after = sorted(m for m in %r if m in sys.modules)\n"
            "print(before, after)" % (HEAVY, HEAVY))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    before, after = res.stdout.strip().split("] [")
    assert before == "[" and {"torch", "transformers", "open_clip"} <= set(eval("[" + after))


def test_every_top_level_name_resolves():
    import molmini
    for name in molmini.__all__:
        assert getattr(molmini, name) is not None, name
