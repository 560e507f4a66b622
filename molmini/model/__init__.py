"""The models: molmini's own (vlm.py: vision.py's open_clip tower, connector.py, language_model.py, the
answer loss in loss.py) and a transformers VLM brought in (transformers_vlm.py). Both meet the loop, the
stages and evaluation through the protocol in interface.py.

`from molmini.model import MolminiModel` loads lazily, like `from molmini import MolminiModel`."""
from __future__ import annotations

from typing import Any

__all__ = ["MolminiModel", "HFVisionLanguageModel"]


def __getattr__(name: str) -> Any:
    if name == "MolminiModel":
        from molmini.model.vlm import MolminiModel
        return MolminiModel
    if name == "HFVisionLanguageModel":
        from molmini.model.transformers_vlm import HFVisionLanguageModel
        return HFVisionLanguageModel
    raise AttributeError(f"module 'molmini.model' has no attribute {name!r}")
