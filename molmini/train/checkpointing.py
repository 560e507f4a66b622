"""Training state for exact resumption, written atomically beside the published checkpoint.

`run_dir/checkpoints/step-N/` holds accelerate's state (model, optimizer, scheduler, RNG of every process)
and `trainer_state.json` (step, data position, counters). It is written as `.tmp-step-N/` and renamed
into place once complete, with a `COMPLETE` marker as its last file (listing every file's size), so a run
killed mid-write leaves the previous checkpoint as the latest loadable one, and a checkpoint damaged later
(a file cut short) is named and passed over for the one before it. The last `keep` checkpoints are kept.
On several machines the run folder must be on a file system they share.

A run folder holds one run: `check_run_folder` refuses to start a new run in a folder that holds one
unless it is resumed, or `--overwrite` moves the old run aside (nothing is deleted).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from accelerate.utils import DistributedType

from molmini.config import Config, ConfigError, flat_dict

STATE_FILE = "trainer_state.json"
COMPLETE = "COMPLETE"
PREFIX = "step-"
LOG_FILE = "train_log.jsonl"
# What a run writes into its folder: any of these means the folder holds a run.
RUN_FILES = ("config.yaml", LOG_FILE, "train_summary.json", "cost.json", "checkpoint", "checkpoints",
             "eval_results.json", "eval_predictions.jsonl")

log = logging.getLogger(__name__)


class RunFolderError(FileExistsError):
    """A run folder that already holds another run."""


# ---- run folders ------------------------------------------------------------------------------------------

def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def check_run_folder(run_dir: Path, resume: str, overwrite: bool) -> None:
    """Refuse to start a new run where one is already (its log, checkpoint and summary would be
    overwritten and its checkpoints/step-N resumed by the next `--resume auto`)."""
    run_dir = Path(run_dir)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"the run folder {run_dir} cannot be made: {parent} is a file; choose "
                                     "another train.output_dir")
    if resume and overwrite:
        raise RunFolderError("--resume continues a run and --overwrite replaces it: pass one of them")
    if not resume and not overwrite and holds_run(run_dir):
        raise RunFolderError(f"the run folder {run_dir} already holds a run; pass --resume auto to continue it, "
                             "choose another train.run_name, or pass --overwrite to move it aside and start anew")
    finished = [n for n in ("checkpoint", "train_summary.json") if (run_dir / n).exists()]
    if resume == "auto" and finished and not complete_checkpoints(run_dir):
        # `auto` starts fresh where there is nothing to continue: right for a run killed before its first
        # checkpoint, but here it would train over a finished run.
        raise RunFolderError(f"--resume auto: the run folder {run_dir} holds a finished run ({', '.join(finished)}) "
                             "and no checkpoints/step-N to continue from; choose another train.run_name, or pass "
                             "--overwrite instead to move it aside and start anew")


def move_run_aside(run_dir: Path) -> Path | None:
    """`--overwrite`: rename a run folder that holds a run to NAME.replaced-TIMESTAMP beside it (deleting
    nothing), so the new run starts in an empty folder. Returns the new name of the old run."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    os.replace(run_dir, aside)
    return aside


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The records of a train_log.jsonl. A last line cut short (the run was killed while writing it) is
    left out; an unreadable line before the last is an error naming the file and line."""
    lines = [(i, l) for i, l in enumerate(Path(path).read_text().splitlines(), 1) if l.strip()]
    records = []
    for n, (i, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if n == len(lines) - 1:
                log.warning("%s: line %d is incomplete (the run was stopped while writing it); left out", path, i)
                break
            raise ValueError(f"{path} line {i} is not a JSON record: {line[:80]!r}") from None
    return records


# ---- resuming with the run's settings ---------------------------------------------------------------

# Keys a resumed run may change: they decide where the run is, what is logged, evaluated or kept, or how
# data is rendered, not what is trained. Any other change would leave the run's schedule, data order or
# batches as they were while config.yaml claimed the new values.
CHANGEABLE_ON_RESUME = ("train.run_name", "train.output_dir", "train.log_every", "train.checkpoint_every",
                        "train.keep_checkpoints", "train.eval_every", "train.eval_batches", "train.trackers",
                        "train.project", "train.max_nonfinite_steps", "data.synth.workers", "eval.")


def check_resumed_config(cfg: Config, checkpoint: Path) -> None:
    """Refuse to resume `checkpoint` with settings that change what its run trains, listing them; say which
    harmless ones changed. The config is the one in the run folder the checkpoint belongs to."""
    saved_path = Path(checkpoint).parent.parent / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = flat_dict(yaml.safe_load(saved_path.read_text()) or {}), flat_dict(cfg.to_dict())
    changed = [k for k in now if k in saved and saved[k] != now[k]
               and not (cfg.train.init_from and k.startswith("model."))]  # then the model is init_from's
    described = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed]
    refused = [d for k, d in zip(changed, described) if not k.startswith(CHANGEABLE_ON_RESUME)]
    if refused:
        raise ConfigError(f"resuming {checkpoint} with settings its run did not train with: {'; '.join(refused)}. "
                          f"A resumed run keeps its schedule, data order and batches, so resume with its own values "
                          f"({saved_path}), or start a new run under another train.run_name")
    if described:
        log.warning("resuming with %s (recorded in config.yaml)", "; ".join(described))


# ---- training state ---------------------------------------------------------------------------------------


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = checkpoints_dir(run_dir)
    found = [p for p in folder.glob(f"{PREFIX}*") if p.is_dir() and (p / COMPLETE).is_file()
             and p.name[len(PREFIX):].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (None: nothing found): a file missing or not of
    the size it was written with, or a trainer state that does not parse. Sizes only, so this is cheap."""
    path = Path(path)
    try:
        sizes = json.loads((path / COMPLETE).read_text() or "{}")  # empty: written before sizes were listed
        for name, size in sizes.items():
            file = path / name
            if not file.is_file():
                return f"{file} is missing"
            if file.stat().st_size != size:
                return f"{file} is {file.stat().st_size} bytes but was written with {size}"
        step = json.loads((path / STATE_FILE).read_text())["step"]
        if not isinstance(step, int):
            raise TypeError("step is not a number")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{path / STATE_FILE} or {path / COMPLETE} is unreadable ({e})"
    return None


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """`auto`: the latest complete, undamaged checkpoint of `run_dir` (None when there is none yet, so a job
    script can always pass it); a damaged one is named in a warning and the one before it taken. A path:
    that checkpoint, which must be complete and undamaged. Empty: None."""
    if not resume:
        return None
    if resume == "auto":
        done = complete_checkpoints(run_dir)
        for path in reversed(done):
            damage = checkpoint_damage(path)
            if damage is None:
                return path
            log.warning("checkpoint %s is damaged: %s; falling back to the checkpoint before it", path, damage)
        if done:
            raise FileNotFoundError(f"every checkpoint of {run_dir} is damaged (see the warnings above); "
                                    "start the run anew with --overwrite, or under another train.run_name")
        return None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"--resume {resume!r} is not a complete training checkpoint (no {COMPLETE} "
                                f"marker); pass a run's checkpoints/step-N folder or `auto`")
    damage = checkpoint_damage(path)
    if damage is not None:
        raise FileNotFoundError(f"--resume {resume!r}: checkpoint is damaged: {damage}; pass an earlier "
                                "checkpoints/step-N folder or `auto` (which skips damaged ones)")
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
        # The sizes of what was written, so that a file cut short later is found before it is loaded.
        sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        _write_synced(tmp / COMPLETE, json.dumps(sizes, indent=1))
        if final.exists():  # written by an earlier attempt that was resumed from before it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _rotate(folder, keep)
    accelerator.wait_for_everyone()
    return final


def load_training_state(accelerator, path: Path) -> None:
    """Restore model, optimizer, scheduler and RNG states into the prepared objects. The trainer state
    (step, data position, counters) is read before, by the loop, to build the data loader."""
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"checkpoint {path} could not be loaded ({type(e).__name__}: {e}); resume from an earlier "
                         "checkpoints/step-N folder") from e


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
        final.merge_lora()
    return final
