"""The optimizer's parameter groups and the learning-rate schedule: one group per (component, weight decay)
with its component's own learning rate and warmup, then linear warmup and cosine decay per group."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from molmini.config import OptimConfig
from molmini.model.interface import COMPONENTS
from molmini.model.reading import READ_HEAD
from molmini.train.stages import component_parameters


def _component_setting(optim: OptimConfig, component: str) -> tuple[float, int]:
    lr = getattr(optim, f"lr_{component}") or optim.lr
    warmup = getattr(optim, f"warmup_{component}")
    return lr, optim.warmup_steps if warmup < 0 else warmup


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """Trainable parameters in groups by component and weight decay (none for biases, norms and
    embeddings); each group carries its component's `lr` and `warmup`. Frozen parameters are left out.
    The reading head (model.reading) is a group of its own, "reader", with optim.lr_reader / warmup_reader."""
    groups = []
    for component in (*COMPONENTS, "reader"):
        lr, warmup = _component_setting(optim, component)
        decay, no_decay = [], []
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(READ_HEAD + ".")] \
            if component == "reader" else \
            [(n, p) for n, p in component_parameters(model, component) if not n.startswith(READ_HEAD + ".")]
        for name, p in named:
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
