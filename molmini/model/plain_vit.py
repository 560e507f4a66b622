"""open_clip's VisionTransformer in plain torch, for inference: the same modules under the same names
(conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks.N.{ln_1, attn, ln_2, mlp.c_fc,
mlp.c_proj}), so a tower molmini trained with open_clip loads its state dict unchanged and computes the same
patch features, with neither open_clip nor timm installed.

It is what a checkpoint's self-contained remote code runs (molmini/hub/standalone.py assembles those files from
this module's source); molmini trains with open_clip's own tower (molmini/model/vision.py), which
`plain_tower_spec` there describes in the keyword arguments of `PlainVisionTower`. Only what molmini's towers use
is here: the blocks after the last feature layer, the final norm and the pooling head are pruned away by
VisionTower, and patch dropout is off at inference. Also the conv stem (`vision.conv_stem`), which replaces
open_clip's patch embedding in both towers.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

ACTIVATIONS = ("gelu", "quick_gelu")


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a [B, C, H, W] map: a patch's features never depend
    on other patches' pixels (GroupNorm or BatchNorm would mix them, and the padding with them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """3x3 stride-2 convolutions (channel LayerNorm, GELU) through `channels`, then one convolution to
    `width` covering the rest of the patch stride: [B, 3, H, W] -> [B, width, H / patch, W / patch], the
    shape of the patchify convolution it replaces."""

    def __init__(self, channels: list[int], width: int, patch_size: int):
        super().__init__()
        if 2 ** len(channels) > patch_size:
            raise ValueError(f"vision.conv_stem has {len(channels)} stride-2 convolutions, which shrink the "
                             f"image by {2 ** len(channels)}, more than the patch size {patch_size}; use at most "
                             f"{max(patch_size.bit_length() - 1, 0)} entries")
        if patch_size % 2 ** len(channels):
            raise ValueError(f"vision.conv_stem: the patch size {patch_size} is not divisible by "
                             f"2**{len(channels)}; use a power-of-two patch size or fewer stem entries")
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), ChannelNorm(c), nn.GELU()]
            c_in = c
        rest = patch_size // 2 ** len(channels)
        layers.append(nn.Conv2d(c_in, width, kernel_size=rest, stride=rest))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation (open_clip's `QuickGELU`, the `-quickgelu` models)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (open_clip's `LayerScale`, `ls_init_value` set)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PlainBlock(nn.Module):
    """open_clip's ResidualAttentionBlock (self-attention only): pre-norm attention, then a pre-norm MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: str, layer_scale: bool, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = LayerScale(width) if layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        act = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, mlp_width)), ("gelu", act),
                                              ("c_proj", nn.Linear(mlp_width, width))]))
        self.ls_2 = LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=None)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class PlainTransformer(nn.Module):
    def __init__(self, blocks: list[PlainBlock]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class PlainViT(nn.Module):
    """open_clip's VisionTransformer up to its last kept block: patch embedding, class token, learned position
    embedding, ln_pre, blocks. `intermediates` gives the patch tokens (no class token) after chosen blocks."""

    def __init__(self, image_size: int, patch_size: int, width: int, heads: int, blocks: int, mlp_width: int,
                 activation: str = "gelu", layer_scale: bool = False, ln_pre: bool = True, eps: float = 1e-5,
                 conv_stem: list[int] | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {ACTIVATIONS}")
        if conv_stem:
            self.conv1 = ConvStem(list(conv_stem), width, patch_size)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        grid = image_size // patch_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps) if ln_pre else nn.Identity()
        self.transformer = PlainTransformer([PlainBlock(width, heads, mlp_width, activation, layer_scale, eps)
                                             for _ in range(blocks)])

    def intermediates(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, grid*grid, width]
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        out = []
        for i, block in enumerate(self.transformer.resblocks[:max(layers) + 1]):
            x = block(x)
            if i in layers:
                out.append(x[:, 1:])
        return out


class PlainVisionTower(nn.Module):
    """VisionTower's forward for an open_clip ViT, without open_clip: [B, 3, S, S] normalised pixels -> the patch
    features of the `feature_layers` blocks (sorted, non-negative), concatenated: [B, patches, width * layers]."""

    def __init__(self, feature_layers: list[int], **vit: object):
        super().__init__()
        self.visual = PlainViT(**vit)
        self.layers = sorted(feature_layers)
        self.output_dim = self.visual.transformer.resblocks[0].ln_1.normalized_shape[0] * len(self.layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.visual.intermediates(pixel_values, self.layers), dim=-1)
