"""The vision tower: any open_clip visual model, returning patch features from chosen layers."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import open_clip
import torch
from torch import nn

from molmini.config import VisionConfig
from molmini.model.plain_vit import ChannelNorm, ConvStem  # noqa: F401  (ConvStem: imported from here too)

log = logging.getLogger(__name__)

# molmini's own open_clip configs (the tiny default tower) live beside this file.
open_clip.add_model_config(Path(__file__).parent / "open_clip_configs")


def _vision_cfg(cfg: VisionConfig) -> dict:
    base = open_clip.get_model_config(cfg.model_name)
    if base is None:
        raise ValueError(f"vision.model_name {cfg.model_name!r} is not an open_clip model; "
                         f"choose one of open_clip.list_models(), e.g. 'ViT-B-16-SigLIP' or 'molmini-vit'")
    return {**base["vision_cfg"], **cfg.vision_cfg}


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_open_clip_random_init_warning():
    """open_clip logs through the root logger (`logging.warning`); drop its one random-init line for the
    duration of one create_model call, on the root logger and its handlers."""
    drop = _DropRandomInitWarning()
    root = logging.getLogger()
    targets = [root, *root.handlers]
    for target in targets:
        target.addFilter(drop)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(drop)


class VisionTower(nn.Module):
    """Wraps `open_clip.create_model(name, pretrained).visual`; `forward` gives [B, patches, dim] without CLS.

    Three kinds of tower: open_clip's own ViTs, timm-backed ViTs (SigLIP, ...), and timm-backed convolutional
    towers (CLIP ConvNeXt, `convnext_*`, and molmini's small `molmini-convnext`). A convolutional tower's
    patch grid is the feature map of the chosen stages (`feature_layers` index the stages; they must share
    one stride, which is then the tower's patch size), so crops, pad marks and connectors work unchanged."""

    def __init__(self, cfg: VisionConfig, load_pretrained: bool = True):
        super().__init__()
        if cfg.conv_stem and cfg.pretrained:
            raise ValueError(f"vision.conv_stem replaces the patch embedding, so it cannot start from pretrained "
                             f"weights (pretrained={cfg.pretrained!r}); set vision.conv_stem=[] or pretrained=''")
        pretrained = cfg.pretrained if (load_pretrained and cfg.pretrained) else None
        extra = {}
        if pretrained is None:
            # The text tower is thrown away: without weights to load, build it as small as it goes.
            text_cfg = open_clip.get_model_config(cfg.model_name)["text_cfg"]
            extra["text_cfg"] = {**text_cfg, "width": 32, "heads": 1, "layers": 1, "vocab_size": 16,
                                 "context_length": 4, "mlp_ratio": 1}
        # On torch's default device, so `with torch.device("meta")` builds shapes only (molmini/train/summary.py).
        # open_clip warns "Model initialized randomly" whenever it loads no weights, which is also every load
        # of a trained checkpoint (its weights come right after): molmini says itself when a tower is random.
        with _without_open_clip_random_init_warning():
            clip = open_clip.create_model(cfg.model_name, pretrained=pretrained, vision_cfg=_vision_cfg(cfg),
                                          device=torch.get_default_device(), **extra)
        if load_pretrained and not cfg.pretrained and torch.get_default_device().type != "meta":
            log.warning("vision tower %s starts from random weights (model.vision.pretrained is empty): a "
                        "from-scratch tower", cfg.model_name)
        self.visual = clip.visual
        self.image_mean = tuple(clip.visual.preprocess_cfg["mean"])
        self.image_std = tuple(clip.visual.preprocess_cfg["std"])
        del clip  # the text tower is not used
        size = self.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        # open_clip's own ViTs keep their blocks in transformer.resblocks; timm-backed towers (SigLIP, ...)
        # wrap a timm ViT as `trunk`. Both give patch features through forward_intermediates.
        trunk = getattr(self.visual, "trunk", None)
        self.is_timm = trunk is not None
        self.is_conv = self.is_timm and hasattr(trunk, "stages") and not hasattr(trunk, "blocks")
        if self.is_conv:
            if cfg.conv_stem:
                raise ValueError(f"vision.conv_stem is for ViT towers; {cfg.model_name!r} is convolutional "
                                 "already: set vision.conv_stem=[]")
            self._init_conv(cfg, trunk)
            return
        if self.is_timm:
            if not hasattr(trunk, "blocks") or not hasattr(trunk, "forward_intermediates"):
                raise ValueError(f"vision tower {cfg.model_name!r} wraps timm model {type(trunk).__name__}, "
                                 "which is neither a ViT with patch tokens nor a convolutional tower with stages; "
                                 "choose a ViT or a ConvNeXt tower")
            patch, n_blocks, width = trunk.patch_embed.patch_size, len(trunk.blocks), trunk.embed_dim
        else:
            patch, n_blocks = self.visual.patch_size, len(self.visual.transformer.resblocks)
            width = self.visual.transformer.width
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else patch
        if cfg.conv_stem:
            if self.is_timm:
                raise ValueError(f"vision.conv_stem replaces the patch embedding of an open_clip ViT; "
                                 f"{cfg.model_name!r} is a timm tower; set vision.conv_stem=[]")
            # open_clip's ViT embeds patches with `conv1` (a patch-sized, patch-strided convolution).
            self.visual.conv1 = ConvStem(list(cfg.conv_stem), width, self.patch_size)
        self.layers = sorted({l % n_blocks for l in cfg.feature_layers})
        self.output_dim = width * len(self.layers)
        # Blocks after the last feature layer, the final norm and the pooling head are never used: drop
        # them, so they neither cost memory nor leave parameters without gradients under DDP.
        if self.is_timm:
            trunk.prune_intermediate_layers(self.layers, prune_norm=True, prune_head=True)
            self.visual.head = nn.Identity()
        else:
            self.visual.prune_intermediate_layers(self.layers, prune_norm=True, prune_head=True)

    def _init_conv(self, cfg: VisionConfig, trunk: nn.Module) -> None:
        """A convolutional tower: the chosen stages' feature maps, at one stride, are the patch grid."""
        stages = trunk.feature_info  # one entry a stage: channels and total stride
        self.layers = sorted({l % len(stages) for l in cfg.feature_layers})
        strides = {stages[i]["reduction"] for i in self.layers}
        if len(strides) != 1:
            raise ValueError(f"vision.feature_layers {list(cfg.feature_layers)} pick stages of {cfg.model_name!r} "
                             f"with strides {sorted(strides)}; a convolutional tower's chosen stages must share "
                             "one stride (its patch size), e.g. feature_layers=[-2]")
        self.patch_size = strides.pop()
        if self.image_size % self.patch_size:
            raise ValueError(f"the image size {self.image_size} of {cfg.model_name!r} is not a multiple of the "
                             f"stride {self.patch_size} of the chosen stages; change vision_cfg.image_size")
        self.output_dim = sum(stages[i]["num_chs"] for i in self.layers)
        # Stages after the last chosen one, the final norm and the head are never used: dropped (DDP, memory).
        trunk.prune_intermediate_layers(self.layers, prune_norm=True, prune_head=True)
        self.visual.head = nn.Identity()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.is_conv:
            maps = self.visual.trunk.forward_intermediates(pixel_values, indices=self.layers, stop_early=True,
                                                           intermediates_only=True)
            return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=-1)  # [B, H*W, C], row-major
        out = self.visual.forward_intermediates(pixel_values, indices=self.layers, stop_early=True,
                                                intermediates_only=True, output_fmt="NLC")
        return torch.cat(out["image_intermediates"], dim=-1)


def plain_tower_spec(tower: VisionTower) -> tuple[dict | None, str]:
    """The keyword arguments of molmini/model/plain_vit.py's PlainVisionTower that rebuild `tower` without
    open_clip (same state-dict keys, same features), or None and why not: only open_clip's own ViTs with its
    default blocks have a plain-torch twin; timm-backed towers (SigLIP, ConvNeXt) and exotic ViT options do not.
    The keys and shapes are checked against the tower's own state dict, on the meta device (no memory)."""
    from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock, VisionTransformer

    from molmini.model.plain_vit import PlainVisionTower
    visual = tower.visual
    if tower.is_timm or type(visual) is not VisionTransformer:
        return None, f"{type(getattr(visual, 'trunk', visual)).__name__} is not an open_clip VisionTransformer"
    blocks = list(visual.transformer.resblocks)
    if visual.attn_pool is not None or any(type(b) is not ResidualAttentionBlock for b in blocks):
        return None, "its ViT has attentional pooling or custom blocks"
    acts = {type(b.mlp.gelu) for b in blocks}
    norms = {type(n) for b in blocks for n in (b.ln_1, b.ln_2)} | {type(visual.ln_pre)} - {nn.Identity}
    if len(acts) != 1 or not acts <= {nn.GELU, QuickGELU} or not norms <= {LayerNorm, nn.LayerNorm}:
        return None, f"its ViT uses activations {sorted(a.__name__ for a in acts)} and norms " \
                     f"{sorted(n.__name__ for n in norms)}"
    if any(getattr(b.mlp.gelu, "approximate", "none") != "none" for b in blocks):
        return None, "its ViT uses the tanh approximation of GELU"
    first = blocks[0]
    stem = visual.conv1.layers if isinstance(visual.conv1, ConvStem) else []
    spec = {"feature_layers": list(tower.layers), "image_size": tower.image_size, "patch_size": tower.patch_size,
            "width": visual.transformer.width, "heads": first.attn.num_heads, "blocks": len(blocks),
            "mlp_width": first.mlp.c_fc.out_features, "activation": "quick_gelu" if acts == {QuickGELU} else "gelu",
            "layer_scale": not isinstance(first.ls_1, nn.Identity),
            "ln_pre": not isinstance(visual.ln_pre, nn.Identity), "eps": first.ln_1.eps,
            # the stem's stride-2 convolutions (its last convolution, to the tower width, is not an entry)
            "conv_stem": [m.out_channels for m in list(stem)[:-1] if isinstance(m, nn.Conv2d)]}
    with torch.device("meta"):
        plain = PlainVisionTower(**spec)
    want = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    if want != have:
        differ = sorted(set(want.items()) ^ set(have.items()))[:4]
        return None, f"its state dict differs from the plain ViT's ({differ})"
    return spec, ""
