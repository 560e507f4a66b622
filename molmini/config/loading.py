"""Typed configuration: one dataclass per concern (molmini/config/schema.py), loaded from YAML with dotted
command-line overrides and checked here.

``load_config("configs/default.yaml", ["optim.lr=1e-4"])`` gives a :class:`Config`. Unknown keys are
errors that name the key and the keys that exist, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from molmini.config.schema import (Config, ConfigError, ConnectorConfig, DataConfig, EvalConfig, ImageConfig, LMConfig,
                                   LoraConfig, ModelConfig, OptimConfig, ReadingConfig, SynthConfig, TokenizerConfig,
                                   TrainConfig, VisionConfig)

__all__ = ["COMPONENTS", "Config", "ConfigError", "ConnectorConfig", "DataConfig", "EvalConfig", "ImageConfig",
           "LMConfig", "LoraConfig", "ModelConfig", "OptimConfig", "ReadingConfig", "SynthConfig", "TokenizerConfig", "TrainConfig",
           "VisionConfig", "check_run_name", "flat_dict", "from_dict", "load_config", "save_config", "validate"]


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass in a field type such as `SynthConfig | None`, if there is one."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys with the name of the key."""
    where = path or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}.{hint} Keys allowed in {where}: {', '.join(names)}")
        sub = _dataclass_type(hints[key])
        if sub is not None and value is not None:
            kwargs[key] = from_dict(sub, value, dotted)
        else:
            kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    """Check a value against its field type; YAML reads '1e-4' as a string, so floats are parsed. Lists and
    dicts are checked element by element; a single scalar given for a list of scalars is that one element
    (train.trackers=wandb means [wandb], not the letters w, a, n, d, b)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if args and type(None) in args:  # an optional value, e.g. int | None
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        return _coerce(rest[0], value, dotted) if len(rest) == 1 else value
    if origin is list:
        (item,) = args or (Any,)
        if not isinstance(value, list):
            if item in (str, int, float) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]
            else:
                raise ConfigError(f"config key {dotted!r} must be a list of {_type_name(item)}, got {value!r}"
                                  + _list_hint(item, dotted))
        return [_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        value_type = args[1] if len(args) == 2 else Any
        if not isinstance(value, dict):
            raise ConfigError(f"config key {dotted!r} must be a mapping ({{key: value, ...}}), got {value!r}")
        return {k: _coerce(value_type, v, f"{dotted}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif tp in (str, bool) and isinstance(value, tp):
        return value
    elif tp is str and isinstance(value, bool):
        # YAML reads an unquoted no/off/false as False (e.g. train.mixed_precision=no): keep the word meant
        return "yes" if value else "no"
    elif tp not in (float, int, str, bool):
        return value
    raise ConfigError(f"config key {dotted!r} must be {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is dict:
        return "mappings"
    return getattr(tp, "__name__", str(tp))


def _list_hint(item: Any, dotted: str) -> str:
    if typing.get_origin(item) is dict and dotted == "data.mixture":
        return "; e.g. data.mixture=[{dir: data/charts/train, weight: 1.0}]"
    return ""


# ---- ranges -----------------------------------------------------------------------------------------------

COMPONENTS = ("vision", "connector", "lm")  # the keys of the per-component learning rates and warmups


def check_run_name(name: str) -> None:
    """A run name is one folder inside train.output_dir: no separators, no '..', not absolute."""
    if name and (name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute()):
        raise ConfigError(f"train.run_name {name!r} must be a plain folder name (no '/', no '..'): the run "
                          "folder is train.output_dir/NAME; put runs elsewhere with train.output_dir")


def validate(cfg: Config) -> None:
    """Reject values out of range when the config loads, naming the key, rather than failing at step 1
    (train.log_every=0) or training nonsense without a word (train.max_steps=0)."""
    at_least = [("train.batch_size", cfg.train.batch_size, 1), ("train.max_steps", cfg.train.max_steps, 1),
                ("train.log_every", cfg.train.log_every, 1), ("train.grad_accum_steps", cfg.train.grad_accum_steps, 1),
                ("train.checkpoint_every", cfg.train.checkpoint_every, 0),
                ("train.keep_checkpoints", cfg.train.keep_checkpoints, 0),
                ("train.eval_every", cfg.train.eval_every, 0),
                ("train.max_nonfinite_steps", cfg.train.max_nonfinite_steps, 0), ("train.lora.r", cfg.train.lora.r, 0),
                ("data.max_length", cfg.data.max_length, 1), ("data.shuffle_buffer", cfg.data.shuffle_buffer, 0),
                ("data.num_workers", cfg.data.num_workers, 0), ("eval.batch_size", cfg.eval.batch_size, 1),
                ("eval.max_new_tokens", cfg.eval.max_new_tokens, 1), ("eval.max_items", cfg.eval.max_items, 0),
                ("model.tokenizer.vocab_size", cfg.model.tokenizer.vocab_size, 1),
                ("model.image.max_crops", cfg.model.image.max_crops, 0),
                ("optim.lr", cfg.optim.lr, 0), ("optim.weight_decay", cfg.optim.weight_decay, 0),
                ("optim.warmup_steps", cfg.optim.warmup_steps, 0)]
    at_least += [(f"optim.lr_{c}", getattr(cfg.optim, f"lr_{c}"), 0) for c in COMPONENTS]
    at_least += [(f"optim.warmup_{c}", getattr(cfg.optim, f"warmup_{c}"), -1) for c in COMPONENTS]
    at_least += [("optim.lr_reader", cfg.optim.lr_reader, 0), ("optim.warmup_reader", cfg.optim.warmup_reader, -1),
                 ("model.reading.weight", cfg.model.reading.weight, 0),
                 ("model.reading.answer_weight", cfg.model.reading.answer_weight, 0)]
    if cfg.train.eval_every > 0:
        at_least.append(("train.eval_batches", cfg.train.eval_batches, 1))
    if cfg.data.synth is not None:
        synth = cfg.data.synth
        at_least += [("data.synth.num_train", synth.num_train, 1), ("data.synth.num_test", synth.num_test, 1),
                     ("data.synth.image_px", synth.image_px, 32), ("data.synth.shard_size", synth.shard_size, 1),
                     ("data.synth.workers", synth.workers, 1)]
    check_finite(cfg.to_dict())
    for key, value, low in at_least:
        if value < low:
            raise ConfigError(f"config key {key!r} must be at least {low}, got {value!r}")
    reading = cfg.model.reading
    if reading.answer_weight == 0 and (reading.weight == 0 or cfg.model.hf_vlm):
        raise ConfigError("model.reading.answer_weight=0 leaves no loss to train without the reading loss (off at "
                          "model.reading.weight=0, and for a transformers VLM, model.hf_vlm); set the answer weight "
                          "back to 1")
    for key, value in (("data.transcript_prob", cfg.data.transcript_prob),
                       ("train.lora.dropout", cfg.train.lora.dropout)):
        if not 0 <= value <= 1:
            raise ConfigError(f"config key {key!r} must be between 0 and 1, got {value!r}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), e.g. [0.9, 0.95]; got "
                          f"{cfg.optim.betas!r}")
    # Names (optim.freeze, train.mixed_precision, model.multi_annotation) are checked where they are used.
    check_run_name(cfg.train.run_name)


def check_finite(value: Any, dotted: str = "") -> None:
    """Every float of the config, nested mappings and lists included (data.mixture's weights, lm.config), is
    finite: YAML reads `.inf` and `.nan` as numbers, and a learning rate or a weight of inf or NaN trains
    without complaint into weights that are all NaN."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{dotted}.{k}" if dotted else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{dotted}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {dotted!r} must be a finite number, got {value!r}; give an ordinary "
                          "number (YAML reads .inf and .nan as infinity and not-a-number)")


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. optim.lr=1e-4")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {k!r} is a value, not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", "") or e).split())
        raise ConfigError(f"override {override!r}: the value {raw!r} is not valid YAML ({problem}); close its "
                          f"brackets and quotes (e.g. {dotted.strip()}=[4] for a list), or quote the whole value "
                          "as a string") from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path` (if given), then each dotted override in order."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist. Pass an existing YAML file with "
                              "--config (the default run uses configs/default.yaml from the repository root)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r}: its top level is a {type(data).__name__}, but it must be "
                              "a mapping of sections (model:, data:, optim:, train:, eval:), as in "
                              "configs/default.yaml")
    for ov in overrides or []:
        apply_override(data, ov)
    name = (data.get("model") or {}).get("preset")
    if name:
        from molmini.config.presets import preset
        try:
            data["model"] = _merge(preset(name), data["model"])
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
    cfg = from_dict(Config, data)
    # Sections given only partly keep the defaults of the missing keys, including nested dict defaults
    # such as lm.config: a file that sets lm.config.hidden_size keeps the default model_type.
    lm_given = ((data.get("model") or {}).get("lm") or {}).get("config")
    if lm_given is not None and "model_type" not in lm_given and not cfg.model.lm.name_or_path:
        cfg.model.lm.config = _merge(LMConfig().config, lm_given)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def flat_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys (`train.lr`), values that are not numbers, strings or None as strings:
    what trackers and the resume check compare."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_dict(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
