"""The from-scratch recipe study: which levers teach a small model to read charts on a 2-core CPU.

Each variant is the default run (`configs/default.yaml`) with a few dotted overrides. At an equal
wall-clock budget: a short probe run measures the variant's samples/s on this machine, the full run then
gets `budget_s * samples_per_s / batch_size` steps (so a costlier variant gets fewer), is trained and
evaluated on the held-out charts by `train.py`, and one row per variant is appended to the results file.

    python experiments/recipe_study.py --list
    python experiments/recipe_study.py --budget-s 300 default digits conv_stem     # screen
    python experiments/recipe_study.py --budget-s 540 --steps 1000 combo            # fixed steps
    python experiments/recipe_study.py --table                                      # the results table

Every row records the exact `python train.py ...` command that reproduces it. Runs go one at a time:
two trainings on 2 cores would halve each other's throughput and so each other's budget.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "recipe_study.jsonl"
QUESTION_TYPES = ("chart_type", "count", "largest_label", "value", "compare", "colour_largest", "trend")

TRANSCRIPTS = ["data.transcript_prob=0.5"]
DIGITS = ["model.tokenizer.split_digits=true"]
CONV_STEM = ["model.vision.conv_stem=[32,64,128]"]
# One transformer block after the stem: the tower is then almost all convolution. Measured alone (a linear
# head on the tower, 36 words at 16-24 px, 400 steps of 32): plain ViT 2% (chance 3%), stem + 4 blocks
# 15%, the stem alone 62%; transformer blocks trained from scratch learn glyphs slowest.
CONV_TOWER = CONV_STEM + ["model.vision.vision_cfg={image_size: 128, patch_size: 16, width: 192, layers: 1, "
                          "head_width: 48}"]
# name -> (what it changes, overrides of configs/default.yaml)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("the default run as it was before the study", []),
    "transcripts": ("each chart's transcript as a last exchange half the time", TRANSCRIPTS),
    "digits": ("numbers split into single-digit tokens", DIGITS),
    "conv_stem": ("3 stride-2 3x3 convolutions in place of the 16 px patchify convolution", CONV_STEM),
    "mlp": ("LLaVA's MLP connector: 64 image tokens instead of 16", ["model.connector.kind=mlp"]),
    "combo": ("transcripts + digits + conv stem", TRANSCRIPTS + DIGITS + CONV_STEM),
    "combo-transcripts": ("the combination without transcripts", DIGITS + CONV_STEM),
    "combo-digits": ("the combination without single-digit tokens", TRANSCRIPTS + CONV_STEM),
    "combo-conv_stem": ("the combination without the conv stem", TRANSCRIPTS + DIGITS),
    # Reading drills (data_pipelines/synth/words.py): chart words and numbers alone on a canvas.
    "words_only": ("reading drills alone, 8,000 images, evaluated on held-out drills (can it read at all?)", [
        "data.train_dir=data/words/train", "data.test_dir=data/words/test",
        "data.synth={generator: words, num_train: 8000, num_test: 300}"] + DIGITS),
    "words_only-conv_stem": ("words_only with the conv stem", [
        "data.train_dir=data/words/train", "data.test_dir=data/words/test",
        "data.synth={generator: words, num_train: 8000, num_test: 300}"] + DIGITS + CONV_STEM),
    "words_only-mlp": ("words_only with LLaVA's MLP connector (64 image tokens instead of 16)", [
        "data.train_dir=data/words/train", "data.test_dir=data/words/test",
        "data.synth={generator: words, num_train: 8000, num_test: 300}"] + DIGITS + ["model.connector.kind=mlp"]),
    "words_easy": ("the easiest drill: one item per image, fonts 16-24 px", [
        "data.train_dir=data/words-easy/train", "data.test_dir=data/words-easy/test",
        "data.synth={generator: words, num_train: 8000, num_test: 300, "
        "options: {max_items: 1, min_font_px: 16, max_font_px: 24}}"] + DIGITS),
    "words_easy-curve": ("words_easy with the held-out loss logged every 100 steps (the learning curve)", [
        "data.train_dir=data/words-easy/train", "data.test_dir=data/words-easy/test",
        "data.synth={generator: words, num_train: 8000, num_test: 300, "
        "options: {max_items: 1, min_font_px: 16, max_font_px: 24}}", "train.eval_every=100"] + DIGITS),
    "conv_tower": ("the conv stem and 1 transformer block instead of 4", CONV_TOWER),
    "reader": ("transcripts + digits + the conv tower, the tower at 4x the learning rate",
               TRANSCRIPTS + DIGITS + CONV_TOWER + ["optim.lr_vision=2e-3"]),
    # configs/recipes/chart-reader-cpu.yaml as overrides of the default (run with --steps 1200).
    "chart_reader_cpu": ("the long recipe: transcripts + digits, held-out loss every 250 steps",
                         TRANSCRIPTS + DIGITS + ["train.eval_every=250", "train.checkpoint_every=500"]),
    "words_mix": ("half of the samples reading drills (data/words/train, made by words_only) + transcripts + "
                  "digits", ["data.mixture=[{dir: data/charts/train, weight: 0.5}, {dir: data/words/train, weight: 0.5}]"]
                 + TRANSCRIPTS + DIGITS),
    # The thesis: a model over 4x the default's size trained the plain way (questions only, the default's
    # tokenizer and resolution), at the same wall-clock budget.
    "plain_5x": ("5x the parameters (ViT and LM 384 wide, 6 layers), questions only, no reading loss", [
        "model.reading.weight=0",
        "model.vision.vision_cfg={image_size: 128, patch_size: 16, width: 384, layers: 6, head_width: 64}",
        "model.lm.config={model_type: llama, hidden_size: 384, num_hidden_layers: 6, num_attention_heads: 6, "
        "num_key_value_heads: 6, intermediate_size: 1024, max_position_embeddings: 512, tie_word_embeddings: true}"]),
}


def train_command(name: str, overrides: list[str], steps: int, run_name: str, no_eval: bool = False) -> list[str]:
    cmd = [sys.executable, "train.py", *overrides, f"train.max_steps={steps}", f"train.run_name={run_name}",
           "train.trackers=[]"]
    return cmd + (["--no-eval"] if no_eval else [])


def run(cmd: list[str], log_path: Path) -> float:
    start = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "WANDB_MODE": "disabled"})
    return time.perf_counter() - start


def probe_samples_per_s(name: str, overrides: list[str], out: Path, steps: int = 24) -> float:
    """Steady-state training throughput of the variant: the mean over the probe's last two log intervals."""
    run_name = f"study-probe-{name}"
    # --overwrite: a probe of the same variant before is moved aside (train.py renames, never deletes).
    run(train_command(name, overrides + ["train.log_every=8"], steps, run_name, no_eval=True) + ["--overwrite"],
        out / f"{run_name}.log")
    lines = [json.loads(l) for l in (ROOT / "runs" / run_name / "train_log.jsonl").read_text().splitlines() if l.strip()]
    rates = [l["samples_per_s"] for l in lines[1:]] or [lines[-1]["samples_per_s"]]
    return sum(rates) / len(rates)


