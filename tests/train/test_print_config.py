"""`train.py --print-config`: the resolved config as YAML and the parameters of the model it describes, per
component and trainable/frozen in the config's stage, equal to the model training builds, while nothing is
prepared, trained, written or downloaded."""
from __future__ import annotations

import pytest
import yaml

import train as train_cli
from molmini.config import load_config
from molmini.data.reader import find_shards
from molmini.train.loop import build_model
from molmini.train.stages import prepare_stage
from tests.helpers import ROOT, TINY_OVERRIDES, synth_tiny_charts
from tests.helpers.backbones import stand_in_overrides
from tests.helpers.hf_tiny_vlms import save_tiny_vlm


@pytest.fixture(scope="module")
def charts(tmp_path_factory):
    return synth_tiny_charts(tmp_path_factory.mktemp("charts"))


def print_config(capsys, args: list[str]) -> tuple[str, dict[str, dict[str, int]]]:
    """(stdout, component -> {total, trainable, frozen}) of `train.py --print-config ARGS`."""
    assert train_cli.main(["--print-config", *args]) == 0
    out = capsys.readouterr().out
    rows = [line[2:].split() for line in out.splitlines() if line.startswith("# ")]
    assert rows[0] == ["parameters", "total", "trainable", "frozen"]
    return out, {name: {"total": int(total.replace(",", "")), "trainable": int(trainable.replace(",", "")),
                        "frozen": int(frozen.replace(",", ""))} for name, total, trainable, frozen in rows[1:]}


def real_counts(model) -> dict[str, dict[str, int]]:
    """The same table from the model's own modules: vision tower, LM, and everything else (connector)."""
    def sizes(params):
        params = list(params)
        total, trainable = sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}
    vision, lm = model.vision.parameters(), model.lm.parameters()
    every = sizes(model.parameters())
    out = {"vision": sizes(vision), "lm": sizes(lm)}
    out["connector"] = {k: every[k] - out["vision"][k] - out["lm"][k] for k in every}
    return {**out, "total": every}


DEFAULT = ROOT / "configs" / "default.yaml"  # what --print-config reads without --config


def trained_model(overrides: list[str], config=DEFAULT):
    """The model as a training run builds it (tokenizer trained on the shards, stage applied)."""
    cfg = load_config(config, overrides)
    model = build_model(cfg, find_shards(cfg.data.train_dir) if not cfg.model.lm.name_or_path else [])
    prepare_stage(model, cfg.train, cfg.optim)
    return model


@pytest.mark.parametrize("stage", [[], ["optim.freeze=[vision,lm]"], ["train.lora.r=4"],
                                   ["model.connector.kind=pixel_shuffle", "optim.freeze=[vision]"]],
                         ids=["all", "connector-only", "lora", "pixel-shuffle"])
def test_counts_equal_the_model_training_builds_and_nothing_is_written(stage, charts, tmp_path, capsys):
    runs, absent_data = tmp_path / "runs", tmp_path / "no-data-yet"
    # data.synth stays on (the default): a real run would synthesize into absent_data first
    out, counts = print_config(capsys, [*TINY_OVERRIDES, *stage, f"data.train_dir={absent_data}/train",
                                        f"data.test_dir={absent_data}/test", f"train.output_dir={runs}"])
    model = trained_model([*TINY_OVERRIDES, *stage, f"data.train_dir={charts}/train", f"data.test_dir={charts}/test"])
    assert len(model.processor.tokenizer) == 300  # the BPE reached the configured size the count assumes
    assert counts == real_counts(model)
    assert counts["total"]["frozen"] > 0 if stage else counts["total"]["frozen"] == 0
    assert not runs.exists() and not absent_data.exists()
    # the YAML part is the resolved config: loading it gives the same config back
    (tmp_path / "printed.yaml").write_text(out)
    printed = load_config(tmp_path / "printed.yaml")
    assert printed.to_dict() == load_config(DEFAULT, [*TINY_OVERRIDES, *stage, f"data.train_dir={absent_data}/train",
                                                   f"data.test_dir={absent_data}/test",
                                                   f"train.output_dir={runs}"]).to_dict()


def test_a_preset_counts_its_pretrained_backbones_without_loading_them(charts, tmp_path, capsys):
    config = ROOT / "configs" / "siglip-b16-smollm2-135m.yaml"
    overrides = stand_in_overrides("siglip-b16-smollm2-135m", tmp_path) + ["optim.freeze=[vision]"]
    _, counts = print_config(capsys, ["--config", str(config), *overrides])
    # the real one loads the tower's and LM's weights, and the LM's tokenizer with molmini's tokens added
    assert counts == real_counts(trained_model(overrides, config))


def test_init_from_counts_the_checkpoint_and_prints_its_model(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "checkpoint")
    out, counts = print_config(capsys, [f"train.init_from={tmp_path / 'checkpoint'}", "optim.freeze=[lm]",
                                        "model.reading.weight=0"])
    stage = load_config(None, ["optim.freeze=[lm]"])
    prepare_stage(tiny_model, stage.train, stage.optim)
    assert counts == real_counts(tiny_model)
    assert yaml.safe_load(out)["model"]["lm"]["config"]["hidden_size"] == tiny_model.lm.config.hidden_size == 64
    # The reading loss stays the run's own (the default config's is on): its head joins the vision counts.
    _, reading = print_config(capsys, [f"train.init_from={tmp_path / 'checkpoint'}", "optim.freeze=[lm]"])
    head = tiny_model.vision.output_dim * len(tiny_model.processor.tokenizer) + len(tiny_model.processor.tokenizer)
    assert reading["vision"]["total"] == counts["vision"]["total"] + head


def test_a_transformers_vlm_counts_by_its_component_mapping(tmp_path, capsys):
    folder = save_tiny_vlm("qwen2_vl", tmp_path / "vlm")
    _, counts = print_config(capsys, [f"model.hf_vlm={folder}", "model.multi_annotation=turns",
                                      "optim.freeze=[vision]"])
    assert counts["vision"]["trainable"] == 0 < counts["vision"]["frozen"]
    assert counts["lm"]["trainable"] > 0 and counts["connector"]["trainable"] > 0
    from transformers import AutoModelForImageTextToText
    assert counts["total"]["total"] == sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(
        folder).parameters())


@pytest.mark.parametrize("override, named", [("model.lm.name_or_path=nobody/not-cached-lm", "hf download"),
                                             ("train.init_from=runs/nowhere/checkpoint", "is not a folder")])
def test_a_backbone_not_on_disk_is_an_error_not_a_download(override, named, capsys):
    assert train_cli.main(["--print-config", *TINY_OVERRIDES, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and override.split("=")[1] in err
