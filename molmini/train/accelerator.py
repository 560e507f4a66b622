"""The Accelerator a run trains with: its mixed precision (auto: bf16 on a GPU that has it, none on the
CPU, or what `accelerate launch` set), its trackers (wandb offline unless WANDB_MODE says otherwise), and
the gloo process group of a multi-process run on a CPU host."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator

from molmini.config import Config


def resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # set by `accelerate launch` / its config file
    if launched:
        return launched
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator logging to the configured trackers: wandb runs offline unless WANDB_MODE says
    otherwise (e.g. `WANDB_MODE=online` for a logged-in user) and is left out when WANDB_MODE=disabled;
    tensorboard writes under the run folder."""
    trackers = list(cfg.train.trackers)
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        trackers = [t for t in trackers if t != "wandb"]
    elif "wandb" in trackers:
        os.environ.setdefault("WANDB_MODE", "offline")
    if cfg.train.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision {cfg.train.mixed_precision!r} is not one of auto, no, bf16, fp16")
    # Several processes without CUDA (e.g. `accelerate launch --multi_gpu` on a CPU host): accelerate only
    # sets up its gloo process group when asked for the CPU explicitly.
    cpu_multiprocess = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # tensorboard needs a folder now; train() points it at the run folder before the trackers start.
    # step_scheduler_with_optimizer=False: the schedule counts optimizer steps, once each; accelerate would
    # otherwise step it once per process per step (it expects a schedule written for one process).
    return Accelerator(log_with=trackers or None, cpu=cpu_multiprocess, project_dir=cfg.train.output_dir,
                       mixed_precision=resolve_mixed_precision(cfg.train.mixed_precision),
                       step_scheduler_with_optimizer=False)