def study(names: list[str], budget_s: float, fixed_steps: int, tag: str, with_transfer: bool = False) -> None:
    out = ROOT / "runs" / "study-logs"
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        what, overrides = VARIANTS[name]
        batch = 32
        for o in overrides:
            if o.startswith("train.batch_size="):
                batch = int(o.split("=", 1)[1])
        rate = probe_samples_per_s(name, overrides, out) if not fixed_steps else None
        steps = fixed_steps or max(10, round(budget_s * rate / batch))
        run_name = f"study-{name}{'-' + tag if tag else ''}"
        cmd = train_command(name, overrides, steps, run_name)
        seconds = run(cmd, out / f"{run_name}.log")
        run_dir = ROOT / "runs" / run_name
        results = json.loads((run_dir / "eval_results.json").read_text())
        summary = json.loads((run_dir / "train_summary.json").read_text())
        row = {"variant": name, "changes": what, "tag": tag, "budget_s": budget_s, "steps": steps,
               "probe_samples_per_s": rate, "train_wall_s": summary["wall_time_s"],
               "samples_per_s": round(summary["samples"] / summary["wall_time_s"], 1),
               "parameters": summary["parameters"], "run_wall_s": round(seconds, 1),
               "overall": results["overall"]["relaxed_accuracy"],
               "majority": results["overall"]["majority_baseline"],
               "per_type": {t: r["relaxed_accuracy"] for t, r in results["per_type"].items()},
               "command": "python " + " ".join(["train.py"] + cmd[2:]), "date": time.strftime("%Y-%m-%d")}
        if with_transfer:
            row["transfer"] = transfer(run_name)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(format_row(row), flush=True)


