"""The parameters of the model a config describes, per component (vision, connector, LM), trainable and
frozen under the config's stage (optim.freeze, train.lora), counted without data, weights or downloads.

A new molmini model is built on PyTorch's meta device: shapes without memory or initialisation, so even a
2B-parameter preset counts in seconds. Its tokenizer is a stand-in of exactly `model.tokenizer.vocab_size`
tokens (a run trains its BPE on the data, which a small corpus can leave a little short of that size), or
the pretrained LM's own. Pretrained backbones are never fetched: a hub id counts once its config and
tokenizer are on disk (a local folder, or the hub cache a run has filled). `train.init_from` and
`model.hf_vlm` count the checkpoint that the run would start from, loaded from disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from molmini.config import Config
from molmini.hub.checkpoint_files import is_hub_id
from molmini.model.interface import COMPONENTS
from molmini.train.stages import component_parameters, prepare_stage


def local_folder(name_or_path: str, key: str) -> Path:
    """A folder on disk for `name_or_path`: itself, or its snapshot in the hub cache; never a download."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    if not is_hub_id(name_or_path):
        raise FileNotFoundError(f"{key} {name_or_path!r} is not a folder; point it at an existing one (a previous "
                                "stage's runs/NAME/checkpoint, or a pretrained model's folder)")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except (OSError, ValueError) as e:  # not in the cache, or not a hub id at all
        raise FileNotFoundError(f"{key} {name_or_path!r} is neither a folder here nor in the hub cache, and "
                                f"--print-config downloads nothing; run `hf download {name_or_path}` once, or "
                                f"point {key} at a local folder") from e


def stand_in_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly `vocab_size` tokens with molmini's special tokens and chat template:
    what the model's shapes depend on, without training a BPE on the data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from molmini.data.chat_format import MOLMINI_CHAT_TEMPLATE
    from molmini.data.tokenizer import END, PAD, SPECIAL_TOKENS
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"token{i}": i for i in range(len(vocab), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=END)
    tokenizer.chat_template = MOLMINI_CHAT_TEMPLATE
    return tokenizer


def build_for_counting(cfg: Config) -> nn.Module:
    """The model the run would train (before its stage is applied); sets cfg.model to a checkpoint's model
    section when train.init_from gives one, as training does."""
    from molmini.model.vlm import MolminiModel
    if cfg.model.hf_vlm:
        from molmini.model.transformers_vlm import HFVisionLanguageModel, resolve_hf_vlm
        key, source = ("train.init_from", cfg.train.init_from) if cfg.train.init_from else \
            ("model.hf_vlm", resolve_hf_vlm(cfg.model.hf_vlm))
        return HFVisionLanguageModel.from_pretrained(str(local_folder(source, key)), max_length=cfg.data.max_length)
    if cfg.train.init_from:
        model = MolminiModel.from_pretrained(local_folder(cfg.train.init_from, "train.init_from"),
                                             max_length=cfg.data.max_length)
        model.set_reading(cfg.model.reading)  # the run's own, as training does (molmini/train/loop.py)
        cfg.model = model.config
        return model
    lm_config = None
    if cfg.model.lm.name_or_path:
        from transformers import AutoConfig, AutoTokenizer

        from molmini.data.tokenizer import add_special_tokens
        folder = local_folder(cfg.model.lm.name_or_path, "model.lm.name_or_path")
        tokenizer = add_special_tokens(AutoTokenizer.from_pretrained(folder))
        # The architecture without its weights, at the vocabulary the run resizes it to (a resize on the meta
        # device cannot draw the new rows).
        lm_config = {**AutoConfig.from_pretrained(folder).to_dict(), "vocab_size": len(tokenizer)}
    else:
        tokenizer = stand_in_tokenizer(cfg.model.tokenizer.vocab_size)
    with torch.device("meta"):
        model = MolminiModel(cfg.model, tokenizer, max_length=cfg.data.max_length, load_pretrained=False,
                             saved_lm_config=lm_config)
    model.lm.tie_weights()  # transformers 5.0 leaves tied embeddings untied when built on the meta device
    return model


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """component -> {total, trainable, frozen}, plus the same for "total"."""
    counts = {}
    for component in COMPONENTS:
        sizes = [(p.numel(), p.requires_grad) for _, p in component_parameters(model, component)]
        total, trainable = sum(n for n, _ in sizes), sum(n for n, grad in sizes if grad)
        counts[component] = {"total": total, "trainable": trainable, "frozen": total - trainable}
    counts["total"] = {k: sum(c[k] for c in counts.values()) for k in ("total", "trainable", "frozen")}
    return counts


def stage_parameter_counts(cfg: Config) -> dict[str, dict[str, int]]:
    """Parameter counts of the config's model with its stage (freezing, LoRA) applied."""
    model = build_for_counting(cfg)
    prepare_stage(model, cfg.train, cfg.optim)
    return count_parameters(model)


def format_counts(counts: dict[str, dict[str, Any]], prefix: str = "# ") -> str:
    """The counts as a small table; each line starts with `prefix` (YAML comments by default)."""
    lines = [f"{'parameters':<12}{'total':>15}{'trainable':>15}{'frozen':>15}"]
    lines += [f"{name:<12}{c['total']:>15,}{c['trainable']:>15,}{c['frozen']:>15,}" for name, c in counts.items()]
    return "\n".join(prefix + line for line in lines)
