"""The training loop on accelerate: AdamW with per-component learning rates, warmup + cosine, gradient
accumulation and clipping, loss over the global batch's loss tokens, a guard against non-finite steps,
held-out loss, exact resume, a progress bar, metrics through accelerate's trackers, and a checkpoint at
the end. What a stage trains is in molmini.train.stages, saving and resuming in molmini.train.checkpointing, what the
run costs in molmini.train.cost, the accelerator it runs on in molmini.train.accelerator; the batches come from
molmini.data.loader (records streamed, formatted, processed, packed, collated), the loss is molmini.model.loss's, the
log line's figures are measured in molmini.train.meters."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, set_seed

from molmini.config import Config, ConfigError, flat_dict, save_config, validate
from molmini.data.loader import make_loader, next_batch
from molmini.data.reader import add_counts, find_shards
from molmini.data.stream import StreamPosition, mixture_sources
from molmini.data.tokenizer import build_tokenizer
from molmini.model.interface import VisionLanguageModel
from molmini.model.loss import count_loss_tokens
from molmini.model.vlm import MolminiModel
from molmini.progress import progress_bar
from molmini.train.accelerator import make_accelerator
from molmini.train.checkpointing import (LOG_FILE, STATE_FILE, check_resumed_config, load_training_state,
                                         publishable_model, read_train_log, resolve_resume, save_training_state)
from molmini.train.cost import CostMeter, run_cost
from molmini.train.meters import IntervalMeter, SkipCounter
from molmini.train.optim import lr_by_component, make_scheduler, param_groups
from molmini.train.stages import prepare_stage

log = logging.getLogger(__name__)


# ---- the loop -------------------------------------------------------------------------------------------

class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive steps with a non-finite loss or gradient norm."""


def build_model(cfg: Config, train_shards: list[str]) -> VisionLanguageModel:
    """The previous stage's checkpoint (train.init_from), or a new model with a tokenizer for this data; with
    `model.hf_vlm`, that pretrained transformers VLM (or init_from's fine-tune of it) and its processor."""
    if cfg.model.hf_vlm:
        if cfg.model.multi_annotation != "turns":
            raise ConfigError("model.multi_annotation=masked is molmini's own sequence layout; with model.hf_vlm "
                              "the family's chat template lays out the turns: set model.multi_annotation=turns")
        if cfg.data.packing:
            raise ConfigError("data.packing packs molmini's own sequences; a transformers VLM (model.hf_vlm) lays out "
                              "its own: set data.packing=false")
        from molmini.model.transformers_vlm import HFVisionLanguageModel
        return HFVisionLanguageModel.from_pretrained(cfg.train.init_from or cfg.model.hf_vlm,
                                                     max_length=cfg.data.max_length).train()
    if cfg.train.init_from:
        model = MolminiModel.from_pretrained(cfg.train.init_from, max_length=cfg.data.max_length)
        # The checkpoint defines the model (the run's config.yaml says so), but not the reading loss, a
        # training device it never saves: that stays the run's own.
        model.set_reading(cfg.model.reading)
        cfg.model = model.config
        return model.train()
    tokenizer = build_tokenizer(cfg, train_shards)
    return MolminiModel(cfg.model, tokenizer, max_length=cfg.data.max_length)


def rebuild_for_stage(model: VisionLanguageModel, cfg: Config) -> VisionLanguageModel:
    """A fresh model of `model`'s architecture, with this stage's LoRA adapters when it trains them, so the
    weights gathered from shards at the end of a run load into it by name."""
    fresh = model.rebuild()
    if cfg.train.lora.r > 0:
        lora = cfg.train.lora
        fresh.apply_lora(lora.r, lora.alpha, lora.dropout, lora.target_modules)
    return fresh


