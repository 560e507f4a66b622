"""The training loss, written once: next-token cross-entropy summed over the answer tokens only.

Which tokens carry loss is decided by the processor (labels are IGNORE_INDEX everywhere else, see
processor.py); this module is the one place that turns labels into loss targets. The LM head and the
log-softmax run only at the positions whose next token is a target, in chunks of `chunk_tokens` positions
under activation checkpointing, so no [tokens, vocabulary] float32 tensor is ever held whole: at a 49k
vocabulary and 13% answer positions this is most of a plain step's time and about half its peak memory.
The caller divides the sum by the number of targets in the global batch (training.accumulate_gradients).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from molmini.data.processor import IGNORE_INDEX

__all__ = ["CHUNK_TOKENS", "IGNORE_INDEX", "answer_loss_sum", "count_loss_tokens", "head_outputs", "loss_targets"]

CHUNK_TOKENS = 1024


def loss_targets(labels: torch.Tensor) -> torch.Tensor:
    """The next-token targets: position t predicts labels[t + 1]; the last position predicts nothing."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def count_loss_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens of `labels` carry loss (the normaliser of the global batch)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
                ) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def answer_loss_sum(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear,
                    chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Sum of the cross-entropy of `head(hidden)` against the next-token labels, over loss positions only.

    hidden: [B, L, D] final hidden states; labels: [B, L] with IGNORE_INDEX where no loss is taken. Equal
    to the plain `cross_entropy(head(hidden)[:, :-1], labels[:, 1:], reduction="sum")` (tested to 1e-5)."""
    targets = loss_targets(labels).flatten()
    if torch.compiler.is_compiling():
        # Under torch.compile: no data-dependent shapes (they break the graph) and one fused computation;
        # ignored positions add zero. The compiler frees what it can; eager runs take the lean path below.
        logits = F.linear(hidden.flatten(0, 1), head.weight, head.bias).float()
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    h = hidden.flatten(0, 1).index_select(0, keep)
    t = targets.index_select(0, keep)
    # Zero, but part of the graph: a batch without answer tokens still backpropagates (zeros).
    total = h.sum().float() * 0.0
    for start in range(0, h.shape[0], chunk_tokens):
        part = (h[start:start + chunk_tokens], head.weight, head.bias, t[start:start + chunk_tokens])
        if torch.is_grad_enabled() and h.requires_grad:
            # Recompute the chunk's logits in backward instead of keeping them.
            total = total + checkpoint(_chunk_loss, *part, use_reentrant=False)
        else:
            total = total + _chunk_loss(*part)
    return total


def head_outputs(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor | None,
                 return_logits: bool) -> dict[str, torch.Tensor]:
    """What a model's forward returns from its final hidden states: the logits when asked for (or when there
    are no labels), and with labels the loss summed over the answer tokens (`loss_sum`), their count and
    their mean. The trainer divides the sum by the loss tokens of the global batch."""
    out: dict[str, torch.Tensor] = {}
    if return_logits or labels is None:
        out["logits"] = head(hidden)
    if labels is not None:
        loss_sum = answer_loss_sum(hidden, labels, head)
        n = count_loss_tokens(labels)
        out.update(loss_sum=loss_sum, num_loss_tokens=n, loss=loss_sum / n.clamp(min=1))
    return out
