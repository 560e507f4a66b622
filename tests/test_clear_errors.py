"""Nothing hangs on a bad input: each command line answers it with one line naming the input and exit
status 2, no traceback (unless asked for with MOLMINI_DEBUG=1 or --debug)."""
from __future__ import annotations

import json
import sys

import pytest

from data_pipelines.__main__ import main as pipelines
from molmini.cli import main as molmini
from tests.helpers import ROOT, png_bytes

sys.path.insert(0, str(ROOT))
import train  # noqa: E402


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "chart.png"
    path.write_bytes(png_bytes("red"))
    return path


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return tiny_model.save_pretrained(tmp_path / "checkpoint")


def generate(model, image, *extra):
    return molmini(["generate", "--model", str(model), "--image", str(image), "--prompt", "What colour?", *extra])


def test_generate_refuses_out_of_range_options_before_loading(image, capsys):
    for option, value in (("--max-new-tokens", "-1"), ("--batch-size", "0"), ("--top-p", "2")):
        with pytest.raises(SystemExit) as info:
            generate("no-model-needed", image, option, value)
        assert info.value.code == 2 and option in capsys.readouterr().err


def test_generate_names_a_prompt_with_more_image_markers_than_images(image, capsys):
    code = molmini(["generate", "--model", "not/loaded", "--image", str(image), "--prompt", "<image><image>Same?"])
    assert code == 2 and "2 <image> markers for 1 image" in error_line(capsys)


def test_a_model_that_is_neither_a_folder_nor_on_the_hub(image, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the hub is unreachable
    assert generate("runs/typo", image) == 2
    line = error_line(capsys)
    assert "'runs/typo'" in line and "no such folder" in line and "hub id" in line


def test_a_checkpoint_without_its_tokenizer_names_the_file(checkpoint, image, capsys):
    (checkpoint / "tokenizer.json").unlink()
    assert generate(checkpoint, image) == 2
    assert str(checkpoint / "tokenizer.json") in error_line(capsys)


@pytest.mark.parametrize("saved", ["[1, 2]", "null", "\"words\""])
def test_a_processor_config_that_is_not_an_object_names_the_file(checkpoint, image, capsys, saved):
    (checkpoint / "processor_config.json").write_text(saved)
    assert generate(checkpoint, image) == 2
    line = error_line(capsys)
    assert str(checkpoint / "processor_config.json") in line and "not a valid processor config" in line


def test_weights_that_do_not_match_the_config_are_one_line(checkpoint, image, capsys, monkeypatch):
    saved = json.loads((checkpoint / "config.json").read_text())
    saved["model"]["connector"]["mlp_hidden"] = 24  # the saved connector has another width
    (checkpoint / "config.json").write_text(json.dumps(saved))
    assert generate(checkpoint, image) == 2
    assert "model.safetensors does not match" in error_line(capsys)
    monkeypatch.setenv("MOLMINI_DEBUG", "1")  # asked for: the traceback
    with pytest.raises(ValueError, match="does not match"):
        generate(checkpoint, image)


def test_an_output_dir_under_a_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file")
    assert train.main(["--no-eval", "data.synth=null", "train.trackers=[]", "train.output_dir=notes.txt/runs",
                       "train.run_name=r"]) == 2
    line = error_line(capsys)
    assert "notes.txt is a file" in line and "train.output_dir" in line
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_data_pipelines_on_a_missing_folder(tmp_path, capsys, monkeypatch):
    assert pipelines(["inspect", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "s.png")]) == 2
    assert str(tmp_path / "missing") in error_line(capsys)
    with pytest.raises(FileNotFoundError):
        pipelines(["--debug", "inspect", "--input", str(tmp_path / "missing")])
