"""Which tower learns to read fastest under the reading loss? Each tower kind molmini builds is trained with
the reading head alone (model.reading, the answer loss off: the stage of configs/stages/0_read.yaml) for the
same wall time on the default run's charts, and scored on held-out charts: the share of patches holding
text whose token the head names (read_accuracy), split into words and numbers.

    python experiments/reading_towers.py --seconds 150                       # vit, conv_stem, convnext
    python experiments/reading_towers.py --towers convnext --seconds 300 --out experiments/results/x.jsonl

Needs the default run's data (data/charts, written by `make demo` or `python train.py`; or pass --data).
One row per tower and evaluation goes to --out (JSON lines) and to the console.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from molmini.config import load_config  # noqa: E402
from molmini.data.processor import IGNORE_INDEX  # noqa: E402
from molmini.data.reader import find_shards, read_records  # noqa: E402
from molmini.data.tokenizer import build_tokenizer  # noqa: E402
from molmini.model.vlm import MolminiModel  # noqa: E402
from molmini.train.optim import make_scheduler, param_groups  # noqa: E402
from molmini.train.stages import prepare_stage  # noqa: E402

TOWERS = {  # overrides of configs/default.yaml
    "vit": [],
    "conv_stem": ["model.vision.conv_stem=[32,64,128]"],
    "convnext": ["model.vision.model_name=molmini-convnext", "model.vision.vision_cfg={image_size: 128}",
                 "model.vision.feature_layers=[-2]"],
}
STAGE = ["model.reading.weight=1.0", "model.reading.answer_weight=0", "optim.freeze=[connector,lm]",
         "optim.lr=2e-3", "optim.warmup_steps=30", "optim.weight_decay=0.01"]


@torch.no_grad()
def score(model: MolminiModel, batches: list[dict]) -> dict[str, float]:
    """read_accuracy on held-out batches, overall and for number tokens and word tokens apart."""
    model.eval()
    digits = torch.tensor([model.processor.tokenizer.decode([i]).strip().isdigit()
                           for i in range(len(model.processor.tokenizer))])
    hits = {"all": [0, 0], "numbers": [0, 0], "words": [0, 0]}
    for batch in batches:
        feats = model.patch_features(batch["pixel_values"], batch["pad_fraction"])
        guess = model.read_head(feats).argmax(-1).flatten()
        target = batch["read_labels"].flatten()
        text = (target != IGNORE_INDEX) & (target != model.processor.pad_token_id)
        right = (guess == target) & text
        is_digit = digits[target.clamp(min=0)] & text
        for name, mask in (("all", text), ("numbers", is_digit), ("words", text & ~is_digit)):
            hits[name][0] += int((right & mask).sum())
            hits[name][1] += int(mask.sum())
    model.train()
    return {name: round(100 * r / max(n, 1), 1) for name, (r, n) in hits.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    ap.add_argument("--seconds", type=float, default=150, help="training wall time per tower")
    ap.add_argument("--data", default="data/charts", help="folder with train/ and test/ shard folders")
    ap.add_argument("--held-out", type=int, default=256, help="held-out charts scored")
    ap.add_argument("--eval-every", type=float, default=50, help="seconds between evaluations")
    ap.add_argument("--out", default="", help="JSON-lines file for the rows")
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides for every tower")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_records = list(read_records(find_shards(Path(args.data) / "train")))
    test_records = list(read_records(find_shards(Path(args.data) / "test")))[:args.held_out]
    rows = []
    for tower in args.towers:
        cfg = load_config(None, TOWERS[tower] + STAGE + [f"data.train_dir={args.data}/train", "data.synth=null"]
                          + list(args.set))
        torch.manual_seed(0)
        tokenizer = build_tokenizer(cfg, find_shards(cfg.data.train_dir))
        model = MolminiModel(cfg.model, tokenizer, max_length=cfg.data.max_length).train()
        prepare_stage(model, cfg.train, cfg.optim)
        p = model.processor
        held = [p.collate([p.process_record(r) for r in test_records[i:i + 32]]) for i in range(0, len(test_records), 32)]
        optimizer = torch.optim.AdamW(param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
        scheduler = make_scheduler(optimizer, 10 ** 6)  # warmup, then (nearly) constant: a wall-time budget
        params = sum(t.numel() for t in model.vision.parameters())
        start, step, next_eval, seen = time.perf_counter(), 0, args.eval_every, 0
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= next_eval or elapsed >= args.seconds:
                row = {"date": time.strftime("%Y-%m-%d"), "seconds_budget": args.seconds, "tower": tower,
                       "vision_params": params, "step": step, "samples": seen,
                       "train_s": round(elapsed, 1), "read_accuracy": score(model, held)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                next_eval += args.eval_every
                start = time.perf_counter() - elapsed  # evaluation time is not training time
                if elapsed >= args.seconds:
                    break
            group = [train_records[(seen + i) % len(train_records)] for i in range(cfg.train.batch_size)]
            batch = p.collate([p.process_record(r) for r in group])
            batch.pop("keys")
            out = model(**batch, return_logits=False)
            out["read_loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, seen = step + 1, seen + len(group)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
