"""molmini: small task-specific vision-language models, Molmo's recipe at a size one GPU trains.

The top-level names load lazily: `import molmini` (or `molmini.config`, `molmini.errors`) costs no torch,
transformers or open_clip import until a model or processor is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Config": "config", "ConfigError": "config", "load_config": "config", "Record": "data.records",
            "RecordError": "data.records", "MolminiModel": "model.vlm", "MolminiProcessor": "data.processor",
            "speed_up": "model.fast_inference"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'molmini' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