def accumulate_gradients(model, micro_batches: list[dict[str, torch.Tensor]], accelerator: Accelerator,
                         reading: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward over one optimizer step's micro-batches with the loss divided by the number of loss tokens
    in the global batch (all processes, all micro-batches), so every answer token weighs the same however
    the batch is split. Returns the global mean loss and that token count.

    `reading` (model.reading's {"weight", "answer_weight"}): when the model gives a reading loss (it has a
    reading head), that loss, the mean over each micro-batch's patches, is added with its weight beside the
    answer loss with answer_weight; its mean over the step and all processes (a tensor) comes back in
    reading["read_loss"]."""
    local_tokens = sum(count_loss_tokens(b["labels"]) for b in micro_batches)
    global_tokens = accelerator.reduce(local_tokens.detach().float(), "sum").clamp(min=1)
    loss_sum = torch.zeros((), device=accelerator.device)
    read_sum = None
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        # Gradients are synchronised once, after the last micro-batch.
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            out = model(**batch, return_logits=False)
            # DDP averages gradients over processes, so scale by their count to get the global-batch mean.
            loss = out["loss_sum"] * accelerator.num_processes / global_tokens
            if reading and "read_loss" in out:
                loss = reading["answer_weight"] * loss + reading["weight"] * out["read_loss"] / len(micro_batches)
                read_sum = out["read_loss"].detach().float() + (0 if read_sum is None else read_sum)
            accelerator.backward(loss)
        loss_sum += out["loss_sum"].detach().float()
    if read_sum is not None:
        reading["read_loss"] = accelerator.reduce(read_sum, "mean") / len(micro_batches)
    return accelerator.reduce(loss_sum, "sum") / global_tokens, global_tokens


@torch.no_grad()
def heldout_metrics(model, loader, accelerator: Accelerator, batches: int) -> dict[str, float]:
    """`eval_loss`, the mean loss per answer token over `batches` batches of the held-out split on every
    process; with the reading loss, also `read_accuracy`: the share of held-out patches holding text whose
    token the reading head names."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    tokens = torch.zeros((), device=accelerator.device)
    read = torch.zeros(2, device=accelerator.device)  # correct, counted
    reading = False
    it = iter(loader)
    for _ in range(batches):
        batch, _ = next_batch(it)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        out = model(**batch, return_logits=False)
        loss_sum += out["loss_sum"].float()
        tokens += out["num_loss_tokens"].float()
        if "read_count" in out:
            reading = True
            read += torch.stack([out["read_correct"], out["read_count"]]).float()
    model.train()
    tokens = accelerator.reduce(tokens, "sum").clamp(min=1)
    metrics = {"eval_loss": (accelerator.reduce(loss_sum, "sum") / tokens).item()}
    if reading:
        correct, counted = accelerator.reduce(read, "sum").tolist()
        metrics["read_accuracy"] = round(correct / max(counted, 1), 4)
    return metrics


def _merged_position(accelerator: Accelerator, position: StreamPosition) -> dict[str, Any]:
    """One StreamPosition for all processes (their keys are rank/worker, so they merge without clashing)."""
    merged = position.to_dict()
    for other in gather_object([position.to_dict()]):
        merged["next_positions"].update(other["next_positions"])
    return merged


def _skipped_all_processes(skips: SkipCounter, state: dict[str, Any]) -> dict[str, Any]:
    """The bad records of all processes (and of the run before a resume): total and by reason."""
    by_reason = add_counts(*gather_object([skips.by_reason]), state.get("skipped_by_reason", {}))
    # A checkpoint written before counts by reason existed holds only the total.
    unnamed = state.get("skipped_records", 0) - sum(state.get("skipped_by_reason", {}).values())
    total = sum(by_reason.values()) + unnamed
    return {"skipped_records": total, "skipped_by_reason": by_reason}


def _nonfinite_message(step: int, count: int, cfg: Config) -> str:
    return (f"the loss or gradient norm was not finite for {count} steps in a row (steps {step - count + 1} to "
            f"{step}; train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}), so training stopped. Try a "
            f"lower learning rate (optim.lr={cfg.optim.lr:g}) or a longer warmup, check the data read around "
            "these steps, or train in full precision (train.mixed_precision=no) if this ran in bf16/fp16; "
            "`--resume auto` continues from the last checkpoint")


def nonfinite_parameters(model) -> list[str]:
    """The names of the parameters holding a NaN or an inf (this process's shard of each, when sharded)."""
    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 DTensor: this process's shard
            if not bool(torch.isfinite(local).all()):
                bad.append(name)
    return bad


def _nonfinite_weights_message(run: "Run", final) -> str:
    """Why the final checkpoint is refused ("" when its weights are all finite): a checkpoint of NaN weights
    would be published and evaluated as if it were a model."""
    bad = nonfinite_parameters(final)
    if not bad:
        return ""
    total = sum(1 for _ in final.parameters())
    step = run.weights_bad_after or run.last_update
    first = f"; the first step with a non-finite loss or gradient norm was step {run.first_nonfinite}" \
        if run.first_nonfinite else ""
    return (f"the trained weights are not finite ({len(bad)} of {total} tensors, e.g. {bad[0]!r}): they went bad "
            f"in the update of step {step}{first}. No checkpoint was saved to {run.run_dir / 'checkpoint'}. Lower "
            f"the learning rate (optim.lr={run.cfg.optim.lr:g}) or lengthen the warmup, set "
            "train.max_nonfinite_steps (0 never stops the run) to stop such a run early, or resume from a "
            "checkpoint saved before that step")


@dataclass
class Run:
    """Everything a training run holds between steps; built by `start_run`, advanced by `train_step`."""
    cfg: Config
    run_dir: Path
    accelerator: Accelerator
    model: Any  # the VisionLanguageModel as accelerate wrapped it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: torch.utils.data.DataLoader
    eval_loader: torch.utils.data.DataLoader | None
    position: StreamPosition
    state: dict[str, Any]  # the resumed checkpoint's trainer state ({} for a fresh run)
    rebuild: Any  # () -> a fresh model of the same architecture, for weights gathered at the end
    n_params: int
    trainable: dict[str, int]
    train_shards: list[str]
    step: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    first_nonfinite: int = 0  # the first step (of this process's run) with a non-finite loss or gradient norm
    last_update: int = 0  # the last step whose update reached the weights
    weights_bad_after: int = 0  # the update after which the weights were found non-finite (0: not found)
    skips: SkipCounter = field(default_factory=SkipCounter)
    cost: CostMeter | None = None
    interval: IntervalMeter | None = None
    log_file: Any = None
    bar: Any = None
    batches: Iterator | None = None
    start: float = 0.0


@dataclass
class StepResult:
    loss: torch.Tensor
    grad_norm: Any
    read_loss: torch.Tensor | None = None  # the reading loss of the step, when the model has a reading head


def train(cfg: Config, run_dir: Path, accelerator: Accelerator | None = None, resume: str = "") -> dict[str, Any]:
    """Train per `cfg`; writes the checkpoint to `run_dir/checkpoint` and returns a summary. `resume`:
    `auto` (the latest complete checkpoint of this run folder, if any) or a checkpoints/step-N folder."""
    run = start_run(cfg, Path(run_dir), accelerator, resume)
    try:
        while run.step < cfg.train.max_steps:
            result = train_step(run)
            log_if_due(run, result)  # the log line, and the held-out loss when it is due
            checkpoint_if_due(run)
    except BaseException:
        run.bar.close()  # ends the bar's line, so the error that follows starts one of its own
        raise
    return finish_run(run)


def start_run(cfg: Config, run_dir: Path, accelerator: Accelerator | None, resume: str) -> Run:
    """Build the model, data, optimizer and schedule, resume them from a checkpoint if asked, open the log."""
    validate(cfg)  # ranges, as load_config checks them, for a config built or changed in code
    accelerator = accelerator or make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.distributed_type == DistributedType.DEEPSPEED and cfg.train.grad_accum_steps > 1:
        raise ValueError("with DeepSpeed, set gradient_accumulation_steps in the DeepSpeed config and keep "
                         "train.grad_accum_steps=1 (DeepSpeed steps the optimizer inside backward)")
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between processes instead of oversubscribing them (OMP_NUM_THREADS overrides).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    set_seed(cfg.train.seed)
    # The training data: data.train_dir, or the weighted mixture of shard folders in data.mixture.
    sources = mixture_sources(cfg.data.mixture) if cfg.data.mixture else None
    train_shards = [s for shards, _ in sources for s in shards] if sources else find_shards(cfg.data.train_dir)
    resume_from = resolve_resume(run_dir, resume)
    if resume_from is not None:
        check_resumed_config(cfg, resume_from)

    # Tokenizer and model are built identically on every process (same seed, same text).
    model = build_model(cfg, train_shards)
    processor = model.processor
    n_params = sum(p.numel() for p in model.parameters())
    rebuild = functools.partial(rebuild_for_stage, model, cfg)  # before the stage wraps the LM in LoRA
    trainable = prepare_stage(model, cfg.train, cfg.optim)
    state: dict[str, Any] = json.loads((resume_from / STATE_FILE).read_text()) if resume_from is not None else {}
    fewest = min(len(shards) for shards, _ in sources) if sources else len(train_shards)
    workers = min(cfg.data.num_workers, fewest // world)
    position = StreamPosition.from_dict(state["data_position"]) if state else \
        StreamPosition(workers=max(workers, 1), world_size=world, seed=cfg.train.seed)
    # The loader is not prepared: the stream already splits shards by process, so each reads its own.
    loader = make_loader(sources or train_shards, processor, cfg, rank, world, workers, shuffle=True,
                         resume=StreamPosition.from_dict(position.to_dict()) if state else None)
    eval_loader = None
    if cfg.train.eval_every > 0:
        test_shards = find_shards(cfg.data.test_dir)
        split = len(test_shards) >= world  # else every process evaluates the same records
        eval_loader = make_loader(test_shards, processor, cfg, rank if split else 0, world if split else 1, 0,
                                  shuffle=False)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    scheduler = make_scheduler(optimizer, cfg.train.max_steps)
    if cfg.train.compile:
        model.compile()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if resume_from is not None:
        load_training_state(accelerator, resume_from)  # model, optimizer, scheduler, RNG of this process
    run = Run(cfg=cfg, run_dir=run_dir, accelerator=accelerator, model=model, optimizer=optimizer,
              scheduler=scheduler, loader=loader, eval_loader=eval_loader, position=position, state=state,
              rebuild=rebuild, n_params=n_params, trainable=trainable, train_shards=train_shards,
              step=state.get("step", 0), nonfinite_total=state.get("nonfinite_steps", 0),
              last_update=state.get("step", 0))
    _open_outputs(run, resume_from)
    run.cost, run.interval = CostMeter(state.get("cost")), IntervalMeter(accelerator, n_params)
    run.bar = progress_bar(total=cfg.train.max_steps, initial=run.step, enabled=accelerator.is_main_process,
                           desc="train", unit="step", mininterval=1.0)
    model.train()
    run.start = time.perf_counter()
    run.batches = iter(loader)
    return run


def _open_outputs(run: Run, resume_from: Path | None) -> None:
    """The run folder's config.yaml and log, the trackers, and the run's first line on the console."""
    cfg, accelerator = run.cfg, run.accelerator
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.log_with:
        accelerator.project_configuration.logging_dir = str(run.run_dir / "tensorboard")
        accelerator.init_trackers(cfg.train.project, config=flat_dict(cfg.to_dict()),
                                  init_kwargs={"wandb": {"name": run.run_dir.name, "dir": str(run.run_dir)}})
    if accelerator.is_main_process:
        save_config(cfg, run.run_dir / "config.yaml")
        run.log_file = _open_log(run.run_dir / LOG_FILE, keep_until=run.step)
        trainable = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in run.trainable.items())
        print(f"training {run.n_params / 1e6:.2f}M parameters ({trainable} trainable) on "
              f"{accelerator.num_processes} process(es), device {accelerator.device}, {len(run.train_shards)} "
              f"shards, batch {cfg.train.batch_size} x {cfg.train.grad_accum_steps} accumulation per process, "
              f"{cfg.train.max_steps} steps" + (f", resuming from {resume_from} (step {run.step})" if resume_from else ""))


def train_step(run: Run) -> StepResult:
    """One optimizer step over `grad_accum_steps` micro-batches; a non-finite loss or gradient norm skips
    the update (counted; too many in a row stop the run)."""
    cfg, accelerator = run.cfg, run.accelerator
    micro_batches = []
    for _ in range(cfg.train.grad_accum_steps):
        waited = time.perf_counter()
        batch, info = next_batch(run.batches)
        run.interval.data_wait += time.perf_counter() - waited  # the loader's time only, as before
        run.skips.update(info.skipped)
        run.position.update(info.position)
        run.interval.add(batch, samples=len(info.keys))
        micro_batches.append({k: v.to(accelerator.device) for k, v in batch.items()})
    reading = {"weight": cfg.model.reading.weight, "answer_weight": cfg.model.reading.answer_weight}
    loss, _ = accumulate_gradients(run.model, micro_batches, accelerator, reading)
    # grad_clip <= 0: no clipping, but the norm is still measured (and guarded).
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), clip)
    finite = bool(torch.isfinite(loss)) and (grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm))))
    if finite:
        run.optimizer.step()
        run.nonfinite_run = 0
        run.last_update = run.step + 1
    else:  # the update would write NaN/inf into the weights: skip it, keep the schedule going
        run.nonfinite_total += 1
        run.nonfinite_run += 1
        run.first_nonfinite = run.first_nonfinite or run.step + 1
        # The weights are looked at here only, on a step that went wrong, so a healthy run pays nothing: a
        # finite update (a huge learning rate) can still have made them inf, and then every later loss is NaN.
        if not run.weights_bad_after and nonfinite_parameters(run.model):
            run.weights_bad_after = run.last_update
        log.warning("step %d: loss %s, gradient norm %s; update skipped", run.step + 1, loss.item(), grad_norm)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    if 0 < cfg.train.max_nonfinite_steps <= run.nonfinite_run:
        raise NonFiniteLossError(_nonfinite_message(run.step, run.nonfinite_run, cfg))
    return StepResult(loss=loss, grad_norm=grad_norm, read_loss=reading.get("read_loss"))


