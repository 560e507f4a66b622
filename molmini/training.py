"""The training loop on accelerate: AdamW, warmup + cosine, gradient clipping, loss over the global batch's
loss tokens, a progress bar, wandb through accelerate's trackers, and a checkpoint at the end."""
from __future__ import annotations

import json
import logging
import math
import os
import random
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from .config import Config, save_config
from .data import Record, ShardStream, find_shards
from .model import MolminiModel
from .tokenizer import add_special_tokens, train_bpe_tokenizer

log = logging.getLogger(__name__)


# ---- tokenizer ------------------------------------------------------------------------------------------

def iter_shard_texts(shards: list[str], transcripts: bool = False) -> Iterator[str]:
    """Every message of every record (and its meta.transcript if asked), read from the json members only
    (images stay undecoded)."""
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    try:
                        body = json.loads(tar.extractfile(member).read())
                        yield from (m["content"] for m in body["messages"])
                        if transcripts and body.get("meta", {}).get("transcript"):
                            yield body["meta"]["transcript"]
                    except (ValueError, KeyError, TypeError):
                        continue  # the stream counts and reports bad records; the tokenizer just skips them


def build_tokenizer(cfg: Config, train_shards: list[str]):
    if cfg.model.lm.name_or_path:
        return add_special_tokens(AutoTokenizer.from_pretrained(cfg.model.lm.name_or_path))
    texts = iter_shard_texts(train_shards, transcripts=cfg.data.transcript_prob > 0)
    return train_bpe_tokenizer(texts, cfg.model.tokenizer.vocab_size)


# ---- data -----------------------------------------------------------------------------------------------

TRANSCRIBE_PROMPT = "Transcribe the text of this image."


def training_transform(processor, transcript_prob: float = 0.0):
    """Record -> model inputs; the order of a record's question/answer pairs is shuffled each time it is
    seen, so every question type is learned both as the first turn and after others. With probability
    `transcript_prob` a record's `meta.transcript` joins as a last exchange: dense supervision on what
    the image shows, which is what teaches a from-scratch model to read (shared reference)."""

    def transform(record: Record, rng: random.Random) -> dict[str, Any]:
        pairs = [record.messages[i:i + 2] for i in range(0, len(record.messages) - 1, 2)]
        rng.shuffle(pairs)
        transcript = record.meta.get("transcript")
        if transcript and rng.random() < transcript_prob:
            # Last, so no question can copy its answer from the transcript (there is none at test time).
            pairs.append([{"role": "user", "content": TRANSCRIBE_PROMPT},
                          {"role": "assistant", "content": transcript}])
        messages = [dict(m) for pair in pairs for m in pair]
        return processor.process_record(record, messages)

    return transform


@dataclass
class SkipCounter:
    """Running skip counts reported by each (process, worker) of the stream."""
    by_worker: dict[tuple, int] = field(default_factory=dict)

    def update(self, reports: list[tuple]) -> None:
        for rank, wid, n in reports:
            self.by_worker[(rank, wid)] = max(n, self.by_worker.get((rank, wid), 0))

    @property
    def total(self) -> int:
        return sum(self.by_worker.values())


# ---- the loop -------------------------------------------------------------------------------------------

