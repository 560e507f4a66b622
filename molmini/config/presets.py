"""Named model presets: pretrained towers and LMs that download from the hub for users who are online.

`model.preset: siglip-b16-smollm2-135m` in a config (or `model.preset=...` on the command line) fills the
model section; keys given beside it override the preset's. Feature layers follow Molmo (the 3rd- and
10th-from-last blocks, concatenated); the crop budget follows the tower's resolution.
"""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # ~230M parameters: a tower and LM small enough for one consumer GPU.
    "siglip-b16-smollm2-135m": {
        "vision": {"model_name": "ViT-B-16-SigLIP", "pretrained": "webli", "feature_layers": [-3, -10]},
        "connector": {"kind": "attention_pool_2x2"},
        "lm": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "image": {"max_crops": 6},
    },
    # ~0.9B parameters: Molmo-style SigLIP SO400M at 384 px with Qwen2.5-0.5B.
    "siglip-so400m-qwen2.5-0.5b": {
        "vision": {"model_name": "ViT-SO400M-14-SigLIP-384", "pretrained": "webli", "feature_layers": [-3, -10]},
        "connector": {"kind": "attention_pool_2x2"},
        "lm": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
        "image": {"max_crops": 12},
    },
    # ~1.9B parameters: Molmo's own tower (OpenAI CLIP ViT-L/14 at 336 px) with Qwen2.5-1.5B.
    "clip-l14-336-qwen2.5-1.5b": {
        "vision": {"model_name": "ViT-L-14-336", "pretrained": "openai", "feature_layers": [-3, -10]},
        "connector": {"kind": "attention_pool_2x2"},
        "lm": {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"},
        "image": {"max_crops": 12},
    },
}


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise KeyError(f"model.preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
