"""Command line: ``python -m eval heldout --model CHECKPOINT --test-dir DIR --train-dir DIR [--out DIR]``.

Scores a molmini checkpoint (a folder or a hub id) on a held-out shard folder, per question type beside
the majority-answer baseline of the training split, and writes eval_results.json and
eval_predictions.jsonl to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .heldout import evaluate, format_table, write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    commands = ap.add_subparsers(dest="command", required=True)
    p = commands.add_parser("heldout", help="evaluate a checkpoint on a held-out shard folder")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--test-dir", required=True, help="held-out shard folder")
    p.add_argument("--train-dir", required=True, help="training shard folder (for the majority baseline)")
    p.add_argument("--out", default=None, help="folder for the results (default: print only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N items only")
    p.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from molmini.model import MolminiModel
    try:
        model = MolminiModel.from_pretrained(args.model, device=args.device)
        results, rows = evaluate(model, args.test_dir, args.train_dir, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, max_items=args.limit)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results["checkpoint"] = str(args.model)
    print(format_table(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_results(args.out, results, rows)
        print(f"wrote {args.out}/eval_results.json and eval_predictions.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
