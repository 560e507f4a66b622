"""Typed configuration: one dataclass per concern, loaded from YAML with dotted command-line overrides.

``load_config("configs/default.yaml", ["optim.lr=1e-4"])`` gives a :class:`Config`. Unknown keys are
errors that name the key and the keys that exist, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


@dataclass
class VisionConfig:
    # An open_clip model name; "molmini-vit" is molmini's own small config (molmini/model_configs/).
    model_name: str = "molmini-vit"
    # open_clip pretrained tag or a path to a saved state dict; empty means random init.
    pretrained: str = ""
    # Overrides of open_clip's vision_cfg (width, layers, patch_size, image_size, ...), for custom towers.
    vision_cfg: dict[str, Any] = field(default_factory=dict)
    # Which transformer blocks give the patch features (negative counts from the last); concatenated.
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    # Channels of a convolutional stem that replaces the ViT's patchify convolution (random-init open_clip
    # ViTs only): one 3x3 stride-2 convolution per entry, then one to the tower width for the rest of the
    # patch stride. Early convolutions learn glyph and edge features from far fewer samples (Xiao et al.
    # 2021, "Early convolutions help transformers see better"). Empty: the plain patch embedding.
    conv_stem: list[int] = field(default_factory=list)


@dataclass
class ConnectorConfig:
    # attention_pool_2x2 (Molmo), pixel_shuffle (SmolVLM/nanoVLM) or mlp (LLaVA); see molmini/connector.py.
    kind: str = "attention_pool_2x2"
    # Hidden width of the connector's MLP: 0 means 2x the LM width (attention_pool_2x2) or the LM width (mlp).
    mlp_hidden: int = 0


@dataclass
class LMConfig:
    # A transformers hub id or local folder of a causal LM; empty means build from `config` (random init).
    name_or_path: str = ""
    # transformers config fields (must include model_type) for a randomly initialised LM.
    config: dict[str, Any] = field(default_factory=lambda: {
        "model_type": "llama", "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "max_position_embeddings": 512,
        "tie_word_embeddings": True})
    attn_implementation: str = "sdpa"


@dataclass
class TokenizerConfig:
    # For a from-scratch LM: size of the BPE vocabulary trained on the training text.
    vocab_size: int = 1024
    # Split numbers into single digits before BPE (Llama/Qwen do): values are written digit by digit.
    split_digits: bool = False


@dataclass
class ImageConfig:
    """How an image is cut for the tower (molmini/crops.py)."""
    # 0: the global view only (the image resized to the tower's size, aspect ratio kept); N > 0: the global
    # view plus a grid of up to N overlapping crops at the tower's resolution (Molmo uses 12).
    max_crops: int = 0
    # Patches on each inner side of a crop that overlap its neighbour and are dropped; empty: a sixth of
    # the crop's patch grid, rounded (Molmo: 4 of 24).
    overlap_margin: int | None = None


@dataclass
class ModelConfig:
    # A named preset (molmini/presets.py) whose settings the keys below override; empty: none.
    preset: str = ""
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    # How a record's question/answer pairs share one sequence: "turns" (one conversation, each answer
    # sees the earlier pairs) or "masked" (Molmo: each answer sees only the image and its own question).
    multi_annotation: str = "turns"


@dataclass
class SynthConfig:
    """How `train.py` creates synthetic data in data folders that are empty or missing (a folder holding
    anything but this very set is an error, never replaced)."""
    # charts, tables or documents (data_pipelines/synth/)
    generator: str = "charts"
    # Extra arguments of that generator's synthesize(), e.g. {variety: full} for charts, {noise: false}
    # for documents; see `python -m data_pipelines synth GENERATOR --help`.
    options: dict[str, Any] = field(default_factory=dict)
    num_train: int = 4000
    num_test: int = 500
    seed: int = 0
    test_seed: int = 1_000_003
    image_px: int = 128
    shard_size: int = 500
    workers: int = 2


@dataclass
class DataConfig:
    train_dir: str = "data/charts/train"
    test_dir: str = "data/charts/test"
    # Create the shards with the synthetic generator when a data folder is empty or missing; null: use
    # the folders as they are.
    synth: SynthConfig | None = field(default_factory=SynthConfig)
    shuffle_buffer: int = 1000
    num_workers: int = 1
    # Chance that a record's meta.transcript is trained on as one more exchange (see molmini.training).
    transcript_prob: float = 0.0
    # False: train on each record's meta.transcript alone (caption pretraining).
    train_questions: bool = True
    max_length: int = 256
    # A weighted mixture of shard folders, e.g. [{dir: data/charts, weight: 0.7}, {dir: data/docs, weight: 0.3}];
    # molmini.stream.mixture_sources checks it and MixtureStream reads it. Empty: train_dir alone.
    mixture: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # max global gradient norm; 0 or less: no clipping
    warmup_steps: int = 50
    # Per-component learning rates and warmups (Molmo pretrains with connector 2e-4, vision 6e-6, LM 2e-5);
    # 0 (lr) or -1 (warmup) means use `lr` / `warmup_steps`.
    lr_vision: float = 0.0
    lr_connector: float = 0.0
    lr_lm: float = 0.0
    warmup_vision: int = -1
    warmup_connector: int = -1
    warmup_lm: int = -1
    # Components left out of training (of vision, connector, lm): their weights stay bit-identical and
    # they are not in the optimizer. Connector alignment freezes [vision, lm].
    freeze: list[str] = field(default_factory=list)


@dataclass
class LoraConfig:
    """LoRA adapters on the language model through peft; r=0 trains the LM's own weights instead. The
    adapters are merged into the LM before the checkpoint is saved, so it loads without peft."""
    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    batch_size: int = 32
    max_steps: int = 1000
    seed: int = 0
    log_every: int = 10
    output_dir: str = "runs"
    run_name: str = ""  # empty: a timestamped name
    # Trackers for accelerate: "wandb" (offline unless WANDB_MODE says otherwise), "tensorboard", or none.
    trackers: list[str] = field(default_factory=lambda: ["wandb"])
    project: str = "molmini"
    # Micro-batches per optimizer step: the global batch is batch_size x grad_accum_steps x processes.
    grad_accum_steps: int = 1
    # no, bf16 or fp16; auto: what `accelerate launch` was told, else bf16 on a GPU that has it, else no.
    mixed_precision: str = "auto"
    # Recompute the activations of the vision tower's and the LM's blocks in the backward pass.
    gradient_checkpointing: bool = False
    # torch.compile the model (in place, so checkpoints keep their names): the training forward has no
    # graph breaks (tests/test_compile.py); the first steps pay the compilation.
    compile: bool = False
    # Training state (model, optimizer, scheduler, RNG, data position) every N steps under
    # checkpoints/step-N (0: none); the last `keep_checkpoints` are kept.
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    # Loss on the held-out split (data.test_dir) every N steps (0: never), over the same eval_batches
    # batches of it on each process every time (a split smaller than that is read again from the start).
    eval_every: int = 0
    eval_batches: int = 8
    # A step whose loss or gradient norm is not finite is skipped; this many in a row stop the run (0: never).
    max_nonfinite_steps: int = 5
    # A checkpoint folder (the previous stage's run/checkpoint) whose weights and tokenizer start this run.
    init_from: str = ""
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_new_tokens: int = 8
    max_items: int = 0  # 0: every item of the test split


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    if cfg.train.eval_every > 0:
        at_least.append(("train.eval_batches", cfg.train.eval_batches, 1))
    if cfg.data.synth is not None:
        synth = cfg.data.synth
        at_least += [("data.synth.num_train", synth.num_train, 1), ("data.synth.num_test", synth.num_test, 1),
                     ("data.synth.image_px", synth.image_px, 32), ("data.synth.shard_size", synth.shard_size, 1),
                     ("data.synth.workers", synth.workers, 1)]
    for key, value, low in at_least:
        if value < low:
            raise ConfigError(f"config key {key!r} must be at least {low}, got {value!r}")
    for key, value in (("data.transcript_prob", cfg.data.transcript_prob),
                       ("train.lora.dropout", cfg.train.lora.dropout)):
        if not 0 <= value <= 1:
            raise ConfigError(f"config key {key!r} must be between 0 and 1, got {value!r}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), e.g. [0.9, 0.95]; got "
                          f"{cfg.optim.betas!r}")
    # Names (optim.freeze, train.mixed_precision, model.multi_annotation) are checked where they are used.
    check_run_name(cfg.train.run_name)


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
    node[keys[-1]] = yaml.safe_load(raw)


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
    for ov in overrides or []:
        apply_override(data, ov)
    name = (data.get("model") or {}).get("preset")
    if name:
        from .presets import preset
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
