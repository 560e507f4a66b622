"""What the training loop measures between log lines: bad records by reason over all stream workers, and
throughput (samples and tokens per second, data-loader wait, MFU and peak memory on a GPU). What a whole
run costs is in cost.py."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from molmini.data.reader import SkipReport, add_counts
from molmini.train.cost import peak_flops, training_flops


@dataclass
class SkipCounter:
    """Bad records, by reason, as each (process, worker) of the stream reports its running counts (each
    worker reads its own shards and counts a record once, so the sum over workers counts it once)."""
    by_worker: dict[tuple, dict[str, int]] = field(default_factory=dict)

    def update(self, reports: list[SkipReport]) -> None:
        for report in reports:
            worker = (report.rank, report.worker)
            if report.total >= sum(self.by_worker.get(worker, {}).values()):
                self.by_worker[worker] = report.by_reason

    @property
    def by_reason(self) -> dict[str, int]:
        return add_counts(*self.by_worker.values())

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


class IntervalMeter:
    """Throughput since the last log line: samples and tokens per second over all processes, time spent
    waiting for the data loader, and on a GPU the MFU estimate and peak memory."""

    def __init__(self, accelerator: Accelerator, num_params: int):
        self.accelerator, self.num_params = accelerator, num_params
        self.peak = peak_flops(accelerator.device)
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.samples = self.tokens = self.slots = self.data_wait = 0.0
        self.since = now

    def add(self, batch: dict[str, torch.Tensor], samples: int) -> None:
        """A micro-batch of `samples` records (its rows, unless packing put several records in a row)."""
        self.samples += samples * self.accelerator.num_processes
        self.tokens += float(batch["attention_mask"].sum())
        self.slots += float(batch["attention_mask"].numel())

    def take(self) -> dict[str, float]:
        acc, now = self.accelerator, time.perf_counter()
        seconds = now - self.since
        tokens = acc.reduce(torch.tensor(self.tokens, device=acc.device), "sum").item()
        out = {"samples_per_s": round(self.samples / seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
               "data_wait_s": round(self.data_wait, 3),
               # this process's token slots that were padding (packing lowers it)
               "padding_fraction": round(1.0 - self.tokens / self.slots, 4) if self.slots else None}
        if self.peak:
            out["mfu"] = round(training_flops(self.num_params, tokens) / seconds / (self.peak * acc.num_processes), 4)
        if acc.device.type == "cuda":
            out["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(acc.device) / 2**30, 2)
        self._reset(now)
        return out
