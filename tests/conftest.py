"""Shared fixtures: a tiny model config, a tokenizer trained on the spot, and small records."""
from __future__ import annotations

import io
import os
import random
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")

from molmini.config import Config, ModelConfig, load_config  # noqa: E402
from molmini.data import Record  # noqa: E402
from molmini.tokenizer import train_bpe_tokenizer  # noqa: E402

TINY_OVERRIDES = [
    "model.vision.vision_cfg={image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}",
    "model.lm.config={model_type: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
    "num_key_value_heads: 2, intermediate_size: 128, max_position_embeddings: 256, tie_word_embeddings: true}",
    "model.tokenizer.vocab_size=300",
]


def tiny_config(*extra: str) -> Config:
    return load_config(None, TINY_OVERRIDES + list(extra))


def png_bytes(colour: str, size: int = 32, bars: int = 3) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for i in range(bars):
        draw.rectangle([2 + i * 6, size - 4 - 5 * (i + 1), 6 + i * 6, size - 2], fill=colour)
    buf = io.BytesIO()
    img.save(buf, "png")
    return buf.getvalue()


def make_records(n: int, seed: int = 0) -> list[Record]:
    """Small records whose answers depend on the image (colour and number of bars)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, bars = rng.choice(["red", "blue", "green"]), rng.randint(1, 4)
        out.append(Record(key=f"r{seed}-{i:05d}", image=png_bytes(colour, bars=bars), messages=[
            {"role": "user", "content": "<image>What colour are the bars?"}, {"role": "assistant", "content": colour},
            {"role": "user", "content": "How many bars are there?"}, {"role": "assistant", "content": str(bars)}],
            source="test", task="toy", meta={"qa_types": ["colour", "count"]}))
    return out


def corpus() -> list[str]:
    return [m["content"] for r in make_records(50) for m in r.messages]


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(corpus(), vocab_size=300)


@pytest.fixture(scope="session")
def model_config() -> ModelConfig:
    return tiny_config().model


@pytest.fixture
def tiny_model(tokenizer, model_config):
    import torch
    from molmini.model import MolminiModel
    torch.manual_seed(0)
    return MolminiModel(model_config, tokenizer).eval()
