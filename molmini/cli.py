"""The `molmini` command: one subcommand per function below, each registered in `build_parser`.

    molmini plot RUN_DIR [--out PNG]     the run's training curves
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Curves drawn by `plot`, each on its own panel when the log has it: (title, keys of train_log.jsonl).
PANELS = [("loss per answer token", ["loss", "eval_loss"]), ("learning rate", ["lr_vision", "lr_connector", "lr_lm"]),
          ("gradient norm", ["grad_norm"]), ("throughput (samples/s)", ["samples_per_s"]),
          ("throughput (tokens/s)", ["tokens_per_s"]), ("time waiting for data (s per log interval)", ["data_wait_s"]),
          ("MFU", ["mfu"]), ("GPU memory (GiB)", ["gpu_mem_gb"])]


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run folder written by train.py (runs/<name>)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(args: argparse.Namespace) -> int:
    """Draw the curves of a run's train_log.jsonl to a PNG (default RUN_DIR/curves.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(args.run_dir)
    panels = [(title, [k for k in keys if any(r.get(k) is not None for r in records)]) for title, keys in PANELS]
    panels = [(t, ks or ["lr"]) if t == "learning rate" else (t, ks) for t, ks in panels]  # logs before lr_*
    panels = [(t, [k for k in ks if any(r.get(k) is not None for r in records)]) for t, ks in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        print(f"error: {args.run_dir}/train_log.jsonl has no curves to draw", file=sys.stderr)
        return 2
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(Path(args.run_dir).resolve().name)
    fig.tight_layout()
    out = Path(args.out) if args.out else Path(args.run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molmini", description="molmini command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plot", help="draw a run's training curves to a PNG", description=plot.__doc__)
    p.add_argument("run_dir", type=Path, help="a run folder (holding train_log.jsonl)")
    p.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png)")
    p.set_defaults(func=plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