def log_if_due(run: Run, result: StepResult) -> None:
    """Every `log_every` steps (and at the last) a log line; every `eval_every` steps the held-out loss.
    Both go to train_log.jsonl and the trackers."""
    cfg, step = run.cfg, run.step
    last = step == cfg.train.max_steps
    rec: dict[str, Any] = {}
    if step % cfg.train.log_every == 0 or last:
        rec = {"step": step, "loss": round(result.loss.item(), 5), "lr": run.scheduler.get_last_lr()[0],
               **lr_by_component(run.optimizer),
               "grad_norm": round(float(result.grad_norm), 4) if result.grad_norm is not None else None,
               **run.interval.take(), "elapsed_s": round(time.perf_counter() - run.start, 1),
               "skipped_records": run.skips.total + run.state.get("skipped_records", 0),
               "skipped_by_reason": add_counts(run.skips.by_reason, run.state.get("skipped_by_reason", {})),
               "nonfinite_steps": run.nonfinite_total}
        if result.read_loss is not None:
            rec["read_loss"] = round(result.read_loss.item(), 5)
    if run.eval_loader is not None and (step % cfg.train.eval_every == 0 or last):
        held = heldout_metrics(run.model, run.eval_loader, run.accelerator, cfg.train.eval_batches)
        rec = {"step": step, **rec, **{k: round(v, 5) for k, v in held.items()}}
    if rec:
        run.accelerator.log(flat_dict(rec), step=step)  # trackers take numbers: skipped_by_reason.<reason>
        if run.accelerator.is_main_process:
            run.log_file.write(json.dumps(rec) + "\n")
            run.log_file.flush()
            run.bar.set_postfix(loss=f"{rec.get('loss', result.loss.item()):.3f}",
                                samples_s=f"{rec.get('samples_per_s', 0):.1f}")
    run.bar.update(1)


