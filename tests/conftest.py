"""Shared fixtures: a tiny model config, a tokenizer trained on the spot, and a tiny model (the helpers they use
are in tests/helpers/)."""
from __future__ import annotations

import os

import pytest

from molmini.config import ModelConfig
from molmini.data.tokenizer import train_bpe_tokenizer
from tests.helpers import corpus, tiny_config

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(corpus(), vocab_size=300)


@pytest.fixture(scope="session")
def model_config() -> ModelConfig:
    return tiny_config().model


@pytest.fixture
def tiny_model(tokenizer, model_config):
    import torch

    from molmini.model.vlm import MolminiModel
    torch.manual_seed(0)
    return MolminiModel(model_config, tokenizer).eval()
