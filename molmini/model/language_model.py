"""The language model: any transformers causal LM, pretrained or built from a config."""
from __future__ import annotations

from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from molmini.config import LMConfig
from molmini.data.tokenizer import END, PAD


def build_language_model(cfg: LMConfig, vocab_size: int, token_ids: dict[str, int],
                         saved_config: dict[str, Any] | None = None) -> PreTrainedModel:
    """The LM, with its vocabulary sized to the tokenizer's.

    `saved_config` (a checkpoint's full transformers config) builds the architecture without downloading
    anything; the weights then come from the checkpoint. Otherwise `cfg.name_or_path` loads a pretrained
    LM, or `cfg.config` builds a randomly initialised one.
    """
    ids = {"pad_token_id": token_ids[PAD], "eos_token_id": token_ids[END]}
    if saved_config is not None:
        saved = dict(saved_config)
        hf_cfg = AutoConfig.for_model(saved.pop("model_type"), **saved)
        lm = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=cfg.attn_implementation)
    elif cfg.name_or_path:
        lm = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, attn_implementation=cfg.attn_implementation,
                                                  use_safetensors=True)  # never unpickle downloaded weights
    else:
        fields = dict(cfg.config)
        if "model_type" not in fields:
            raise ValueError("model.lm.config needs a model_type (e.g. llama, qwen2) when model.lm.name_or_path "
                             "is empty")
        hf_cfg = AutoConfig.for_model(fields.pop("model_type"), vocab_size=vocab_size, **ids, **fields)
        lm = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=cfg.attn_implementation)
    if lm.get_input_embeddings().num_embeddings != vocab_size:
        lm.resize_token_embeddings(vocab_size)
    for k, v in ids.items():
        setattr(lm.config, k, v)
        if lm.generation_config is not None:
            setattr(lm.generation_config, k, v)
    return lm


def enable_transformers_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing (non-reentrant) of every block of a transformers model."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