TRANSFER = {  # benchmark spec for `python -m eval run` -> the majority baseline's training split
    "chartqa=data/transfer-pil": "data/charts/train",
    "synthetic=data/charts-full/test": "data/charts-full/train",
}
TRANSFER_SETUP = [  # what makes the transfer sets (each writes only a new folder)
    "python experiments/transfer_set.py --out data/transfer-pil --num 300",
    "python -m data_pipelines synth charts --variety full --out data/charts-full/test --num 300 --seed 1000003 "
    "--split test --image-px 128 --workers 1",
    "python -m data_pipelines synth charts --variety full --out data/charts-full/train --num 500 --seed 0 "
    "--split train --image-px 128 --workers 1",
]


def transfer(run_name: str) -> dict[str, dict[str, float]]:
    """The run's checkpoint and the majority baseline on each transfer set, without training on it."""
    scores = {}
    for bench, train_dir in TRANSFER.items():
        out = ROOT / "runs" / run_name / f"transfer-{bench.split('=')[0]}"
        run([sys.executable, "-m", "eval", "run", "--model", f"runs/{run_name}/checkpoint", "--benchmarks", bench,
             "--baselines", f"majority:{train_dir}", "--out", str(out)], out.with_suffix(".log"))
        results = json.loads((out / "results.json").read_text())["results"]
        model = next(r for r in results if r["model"]["kind"] == "molmini")
        base = next(r for r in results if r["model"]["kind"] == "baseline")
        scores[bench.split("=")[1]] = {"model": model["score"], "majority": base["score"], "n": model["n"],
                                       "per_type": {k: v["score"] for k, v in model.get("per_subset", {}).items()}}
    return scores


def question_types(row: dict) -> tuple[str, ...]:
    """The chart question types, or the row's own (reading drills have other types)."""
    return QUESTION_TYPES if any(t in row["per_type"] for t in QUESTION_TYPES) else tuple(sorted(row["per_type"]))


def format_row(row: dict) -> str:
    cells = [row["variant"] + (f" ({row['tag']})" if row.get("tag") else ""), str(row["steps"]),
             f"{row['train_wall_s']:.0f}", f"{row['samples_per_s']:.0f}", f"{row['parameters'] / 1e6:.2f}M"]
    cells += [f"{100 * row['per_type'].get(t, float('nan')):.1f}" for t in question_types(row)]
    cells.append(f"**{100 * row['overall']:.1f}**")
    return "| " + " | ".join(cells) + " |"


def table() -> str:
    """One markdown table per set of question types (chart QA, reading drills), rows in the order run."""
    rows = [json.loads(l) for l in RESULTS.read_text().splitlines() if l.strip()]
    out = []
    for types in dict.fromkeys(question_types(r) for r in rows):
        head = ["variant", "steps", "train s", "samples/s", "params", *types, "overall"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += [format_row(r) for r in rows if question_types(r) == types] + [""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", help="variant names (see --list)")
    ap.add_argument("--budget-s", type=float, default=300, help="training wall-clock budget per variant")
    ap.add_argument("--steps", type=int, default=0, help="a fixed step count instead of the time budget")
    ap.add_argument("--tag", default="", help="suffix of the run names and a column of the results")
    ap.add_argument("--transfer", action="store_true", help="also evaluate each checkpoint on the transfer sets "
                    "(made first by: " + "; ".join(TRANSFER_SETUP) + ")")
    ap.add_argument("--transfer-only", metavar="RUN", help="evaluate an existing run's checkpoint on the transfer "
                    "sets and print the scores")
    ap.add_argument("--list", action="store_true", help="list the variants")
    ap.add_argument("--table", action="store_true", help="print the results table (markdown)")
    args = ap.parse_args()
    if args.list:
        for name, (what, overrides) in VARIANTS.items():
            print(f"{name:<14} {what}: {' '.join(overrides) or '(none)'}")
        return 0
    if args.table:
        print(table())
        return 0
    if args.transfer_only:
        print(json.dumps(transfer(args.transfer_only), indent=2))
        return 0
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        print(f"error: unknown or no variants {unknown}; choose from {sorted(VARIANTS)}", file=sys.stderr)
        return 2
    study(args.variants, args.budget_s, args.steps, args.tag, args.transfer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
