"""The reading loss: a linear head on the tower's patch features names the text token its renderer drew in
each patch (targets: molmini/data/reading.py), trained with cross-entropy beside the answer loss.

Why: the answer loss reaches a from-scratch tower only through the connector and the LM, too weak a signal
to learn glyphs in tens of thousands of samples; told per patch what was drawn there, the same tower reads
chart labels within minutes (docs/recipe-study.md). The head exists only while model.reading.weight > 0
and is left out of saved checkpoints: it has no place in inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molmini.data.processor import IGNORE_INDEX

READ_HEAD = "read_head"  # the head's module name in MolminiModel (its parameters get their own optimizer group)


def build_read_head(width: int, vocab_size: int) -> nn.Linear:
    return nn.Linear(width, vocab_size)


def read_outputs(logits: torch.Tensor, labels: torch.Tensor, no_text: int) -> dict[str, torch.Tensor]:
    """`logits` [N crops, P patches, V] against `labels` [N, P]: the mean cross-entropy over the patches that
    count (not padding), and how many of the patches that hold text are named right (for read_accuracy)."""
    flat, target = logits.flatten(0, 1).float(), labels.flatten()
    counted = target != IGNORE_INDEX
    loss = F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX) if bool(counted.any()) else flat.sum() * 0
    text = counted & (target != no_text)
    correct = (flat.detach().argmax(-1) == target) & text
    return {"read_loss": loss, "read_correct": correct.sum(), "read_count": text.sum()}
