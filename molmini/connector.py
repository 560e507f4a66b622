"""Connectors from vision patch features to LM embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConnectorConfig


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
    query, then a SwiGLU MLP maps it to the LM width. A grid of g x g patches gives ceil(g/2)^2 tokens."""

    def __init__(self, in_dim: int, out_dim: int, mlp_hidden: int = 0):
        super().__init__()
        heads = max(1, in_dim // 64)
        while in_dim % heads:
            heads -= 1
        self.attn = nn.MultiheadAttention(in_dim, heads, batch_first=True)
        self.mlp = SwiGLU(in_dim, mlp_hidden or 2 * out_dim, out_dim)

    @staticmethod
    def pooled_grid(grid: int) -> int:
        return (grid + 1) // 2

    def forward(self, feats: torch.Tensor, grid: int) -> torch.Tensor:
        windows = _windows_2x2(feats, grid)
        b, tokens, _, c = windows.shape
        windows = windows.reshape(b * tokens, 4, c)
        query = windows.mean(dim=1, keepdim=True)
        pooled, _ = self.attn(query, windows, windows, need_weights=False)
        return self.mlp(pooled.view(b, tokens, c))


def _windows_2x2(feats: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, g*g, C] -> [B, ceil(g/2)^2, 4, C]: the 2x2 windows of the patch grid (odd grids zero-padded)."""
    b, n, c = feats.shape
    if n != grid * grid:
        raise ValueError(f"expected {grid}x{grid}={grid * grid} patch features, got {n}")
    x = feats.view(b, grid, grid, c)
    if grid % 2:
        x = F.pad(x, (0, 0, 0, 1, 0, 1))
    g = x.shape[1] // 2
    return x.view(b, g, 2, g, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, 4, c)


class PixelShuffleLinear(nn.Module):
    """SmolVLM / nanoVLM: each 2x2 window's four patch vectors are concatenated (space to depth, 4x fewer
    tokens) and one linear layer maps them to the LM width."""

    def __init__(self, in_dim: int, out_dim: int, mlp_hidden: int = 0):
        super().__init__()
        self.proj = nn.Linear(4 * in_dim, out_dim, bias=False)

    @staticmethod
    def pooled_grid(grid: int) -> int:
        return (grid + 1) // 2

    def forward(self, feats: torch.Tensor, grid: int) -> torch.Tensor:
        windows = _windows_2x2(feats, grid)
        return self.proj(windows.flatten(2))


class MLPProjector(nn.Module):
    """LLaVA-1.5: every patch becomes one LM token through a two-layer GELU MLP (no pooling)."""

    def __init__(self, in_dim: int, out_dim: int, mlp_hidden: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, mlp_hidden or out_dim), nn.GELU(),
                                 nn.Linear(mlp_hidden or out_dim, out_dim))

    @staticmethod
    def pooled_grid(grid: int) -> int:
        return grid

    def forward(self, feats: torch.Tensor, grid: int) -> torch.Tensor:
        if feats.shape[1] != grid * grid:
            raise ValueError(f"expected {grid}x{grid}={grid * grid} patch features, got {feats.shape[1]}")
        return self.mlp(feats)


CONNECTORS = {"attention_pool_2x2": AttentionPool2x2, "pixel_shuffle": PixelShuffleLinear, "mlp": MLPProjector}


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.kind not in CONNECTORS:
        raise ValueError(f"model.connector.kind {cfg.kind!r} is unknown; choose one of {sorted(CONNECTORS)}")
    return CONNECTORS[cfg.kind](in_dim, out_dim, cfg.mlp_hidden)
