"""What a training stage trains: frozen components, LoRA on the LM, activation checkpointing, and one
optimizer parameter group per (component, weight decay) with its own learning rate and warmup.

Molmo's stages are this plus data: connector alignment trains the connector alone (vision and LM
frozen), caption pretraining trains everything with per-component rates, fine-tuning goes on from there.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from .config import OptimConfig, TrainConfig

log = logging.getLogger(__name__)

COMPONENTS = ("vision", "connector", "lm")


def component_parameters(model: nn.Module, component: str):
    """(name, parameter) of one component. Parameters outside the vision tower and the LM belong to the
    connector: the connector module itself and the pad embedding it reads (Molmo trains them together).
    A model with its own layout (a transformers VLM, molmini.hf_vlm) maps its names with `component_of`."""
    mapped = getattr(model, "component_of", None)
    for name, p in model.named_parameters():
        owner = name.split(".", 1)[0]
        if (mapped(name) if mapped else owner if owner in ("vision", "lm") else "connector") == component:
            yield name, p


def check_components(names: list[str], where: str) -> None:
    bad = [n for n in names if n not in COMPONENTS]
    if bad:
        raise ValueError(f"{where} names {bad}, which are not model components; choose from {list(COMPONENTS)}")


def freeze(model: nn.Module, components: list[str]) -> dict[str, int]:
    """Stop gradients into the named components; returns the trainable parameter count per component
    (logged, so a run says what it trains)."""
    check_components(components, "optim.freeze")
    for name in components:
        for _, p in component_parameters(model, name):
            p.requires_grad_(False)
    counts = {c: sum(p.numel() for _, p in component_parameters(model, c) if p.requires_grad) for c in COMPONENTS}
    log.info("trainable parameters per component: %s (frozen: %s)", counts, components or "none")
    return counts


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
    """Wrap the LM in peft LoRA adapters: its own weights freeze, the adapters train."""
    from peft import LoraConfig, get_peft_model
    if hasattr(model, "apply_lora"):  # a transformers VLM picks its LM's layers itself
        return model.apply_lora(r, alpha, dropout, target_modules)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.lm.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ValueError(f"train.lora.target_modules {missing} are not modules of the LM "
                         f"({type(model.lm).__name__}); pick from its linear layers, e.g. q_proj, v_proj")
    model.lm = get_peft_model(model.lm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                   target_modules=list(target_modules)))


def merge_lora(model: nn.Module) -> None:
    """Fold LoRA adapters into the LM's weights, so the model saves and loads without peft."""
    if hasattr(model, "merge_lora"):
        return model.merge_lora()
    if hasattr(model.lm, "merge_and_unload"):
        model.lm = model.lm.merge_and_unload()


def enable_transformers_checkpointing(model: nn.Module) -> None:
    """Activation checkpointing (non-reentrant) of every block of a transformers model."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "enable_gradient_checkpointing"):
        return model.enable_gradient_checkpointing()
    model.vision.visual.set_grad_checkpointing(True)
    enable_transformers_checkpointing(model.lm)


def prepare_stage(model: nn.Module, train: TrainConfig, optim: OptimConfig) -> dict[str, int]:
    """Apply a stage's freezing, LoRA and activation checkpointing to `model` (before accelerate wraps it).
    `freeze` checks the component names."""
    if train.lora.r > 0:
        if "lm" in optim.freeze:
            raise ValueError("train.lora.r > 0 trains adapters on the LM, but optim.freeze has 'lm'; remove one")
        apply_lora(model, train.lora.r, train.lora.alpha, train.lora.dropout, train.lora.target_modules)
    if train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return freeze(model, optim.freeze)


def _component_setting(optim: OptimConfig, component: str) -> tuple[float, int]:
    lr = getattr(optim, f"lr_{component}") or optim.lr
    warmup = getattr(optim, f"warmup_{component}")
    return lr, optim.warmup_steps if warmup < 0 else warmup


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters in groups by component and weight decay (none for biases, norms and
    embeddings); each group carries its component's `lr` and `warmup`. Frozen parameters are left out."""
    groups = []
    for component in COMPONENTS:
        lr, warmup = _component_setting(optim, component)
        decay, no_decay = [], []
        for name, p in component_parameters(model, component):
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
        for params, wd, kind in ((decay, optim.weight_decay, "decay"), (no_decay, 0.0, "no_decay")):
            if params:
                groups.append({"params": params, "weight_decay": wd, "lr": lr, "warmup": warmup,
                               "name": f"{component}/{kind}", "component": component})
    if not groups:
        raise ValueError("nothing to train: every component is frozen (optim.freeze) and LoRA is off")
    return groups


def warmup_cosine(warmup: int, total: int):
    """Linear warmup then cosine decay to 0 (the formula of transformers' get_cosine_schedule_with_warmup)."""

    def factor(step: int) -> float:
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [warmup_cosine(g["warmup"], total_steps) for g in optimizer.param_groups])


def lr_by_component(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr_{g['component']}": g["lr"] for g in optimizer.param_groups}
