"""Can a vision tower trained from scratch read one word? The tower alone, with a direct loss.

The recipe study's models do not read (docs/recipe-study.md). This probe takes the language model out
of the question: the tower of the default run (`molmini.model.vision.VisionTower`, random init) and a linear
head are trained with cross-entropy to name the one word printed on a 128 px canvas (the reading drills'
renderer, data_pipelines/synth/words.py: 36 chart words, 16-24 px fonts, DejaVu Sans/Serif/Mono, a quarter
slanted), then scored on 500 held-out images (chance 1/36 = 2.8%).

    python experiments/tower_probe.py vit 400 5e-4          # the default tower (4 ViT blocks)
    python experiments/tower_probe.py conv_stem 400 5e-4     # conv stem [32, 64, 128] + 4 ViT blocks
    python experiments/tower_probe.py stem_only-max 400 2e-3 # the conv stem alone (no transformer block)

TOWER is vit, conv_stem or stem_only; a `-max` suffix max-pools the patch features instead of averaging
them. Prints the held-out accuracy every 50 steps (batch 32, AdamW, gradient clipping at 1).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipelines.synth.words import WORDS, render_words  # noqa: E402
from molmini.config import VisionConfig  # noqa: E402
from molmini.model.vision import ConvStem, VisionTower  # noqa: E402

VISION_CFG = {"image_size": 128, "patch_size": 16, "width": 192, "layers": 4, "head_width": 48}  # the default
STEM = [32, 64, 128]


class StemOnly(nn.Module):
    """The conv stem with no transformer after it: [B, 3, 128, 128] -> [B, 64 patches, 192]."""

    def __init__(self):
        super().__init__()
        self.stem = ConvStem(STEM, VISION_CFG["width"], VISION_CFG["patch_size"])
        self.output_dim = VISION_CFG["width"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)


def drills(n: int, seed: int, min_font: int = 16, max_font: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    images, labels = [], []
    for _ in range(n):
        y = rng.randrange(len(WORDS))
        image = render_words(rng, [WORDS[y]], 128, min_font, max_font)
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        labels.append(y)
    return torch.stack(images), torch.tensor(labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tower", help="vit | conv_stem | stem_only, optionally with -max")
    ap.add_argument("steps", type=int, nargs="?", default=400)
    ap.add_argument("lr", type=float, nargs="?", default=5e-4)
    ap.add_argument("--train", type=int, default=8000, help="training images")
    args = ap.parse_args()
    kind, _, pool = args.tower.partition("-")
    if kind not in ("vit", "conv_stem", "stem_only") or pool not in ("", "max"):
        ap.error(f"unknown tower {args.tower!r}: use vit, conv_stem or stem_only, optionally with -max")
    torch.manual_seed(0)
    start = time.perf_counter()
    x_train, y_train = drills(args.train, seed=0)
    x_test, y_test = drills(500, seed=1)
    print(f"{len(WORDS)} words, {args.train} training images, rendered in {time.perf_counter() - start:.0f} s")
    vit = VisionTower(VisionConfig(vision_cfg=VISION_CFG, conv_stem=STEM if kind == "conv_stem" else []))
    mean = torch.tensor(vit.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(vit.image_std).view(1, 3, 1, 1)
    tower = StemOnly() if kind == "stem_only" else vit
    head = nn.Linear(tower.output_dim, len(WORDS))
    params = list(tower.parameters()) + list(head.parameters())
    print(f"tower {args.tower}: {sum(p.numel() for p in tower.parameters()) / 1e6:.2f}M parameters, lr {args.lr}")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def logits(x: torch.Tensor) -> torch.Tensor:
        feats = tower((x.float() / 255 - mean) / std)
        return head(feats.max(1).values if pool == "max" else feats.mean(1))

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (32,))
        loss = F.cross_entropy(logits(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps:
            with torch.no_grad():
                acc = (logits(x_test).argmax(-1) == y_test).float().mean().item()
            print(f"step {step:4d}  loss {loss.item():.3f}  held-out accuracy {100 * acc:.1f}%  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
