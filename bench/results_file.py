"""Benchmark results as JSON: what machine a figure came from, how loaded it was, and one file gathering
several runs, each under its own key (e.g. "train/S2"), so a results file holds a whole session."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """The machine and software a figure was measured on."""
    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    try:
        import transformers
        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return out


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other users of the machine show here); None where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def merge_into(path: str | Path, key: str, result: dict[str, Any]) -> Path:
    """Write `result` under `key` into the JSON file at `path`, keeping the other keys already there."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds JSON that is not an object; give --json a new file")
    data[key] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path
