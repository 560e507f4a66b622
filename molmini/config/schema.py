"""The configuration's schema: one typed dataclass per concern (model and its parts, data, optimizer, run,
evaluation), each field with its default and what it means. Loading, overrides and validation are in
molmini/config/loading.py, which re-exports these names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


@dataclass
class VisionConfig:
    # An open_clip model name; "molmini-vit" is molmini's own small config (molmini/model/open_clip_configs/).
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
    # attention_pool_2x2 (Molmo), pixel_shuffle (SmolVLM/nanoVLM) or mlp (LLaVA); see molmini/model/connector.py.
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
    """How an image is cut for the tower (molmini/data/crops.py)."""
    # 0: the global view only (the image resized to the tower's size, aspect ratio kept); N > 0: the global
    # view plus a grid of up to N overlapping crops at the tower's resolution (Molmo uses 12).
    max_crops: int = 0
    # Patches on each inner side of a crop that overlap its neighbour and are dropped; empty: a sixth of
    # the crop's patch grid, rounded (Molmo: 4 of 24).
    overlap_margin: int | None = None


@dataclass
class ReadingConfig:
    """The tower's reading loss (molmini/model/reading.py): a head on the tower's patch features names, for
    every patch of every crop, the text token its renderer drew there (from a synthetic record's
    meta.text_boxes; molmini/data/reading.py builds the targets). A direct, dense signal for a tower that
    learns to read from scratch. Off at weight 0: no head, no targets, the run exactly as without it. The
    head is left out of a saved checkpoint (it has no place in inference). A transformers VLM (model.hf_vlm)
    brings its own tower and is trained without it."""
    weight: float = 0.0
    # The answer loss's weight beside it. 0 trains the tower and the head alone (configs/stages/0_read.yaml):
    # the connector and the LM are then not run at all.
    answer_weight: float = 1.0


@dataclass
class ModelConfig:
    # A named preset (molmini/config/presets.py) whose settings the keys below override; empty: none.
    preset: str = ""
    # Fine-tune a pretrained transformers VLM instead of assembling one: a folder, hub id or a name of
    # molmini.model.transformers_vlm.HF_VLM_PRESETS (e.g. smolvlm-256m). vision, connector, lm, tokenizer and image are then
    # the model's own and these sections are not used.
    hf_vlm: str = ""
    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    # How a record's question/answer pairs share one sequence: "turns" (one conversation, each answer
    # sees the earlier pairs) or "masked" (Molmo: each answer sees only the image and its own question).
    multi_annotation: str = "turns"
    reading: ReadingConfig = field(default_factory=ReadingConfig)


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
    # Chance that a record's meta.transcript is trained on as one more exchange (see molmini.train.loop).
    transcript_prob: float = 0.0
    # False: train on each record's meta.transcript alone (caption pretraining).
    train_questions: bool = True
    max_length: int = 256
    # Pack several records into each row of up to max_length tokens, each attending to itself only
    # (molmini/data/packing.py): the same records per step in fewer, fuller rows. Needs multi_annotation=turns.
    packing: bool = False
    # A weighted mixture of shard folders, e.g. [{dir: data/charts, weight: 0.7}, {dir: data/docs, weight: 0.3}];
    # molmini.data.stream.mixture_sources checks it and MixtureStream reads it. Empty: train_dir alone.
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
    # The reading head's own group (model.reading): its learning rate and warmup, 0 / -1 as above.
    lr_reader: float = 0.0
    warmup_reader: int = -1
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
    # graph breaks; the first steps pay the compilation.
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
