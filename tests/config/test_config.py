"""Configuration: defaults, YAML, overrides and the errors a user meets."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from molmini.config import ConfigError, load_config
from tests.helpers import ROOT


def test_default_yaml_loads_and_matches_the_dataclass_defaults():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert cfg.model.lm.config["model_type"] == "llama"
    assert cfg.data.synth is not None and cfg.data.synth.generator == "charts"
    assert cfg.train.max_steps > 0


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["optim.lr=2e-4", "train.trackers=[]", "data.synth=null", "model.lm.config.hidden_size=96"])
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.train.trackers == []
    assert cfg.data.synth is None
    # a partial lm.config keeps the default model_type
    assert cfg.model.lm.config["hidden_size"] == 96 and cfg.model.lm.config["model_type"] == "llama"


def test_unknown_key_names_the_key_and_suggests_the_close_one(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'.*lr"):
        load_config(path)
    with pytest.raises(ConfigError, match="'train.max_step'.*Did you mean 'max_steps'"):
        load_config(None, ["train.max_step=3"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml.*does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["optim.lr"])


@pytest.mark.slow
def test_train_py_reports_config_errors_without_a_traceback(tmp_path):
    for args, needle in ((["--config", str(tmp_path / "missing.yaml")], "does not exist"),
                         (["optim.lrr=1"], "unknown config key 'optim.lrr'")):
        res = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                             cwd=tmp_path, timeout=120)
        assert res.returncode == 2
        assert needle in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_train_py_names_an_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "data.synth=null",
                          f"data.train_dir={tmp_path / 'empty'}", f"data.test_dir={tmp_path / 'empty'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert "has no .tar shards" in res.stderr and str(tmp_path / "empty") in res.stderr
    assert "python -m data_pipelines synth charts" in res.stderr


def test_every_shipped_config_loads():
    from tests.helpers import ROOT
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    configs = [c for c in configs if "accelerate" not in c.parts]  # accelerate's own format
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.max_steps > 0, path
    preset = load_config(ROOT / "configs" / "siglip-b16-smollm2-135m.yaml")
    assert preset.model.vision.model_name == "ViT-B-16-SigLIP" and preset.model.image.max_crops == 6


def test_an_unquoted_no_stays_a_word_for_string_keys():
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(None, ["train.max_steps=no"])


@pytest.mark.parametrize("generator,options", [("tables", {}), ("documents", {"noise": False}),
                                               ("charts", {"variety": "full"})])
def test_train_py_synthesizes_any_generator_with_its_options(generator, options, tmp_path):
    import json
    import sys
    sys.path.insert(0, str(ROOT))
    from train import prepare_data
    opts = ", ".join(f"{k}: {v}" for k, v in options.items())
    cfg = load_config(None, [f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}",
                             f"data.synth={{generator: {generator}, num_train: 4, num_test: 2, image_px: 160, "
                             f"shard_size: 4, workers: 1, options: {{{opts}}}}}"])
    prepare_data(cfg)
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert manifest["num_samples"] == 4
    assert generator.rstrip("s") in json.dumps(manifest)
    for key, value in options.items():
        assert f'"{key}": {json.dumps(value)}' in json.dumps(manifest)
    bad = load_config(None, [f"data.train_dir={tmp_path / 'x'}", f"data.synth={{generator: {generator}, options: {{colour: red}}}}"])
    with pytest.raises(ConfigError, match="colour"):
        prepare_data(bad)


def test_a_scalar_for_a_list_of_words_is_one_element_not_its_letters():
    cfg = load_config(None, ["train.trackers=wandb", "optim.freeze=vision", "model.vision.feature_layers=-2"])
    assert cfg.train.trackers == ["wandb"] and cfg.optim.freeze == ["vision"]
    assert cfg.model.vision.feature_layers == [-2]
    assert load_config(None, ["train.trackers=[]"]).train.trackers == []


@pytest.mark.parametrize("override,needle", [
    ("data.mixture=data/charts/train", "data.mixture=[{dir:"),  # a list of mappings: a path alone is not one
    ("data.mixture=[data/charts/train]", "data.mixture[0]"),
    ("optim.freeze=[vision, 3]", "optim.freeze[1]"),
    ("model.vision.vision_cfg=wide", "model.vision.vision_cfg"),
    ("optim.betas=0.9", "optim.betas"),
])
def test_lists_and_mappings_are_checked_element_by_element(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["train.batch_size=0", "train.batch_size=-4", "train.log_every=0",
                                      "train.max_steps=0", "train.grad_accum_steps=0", "eval.max_new_tokens=-1",
                                      "data.transcript_prob=1.5", "optim.lr=-1", "data.synth.num_train=0"])
def test_values_out_of_range_are_refused_at_load_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(repr(key))):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [("optim.lr=.inf", "optim.lr"), ("optim.lr=inf", "optim.lr"),
                                           ("optim.grad_clip=.nan", "optim.grad_clip"),
                                           ("optim.betas=[0.9, .nan]", "optim.betas[1]"),
                                           ("data.mixture=[{dir: a, weight: 1}, {dir: b, weight: .nan}]",
                                            "data.mixture[1].weight"),
                                           ("data.mixture=[{dir: a, weight: .inf}]", "data.mixture[0].weight")])
def test_non_finite_floats_are_refused_at_load_naming_the_key(override, key):
    """YAML reads .inf and .nan as numbers; `optim.lr=.inf` trained into all-NaN weights and exited 0."""
    with pytest.raises(ConfigError, match=re.escape(repr(key)) + ".*finite"):
        load_config(None, [override])


def test_an_override_that_is_not_valid_yaml_names_the_override_and_the_fix():
    with pytest.raises(ConfigError, match=re.escape("override 'train.batch_size=[4'") + ".*not valid YAML.*"
                       + re.escape("train.batch_size=[4]")):
        load_config(None, ["train.batch_size=[4"])


@pytest.mark.parametrize("text", ["- model\n- data\n", "42\n", "just words\n"])
def test_a_config_file_whose_top_level_is_not_a_mapping_is_named(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(repr(str(path))) + ".*top level.*must be a mapping"):
        load_config(path, ["train.batch_size=4"])


def test_train_py_gives_one_error_line_for_bad_yaml(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import train
    (tmp_path / "list.yaml").write_text("- a\n")
    for argv in (["--print-config", "train.batch_size=[4"],
                 ["--print-config", "--config", str(tmp_path / "list.yaml")]):
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", ["../up", "a/b", "/abs/path", ".."])
def test_a_run_name_must_stay_inside_the_output_dir(name):
    with pytest.raises(ConfigError, match="train.run_name"):
        load_config(None, [f"train.run_name={name}"])
    assert load_config(None, ["train.run_name=stage-2.v1"]).train.run_name == "stage-2.v1"
