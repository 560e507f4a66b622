"""Connectors from vision patch features to LM embeddings, behind one interface.

The processor groups the kept patch features of every view into windows (`molmini.data.crops.pool_windows`):
2x2 neighbourhoods for the pooling connectors, single patches for the MLP. A connector maps
`windows [T, k, C]` (with `valid [T, k]`, False where a window passes the edge of an odd-sized grid) to
`[T, D]`: one LM embedding per window, in the order of the image placeholder tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molmini.config import ConnectorConfig


class SwiGLU(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.gate_up = nn.Linear(in_dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class AttentionPool2x2(nn.Module):
    """Molmo's connector: each 2x2 window of patches is pooled by attention with the window's mean as the
    query, then a SwiGLU MLP maps it to the LM width."""
    pool = 2

    def __init__(self, in_dim: int, out_dim: int, mlp_hidden: int = 0):
        super().__init__()
        heads = max(1, in_dim // 64)
        while in_dim % heads:
            heads -= 1
        self.attn = nn.MultiheadAttention(in_dim, heads, batch_first=True)
        self.mlp = SwiGLU(in_dim, mlp_hidden or 2 * out_dim, out_dim)

    def forward(self, windows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = valid.unsqueeze(-1).to(windows.dtype)
        query = (windows * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        pooled, _ = self.attn(query, windows, windows, key_padding_mask=~valid, need_weights=False)
        return self.mlp(pooled.squeeze(1))


class PixelShuffleLinear(nn.Module):
    """SmolVLM / nanoVLM: each 2x2 window's four patch vectors are concatenated (space to depth, 4x fewer
    tokens) and one linear layer maps them to the LM width; positions past an odd grid's edge are zeros."""
    pool = 2

    def __init__(self, in_dim: int, out_dim: int, mlp_hidden: int = 0):
        super().__init__()
        self.proj = nn.Linear(4 * in_dim, out_dim, bias=False)

    def forward(self, windows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.proj((windows * valid.unsqueeze(-1).to(windows.dtype)).flatten(1))


class MLPProjector(nn.Module):
    """LLaVA-1.5: every patch becomes one LM token through a two-layer GELU MLP (no pooling)."""
    pool = 1

    def __init__(self, in_dim: int, out_dim: int, mlp_hidden: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, mlp_hidden or out_dim), nn.GELU(),
                                 nn.Linear(mlp_hidden or out_dim, out_dim))

    def forward(self, windows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.mlp(windows.squeeze(1))


CONNECTORS = {"attention_pool_2x2": AttentionPool2x2, "pixel_shuffle": PixelShuffleLinear, "mlp": MLPProjector}


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.kind not in CONNECTORS:
        raise ValueError(f"model.connector.kind {cfg.kind!r} is unknown; choose one of {sorted(CONNECTORS)}")
    if cfg.kind == "pixel_shuffle" and cfg.mlp_hidden:
        raise ValueError(f"model.connector.mlp_hidden={cfg.mlp_hidden} has no effect on the pixel_shuffle connector "
                         "(one linear layer, no MLP); set it to 0, or choose attention_pool_2x2 or mlp")
    return CONNECTORS[cfg.kind](in_dim, out_dim, cfg.mlp_hidden)
