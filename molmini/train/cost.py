"""What a run costs: wall time, GPU-hours, energy (NVML's energy counter where there is an NVIDIA GPU and
pynvml), and an estimate of model FLOPs utilisation (MFU)."""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peak per GPU (vendor data sheets), matched against torch's device name in order.
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
                   ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12)]


def peak_flops_by_name(name: str) -> float | None:
    """The bf16 peak FLOP/s of a GPU named as torch names it ("NVIDIA H100 80GB HBM3"), or None if unknown."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of the GPU `device` is on, or None (CPU, or a GPU not in the table)."""
    return peak_flops_by_name(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def training_flops(num_params: int, tokens: float) -> float:
    """The usual estimate of a training step's FLOPs: 6 per parameter per token (forward 2, backward 4).
    It ignores attention's quadratic term and counts the vision tower's parameters against LM tokens, so
    MFU from it is a rough guide, best compared between runs of one model."""
    return 6.0 * num_params * tokens


def _nvml_energy_mj() -> float | None:
    """This process's GPU energy counter in millijoules since the driver loaded, or None without NVML."""
    if not torch.cuda.is_available():
        return None
    try:
        import pynvml
        pynvml.nvmlInit()
        index = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if ids and index < len(ids) and ids[index].isdigit():
            index = int(ids[index])  # NVML counts physical devices; CUDA counts the visible ones
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except Exception as e:  # no pynvml, no driver access, or a GPU older than Volta
        log.info("GPU energy not measured (%s: %s); `pip install nvidia-ml-py` adds it", type(e).__name__, e)
        return None


class CostMeter:
    """Started with the training loop; `totals` gives this process's wall time and energy so far plus what
    earlier segments of the run (before a resume) had used."""

    def __init__(self, previous: dict[str, Any] | None = None):
        self.previous = previous or {}
        self.start = time.perf_counter()
        self.energy_start = _nvml_energy_mj()

    def totals(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.start + self.previous.get("wall_time_s", 0.0)
        energy = None
        now = _nvml_energy_mj() if self.energy_start is not None else None
        if now is not None:
            energy = (now - self.energy_start) / 3.6e9 + (self.previous.get("energy_kwh") or 0.0)  # mJ -> kWh
        return {"wall_time_s": wall, "energy_kwh": energy}


def run_cost(accelerator, meter: CostMeter) -> dict[str, Any]:
    """Wall time, GPU-hours (wall time x GPUs) and energy summed over processes; energy is None unless every
    process could read its GPU's counter."""
    mine = meter.totals()
    gpus = accelerator.num_processes if accelerator.device.type == "cuda" else 0
    energy = mine["energy_kwh"]
    have = torch.tensor([0.0 if energy is None else energy, 1.0 if energy is not None else 0.0],
                        device=accelerator.device, dtype=torch.float64 if accelerator.device.type != "mps" else torch.float32)
    total = accelerator.reduce(have, "sum")
    all_measured = int(total[1].item()) == accelerator.num_processes
    return {"wall_time_s": round(mine["wall_time_s"], 1),
            "gpu_hours": round(mine["wall_time_s"] * gpus / 3600, 4),
            "energy_kwh": round(float(total[0].item()), 4) if all_measured else None,
            "gpu": torch.cuda.get_device_name(accelerator.device) if gpus else None}
