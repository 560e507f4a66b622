"""What a training stage trains: frozen components, LoRA on the LM and activation checkpointing, through the
model's own interface (model/interface.py), whichever kind it is. The optimizer's groups and schedule per
component are in optim.py.

Molmo's stages are this plus data: connector alignment trains the connector alone (vision and LM
frozen), caption pretraining trains everything with per-component rates, fine-tuning goes on from there.
"""
from __future__ import annotations

import logging

from molmini.config import OptimConfig, TrainConfig
from molmini.model.interface import COMPONENTS, VisionLanguageModel

log = logging.getLogger(__name__)


def component_parameters(model: VisionLanguageModel, component: str):
    """(name, parameter) of one component, as the model maps its parameter names (`component_of`)."""
    for name, p in model.named_parameters():
        if model.component_of(name) == component:
            yield name, p


def check_components(names: list[str], where: str) -> None:
    bad = [n for n in names if n not in COMPONENTS]
    if bad:
        raise ValueError(f"{where} names {bad}, which are not model components; choose from {list(COMPONENTS)}")


def freeze(model: VisionLanguageModel, components: list[str]) -> dict[str, int]:
    """Stop gradients into the named components; returns the trainable parameter count per component
    (logged, so a run says what it trains)."""
    check_components(components, "optim.freeze")
    for name in components:
        for _, p in component_parameters(model, name):
            p.requires_grad_(False)
    counts = {c: sum(p.numel() for _, p in component_parameters(model, c) if p.requires_grad) for c in COMPONENTS}
    log.info("trainable parameters per component: %s (frozen: %s)", counts, components or "none")
    return counts


def prepare_stage(model: VisionLanguageModel, train: TrainConfig, optim: OptimConfig) -> dict[str, int]:
    """Apply a stage's freezing, LoRA and activation checkpointing to `model` (before accelerate wraps it).
    `freeze` checks the component names."""
    if train.lora.r > 0:
        if "lm" in optim.freeze:
            raise ValueError("train.lora.r > 0 trains adapters on the LM, but optim.freeze has 'lm'; remove one")
        model.apply_lora(train.lora.r, train.lora.alpha, train.lora.dropout, train.lora.target_modules)
    if train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return freeze(model, optim.freeze)