def checkpoint_if_due(run: Run) -> None:
    """Every `checkpoint_every` steps (not at the last: the final checkpoint is `finish_run`'s) the whole
    training state, under checkpoints/step-N."""
    cfg = run.cfg
    if not (cfg.train.checkpoint_every and run.step % cfg.train.checkpoint_every == 0
            and run.step < cfg.train.max_steps):
        return
    costs = run.cost.totals()
    save_training_state(run.accelerator, run.run_dir, run.step, {
        "data_position": _merged_position(run.accelerator, run.position), "nonfinite_steps": run.nonfinite_total,
        **_skipped_all_processes(run.skips, run.state),
        "cost": {"wall_time_s": costs["wall_time_s"], "energy_kwh": costs["energy_kwh"]}},
        keep=cfg.train.keep_checkpoints)


def finish_run(run: Run) -> dict[str, Any]:
    """Save the publishable checkpoint, the summary and the cost; close the trackers. Returns the summary."""
    cfg, accelerator = run.cfg, run.accelerator
    run.bar.close()
    wall = time.perf_counter() - run.start
    skipped = _skipped_all_processes(run.skips, run.state)
    if skipped["skipped_records"]:
        log.warning("skipped %d bad records during training (%s; see the warnings above for their keys)",
                    skipped["skipped_records"], ", ".join(f"{n} {r}" for r, n in skipped["skipped_by_reason"].items()))
    shards_by_rank = gather_object([run.loader.dataset.rank_shards()])
    cost = run_cost(accelerator, run.cost)
    world = accelerator.num_processes
    summary = {"steps": run.step, "samples": run.step * cfg.train.batch_size * cfg.train.grad_accum_steps * world,
               "wall_time_s": round(wall, 1), "device": str(accelerator.device.type), "num_processes": world,
               "parameters": run.n_params, "trainable_parameters": run.trainable, **skipped,
               "nonfinite_steps": run.nonfinite_total, "total_wall_time_s": cost["wall_time_s"],
               "gpu_hours": cost["gpu_hours"], "energy_kwh": cost["energy_kwh"], "gpu": cost["gpu"],
               "shards_by_rank": shards_by_rank, "resumed_from_step": run.state.get("step", 0)}
    accelerator.wait_for_everyone()
    final = publishable_model(accelerator, run.model, run.rebuild)
    refusal = [_nonfinite_weights_message(run, final) if accelerator.is_main_process else ""]
    broadcast_object_list(refusal)  # every process stops, or none does
    if refusal[0]:
        raise NonFiniteLossError(refusal[0])
    if accelerator.is_main_process:
        run.log_file.close()
        final.save_pretrained(run.run_dir / "checkpoint", training=summary)
        (run.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        (run.run_dir / "cost.json").write_text(json.dumps(cost, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers (and, in recent accelerate, the process group)
    return summary


def _open_log(path: Path, keep_until: int):
    """The log for appending; on a resume, lines past the resumed step (written after the checkpoint by
    the interrupted run, the last perhaps cut short) are dropped so the log reads as one run."""
    kept = []
    if keep_until and path.is_file():
        kept = [r for r in read_train_log(path) if r.get("step", 0) <= keep_until]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return open(path, "a")
