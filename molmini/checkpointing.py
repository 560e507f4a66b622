"""Training state for exact resumption, written atomically beside the published checkpoint.

`run_dir/checkpoints/step-N/` holds accelerate's state (model, optimizer, scheduler, RNG of every process)
and `trainer_state.json` (step, data position, counters). It is written as `.tmp-step-N/` and renamed
into place once complete, with a `COMPLETE` marker as its last file, so a run killed mid-write leaves the
previous checkpoint as the latest loadable one. The last `keep` checkpoints are kept. On several machines
the run folder must be on a file system they share.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from accelerate.utils import DistributedType

from .stages import merge_lora

STATE_FILE = "trainer_state.json"
COMPLETE = "COMPLETE"
PREFIX = "step-"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoints_dir(run_dir)
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and (p / COMPLETE).is_file()
             and p.name[len(PREFIX):].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """`auto`: the latest complete checkpoint of `run_dir` (None when there is none yet, so a job script can
    always pass it); a path: that checkpoint, which must be complete; empty: None."""
    if not resume:
        return None
    if resume == "auto":
        done = complete_checkpoints(run_dir)
        return done[-1] if done else None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"--resume {resume!r} is not a complete training checkpoint (no {COMPLETE} "
                                f"marker); pass a run's checkpoints/step-N folder or `auto`")
    return path


def save_training_state(accelerator, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Every process calls this (each saves its RNG state); the main process commits and rotates."""
    folder = checkpoints_dir(run_dir)
    tmp, final = folder / f".tmp-{PREFIX}{step}", folder / f"{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Pickled rather than safetensors: tied weights (a tied LM head) stay tied through the round trip.
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_synced(tmp / STATE_FILE, json.dumps({"step": step, **state}, indent=2))
        _write_synced(tmp / COMPLETE, "")
        if final.exists():  # written by an earlier attempt that was resumed from before it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _rotate(folder, keep)
    accelerator.wait_for_everyone()
    return final


def load_training_state(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states into the prepared objects; returns the trainer
    state (step, data position, counters)."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _rotate(folder: Path, keep: int) -> None:
    done = complete_checkpoints(folder.parent)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def shards_weights(accelerator) -> bool:
    """Whether no single process holds the full weights (FSDP, DeepSpeed ZeRO-3)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def publishable_model(accelerator, model, rebuild: Callable[[], Any], gather: bool | None = None):
    """The trained model with its full weights and any LoRA merged, on the main process (None on the others;
    every process must call this). With sharded weights the full state dict is gathered and loaded into
    `rebuild()`, a fresh model of the same architecture (LoRA applied if the run used it)."""
    gather = shards_weights(accelerator) if gather is None else gather
    final = None
    if gather:
        state = accelerator.get_state_dict(model)  # a collective: every process takes part
        if accelerator.is_main_process:
            final = rebuild()
            final.load_state_dict(state)
    elif accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
    if final is not None:
        merge_lora(final)
    return final
