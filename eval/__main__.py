"""Command line for evaluation.

    python -m eval run --model PATH_OR_ID [--model ...] --benchmarks chartqa,synthetic=DIR
                       [--baselines majority,text-only:PATH,llava:PATH] --out DIR [--limit N]
    python -m eval report RESULTS_DIR [RESULTS_DIR ...] --out DIR [--subsets]
    python -m eval heldout --model CHECKPOINT --test-dir DIR --train-dir DIR [--out DIR]

`run` answers every benchmark item with every model and baseline (greedy, batched, resumable: rerun the
same command to continue) into DIR/results.json and DIR/predictions/; `report` joins results folders
and published numbers into report.json, report.md, report.html (a page with a gallery of predictions)
and plots. `heldout` scores a molmini checkpoint on a
held-out shard folder per question type beside the training split's majority answer.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from molmini.errors import fraction, run_reporting_errors


def add_speed_arguments(p) -> None:
    from molmini.model.fast_inference import add_arguments
    add_arguments(p)  # --quantize, --compile: the answers are kept apart from the float model's


def add_skip_argument(p) -> None:
    p.add_argument("--max-skipped-fraction", type=fraction, default=0.5, metavar="F",
                   help="fail (exit 2, nothing scored) when more than this fraction of a benchmark's questions "
                        "had to be skipped, e.g. images that do not decode or rows without an answer "
                        "(default 0.5; 1 scores whatever could be read)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    commands = ap.add_subparsers(dest="command", required=True)
    p = commands.add_parser("heldout", help="evaluate a checkpoint on a held-out shard folder")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--test-dir", required=True, help="held-out shard folder")
    p.add_argument("--train-dir", required=True, help="training shard folder (for the majority baseline)")
    p.add_argument("--out", default=None, help="folder for the results and the prediction cache, so a rerun "
                   "answers only what is missing (default: print only)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N items only")
    p.add_argument("--device", default="cpu")
    add_speed_arguments(p)
    add_skip_argument(p)
    add_run_command(commands)
    add_report_command(commands)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_errors(lambda: dispatch(args))


# What argparse's types cannot say about each command's options: (option, attribute, lowest value).
AT_LEAST = {"heldout": [("--batch-size", "batch_size", 1), ("--max-new-tokens", "max_new_tokens", 1),
                        ("--limit", "limit", 0)],
            "run": [("--batch-size", "batch_size", 1), ("--limit", "limit", 0)]}


def check_arguments(args) -> None:
    """Refuse out-of-range numbers and an --out that is a file before any model loads, as ValueErrors
    naming the option (reported as one `error:` line, exit status 2): a batch size of 0 or a negative
    limit otherwise fails deep inside generation or itertools with a message that names no option."""
    for option, name, low in AT_LEAST.get(args.command, []):
        value = getattr(args, name)
        if value < low:
            what = {"--limit": " (0: every item)"}.get(option, "")
            raise ValueError(f"{option} must be at least {low}{what}, got {value}")
    out = getattr(args, "out", None)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out!r} is a file, not a folder; pass a folder for the results (it is created "
                         "if missing), e.g. --out runs/eval")


def dispatch(args) -> int:
    check_arguments(args)
    if args.command == "run":
        return run_command(args)
    if args.command == "report":
        return report_command(args)
    return heldout_command(args)


def heldout_command(args) -> int:
    from molmini.model.fast_inference import check_options, speed_up
    from molmini.model.vlm import MolminiModel
    from molmini.progress import logs_around_bars

    from .heldout import evaluate, format_table, write_heldout_report
    from .models import is_hf_folder
    try:
        check_options(args.quantize, args.compile, args.device)
        if is_hf_folder(args.model):  # a transformers VLM (one fine-tuned with model.hf_vlm): asked as it was trained
            from molmini.model.transformers_vlm import HFVisionLanguageModel
            model = HFVisionLanguageModel.from_pretrained(args.model, device=args.device)
        else:
            model = MolminiModel.from_pretrained(args.model, device=args.device)
        speed_up(model, args.quantize, args.compile)
        with logs_around_bars():  # skipped-record warnings print above the bar
            results, rows = evaluate(model, args.test_dir, args.train_dir, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, max_items=args.limit,
                                     model_path=args.model, out_dir=args.out,
                                     max_skipped_fraction=args.max_skipped_fraction)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results["checkpoint"] = str(args.model)
    print(format_table(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_heldout_report(args.out, results, rows)
        print(f"wrote {args.out}/eval_results.json and eval_predictions.jsonl")
    return 0


def add_run_command(commands) -> None:
    from .models import build_adapter
    p = commands.add_parser("run", help="run models and baselines over benchmarks (resumable)")
    p.add_argument("--model", action="append", default=[], help="molmini checkpoint folder or hub id, or a "
                   "transformers VLM as hf:PATH_OR_ID; repeat for several")
    p.add_argument("--benchmarks", required=True, help="comma-separated names, each optionally =PATH "
                   "(e.g. chartqa,synthetic=data/charts/test)")
    p.add_argument("--baselines", default="", help="comma-separated: majority, majority:TRAIN_SHARD_DIR, "
                   "text-only:MOLMINI_PATH, llava:PATH_OR_ID, hf:PATH_OR_ID")
    p.add_argument("--no-majority", action="store_true", help="leave out the majority-answer baseline, which "
                   "is otherwise scored beside every benchmark (from the benchmark's own golds, unless --baselines "
                   "names majority:TRAIN_SHARD_DIR)")
    p.add_argument("--out", required=True, help="results folder (rerunning into it resumes)")
    p.add_argument("--limit", type=int, default=0, help="the first N items of each benchmark only")
    p.add_argument("--prompt-template", default="", help="ask every benchmark with this template instead of "
                   "its own (recorded with the scores): question_only, lmms_eval_chartqa, lmms_eval_short_answer, "
                   "lmms_eval_textvqa, lmms_eval_mcq")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    add_speed_arguments(p)  # for the --model checkpoints; baselines run as they are
    add_skip_argument(p)
    p.add_argument("--lmms-eval-layout", action="store_true", help="also write the results in lmms-eval's "
                   "layout under OUT/lmms_eval/<model>/ (eval/lmms_layout.py)")
    p.epilog = build_adapter.__doc__


def run_command(args) -> int:
    from molmini.progress import logs_around_bars

    from .models import build_adapter
    from .runner import parse_benchmarks, run
    baselines = [s.strip() for s in args.baselines.split(",") if s.strip()]
    # The majority answer beside every benchmark, as the training run's report has it: a score means little
    # without the one a constant answer gets.
    if args.model and not args.no_majority and not any(b.split(":", 1)[0] == "majority" for b in baselines):
        baselines.append("majority")
    specs = args.model + baselines
    if not specs:
        print("error: nothing to run; give --model and/or --baselines", file=sys.stderr)
        return 2
    def build(spec: str):
        if spec in args.model:
            return build_adapter(spec, args.batch_size, args.device, quantize=args.quantize, compile=args.compile)
        return build_adapter(spec, args.batch_size, args.device)

    try:
        from molmini.model.fast_inference import check_options
        check_options(args.quantize, args.compile, args.device)
        benchmarks = parse_benchmarks(args.benchmarks, args.prompt_template)
        with logs_around_bars():  # warnings (a skipped row, a torn cache line) print above the bars
            entries = run(specs, benchmarks, args.out, build, limit=args.limit, batch_size=args.batch_size,
                          max_skipped_fraction=args.max_skipped_fraction)
        if args.lmms_eval_layout:
            from .lmms_layout import write_lmms_layout
            for path in write_lmms_layout(args.out, entries):
                print(f"wrote {path} (lmms-eval's layout)")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/results.json; make a report with `python -m eval report {args.out} --out DIR`")
    return 0


def add_report_command(commands) -> None:
    p = commands.add_parser("report", help="tables and plots from one or more results folders")
    p.add_argument("results", nargs="+", help="folders written by `python -m eval run`")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, report.html and the plots")
    p.add_argument("--published", default=None, help="published-scores CSV (default: eval/published_scores.csv)")
    p.add_argument("--no-published", action="store_true", help="leave published numbers out")
    p.add_argument("--subsets", action="store_true", help="add a table per benchmark with a column per subset "
                   "(e.g. ChartQA human/augmented, synthetic charts per question type)")


def report_command(args) -> int:
    from .report import PUBLISHED_SCORES, write_report
    published = None if args.no_published else (args.published or PUBLISHED_SCORES)
    try:
        written = write_report(args.results, args.out, published_csv=published, subsets=args.subsets)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