def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator logging to the configured trackers: wandb runs offline unless WANDB_MODE says
    otherwise (e.g. `WANDB_MODE=online` for a logged-in user) and is left out when WANDB_MODE=disabled."""
    trackers = list(cfg.train.trackers)
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        trackers = [t for t in trackers if t != "wandb"]
    elif "wandb" in trackers:
        os.environ.setdefault("WANDB_MODE", "offline")
    # Several processes without CUDA (e.g. `accelerate launch --multi_gpu` on a CPU host): accelerate only
    # sets up its gloo process group when asked for the CPU explicitly.
    cpu_multiprocess = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(log_with=trackers or None, cpu=cpu_multiprocess)


def train(cfg: Config, run_dir: Path, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train per `cfg`; writes the checkpoint to `run_dir/checkpoint` and returns a summary."""
    accelerator = accelerator or make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between processes instead of oversubscribing them (OMP_NUM_THREADS overrides).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    set_seed(cfg.train.seed)
    run_dir = Path(run_dir)
    train_shards = find_shards(cfg.data.train_dir)

    # Tokenizer and model are built identically on every process (same seed, same text).
    tokenizer = build_tokenizer(cfg, train_shards)
    model = MolminiModel(cfg.model, tokenizer, max_length=cfg.data.max_length)
    processor = model.processor
    n_params = sum(p.numel() for p in model.parameters())

    workers = min(cfg.data.num_workers, len(train_shards) // world)
    stream = ShardStream(train_shards, training_transform(processor, cfg.data.transcript_prob), shuffle_buffer=cfg.data.shuffle_buffer,
                         seed=cfg.train.seed, endless=True, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.train.batch_size, num_workers=workers,
                                         collate_fn=lambda s: {**processor.collate(s), "skipped": [x["skipped"] for x in s]},
                                         persistent_workers=workers > 0)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps)
    # The loader is not prepared: the stream already splits shards by process, so each reads its own.
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.log_with:
        accelerator.init_trackers(cfg.train.project, config=_flat(cfg.to_dict()),
                                  init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}})
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
        log_file = open(run_dir / "train_log.jsonl", "w")
        print(f"training {n_params / 1e6:.2f}M parameters on {world} process(es), device {accelerator.device}, "
              f"{len(train_shards)} shards, batch {cfg.train.batch_size} per process, {cfg.train.max_steps} steps")

    skips = SkipCounter()
    bar = tqdm(total=cfg.train.max_steps, disable=not accelerator.is_main_process, desc="train", dynamic_ncols=True,
               mininterval=1.0)
    model.train()
    start = last = time.perf_counter()
    samples_since, step, batches = 0, 0, iter(loader)
    while step < cfg.train.max_steps:
        batch = next(batches)
        skips.update(batch.pop("skipped"))
        batch.pop("keys")
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        out = model(**batch)
        # Sum of token losses over the global batch's loss-token count; DDP averages gradients over
        # processes, so scale by the process count to get the global-batch mean.
        global_tokens = accelerator.reduce(out["num_loss_tokens"].detach().float(), "sum").clamp(min=1)
        loss = out["loss_sum"] * world / global_tokens
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        samples_since += batch["input_ids"].shape[0] * world
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            now = time.perf_counter()
            global_loss = accelerator.reduce(out["loss_sum"].detach(), "sum").item() / global_tokens.item()
            rec = {"step": step, "loss": round(global_loss, 5), "lr": scheduler.get_last_lr()[0],
                   "grad_norm": round(float(grad_norm), 4), "samples_per_s": round(samples_since / (now - last), 2),
                   "elapsed_s": round(now - start, 1), "skipped_records": skips.total}
            samples_since, last = 0, now
            accelerator.log(rec, step=step)
            if accelerator.is_main_process:
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{rec['loss']:.3f}", samples_s=f"{rec['samples_per_s']:.1f}")
        bar.update(1)
    bar.close()
    wall = time.perf_counter() - start
    skipped_total = int(accelerator.reduce(torch.tensor(skips.total, device=accelerator.device), "sum").item())
    if skipped_total:
        log.warning("skipped %d unreadable records during training (see the warnings above for their keys)",
                    skipped_total)
    shards_by_rank = gather_object([stream.rank_shards()])
    summary = {"steps": step, "samples": step * cfg.train.batch_size * world, "wall_time_s": round(wall, 1),
               "device": str(accelerator.device.type), "num_processes": world, "parameters": n_params,
               "skipped_records": skipped_total, "shards_by_rank": shards_by_rank}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        log_file.close()
        accelerator.unwrap_model(model).save_pretrained(run_dir / "checkpoint", training=summary)
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers (and, in recent accelerate, the process group)
    return summary


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
