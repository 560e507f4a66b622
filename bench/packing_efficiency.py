"""Padding with and without packing: the share of a batch's token slots that are padding, and the rows a
batch takes, for real shards through the real processor (the default config's model and tokenizer).

    python bench/packing_efficiency.py [--shards data/charts/train] [--batch-sizes 8,32,128] [--records 1024]
        [--max-length 256] [overrides ...]

Each batch is `batch_size` records in the stream's order, laid out one per row (padded to the longest)
or packed first-fit decreasing into rows of `--max-length` (molmini/data/packing.py). No model runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from molmini.config import load_config  # noqa: E402
from molmini.data.formatter import training_transform  # noqa: E402
from molmini.data.packing import pack_rows, padding_fraction  # noqa: E402
from molmini.data.processor import MolminiProcessor  # noqa: E402
from molmini.data.reader import find_shards, read_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="data/charts/train")
    ap.add_argument("--batch-sizes", default="8,32,128")
    ap.add_argument("--records", type=int, default=1024)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--json", default="", help="also write the figures to this file")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.image.max_crops=4")
    args = ap.parse_args()
    from molmini.data.tokenizer import build_tokenizer
    from molmini.model.vlm import MolminiModel
    cfg = load_config(None, [f"data.train_dir={args.shards}", f"data.max_length={args.max_length}", *args.overrides])
    shards = find_shards(args.shards)
    tokenizer = build_tokenizer(cfg, shards)
    # the processor exactly as training derives it (tower geometry, pooling), without pretrained weights
    model = MolminiModel(cfg.model, tokenizer, max_length=args.max_length, load_pretrained=False)
    processor: MolminiProcessor = model.processor
    transform = training_transform(processor, cfg.data.transcript_prob, cfg.data.train_questions)
    lengths = []
    for i, record in enumerate(read_records(shards)):
        if i >= args.records:
            break
        lengths.append(len(transform(record, random.Random(i))["input_ids"]))
    out = {"command": "python " + " ".join(sys.argv), "shards": args.shards, "records": len(lengths), "max_length": args.max_length,
           "mean_length": round(sum(lengths) / len(lengths), 1), "machine": platform.platform(), "batches": []}
    print(f"{len(lengths)} records of {args.shards}: mean {out['mean_length']} tokens (max_length {args.max_length})")
    print(f"{'batch':>6} {'padding unpacked':>17} {'padding packed':>15} {'rows unpacked':>14} {'rows packed':>12}")
    for size in (int(b) for b in args.batch_sizes.split(",")):
        unpacked, packed, rows_u, rows_p = [], [], 0, 0
        for start in range(0, len(lengths) - size + 1, size):
            batch = lengths[start:start + size]
            one_each = [[i] for i in range(len(batch))]
            rows = pack_rows(batch, args.max_length)
            unpacked.append(padding_fraction(batch, one_each))
            packed.append(padding_fraction(batch, rows))
            rows_u, rows_p = rows_u + len(one_each), rows_p + len(rows)
        row = {"batch_size": size, "padding_unpacked": round(sum(unpacked) / len(unpacked), 4),
               "padding_packed": round(sum(packed) / len(packed), 4), "rows_unpacked": rows_u, "rows_packed": rows_p}
        out["batches"].append(row)
        print(f"{size:>6} {row['padding_unpacked']:>17.1%} {row['padding_packed']:>15.1%} {rows_u:>14} {rows_p:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
