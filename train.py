"""Train a molmini model: `python train.py [--config configs/default.yaml] [section.key=value ...]`.

The default run creates the synthetic chart data when its folders are empty, trains, evaluates the saved
checkpoint on the held-out split and writes everything to runs/<name>/. Multi-process:
`accelerate launch --multi_gpu --num_processes 2 train.py ...`; resume a run with
`python train.py ... train.run_name=NAME --resume auto`. A run folder that holds a run is never
overwritten: without `--resume` the run refuses to start there; `--overwrite` moves the old run aside.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from molmini.config import Config, ConfigError, load_config
from molmini.errors import run_reporting_errors

# torch, transformers, accelerate and open_clip are imported where they are used, so --help answers at once.

SYNTH_GENERATORS = ("charts", "tables", "documents", "words")


def prepare_data(cfg: Config) -> None:
    """Synthesize the train and held-out splits where configured: reused when a folder holds exactly that
    set, written when it is empty or missing; a folder holding anything else is an error, never replaced."""
    from molmini.data.reader import find_shards
    synth = cfg.data.synth
    if synth is not None:
        if synth.generator not in SYNTH_GENERATORS:
            raise ConfigError(f"data.synth.generator {synth.generator!r} is unknown; choose one of {SYNTH_GENERATORS}")
        import importlib
        import inspect
        synthesize = importlib.import_module(f"data_pipelines.synth.{synth.generator}").synthesize
        known = set(inspect.signature(synthesize).parameters) - {"out_dir", "num_images", "seed", "split", "image_px",
                                                                 "workers", "shard_size", "progress", "replace_own",
                                                                 "overwrite"}
        unknown = sorted(set(synth.options) - known)
        if unknown:
            raise ConfigError(f"data.synth.options {unknown} are not options of the {synth.generator} generator; "
                              f"it takes {sorted(known)}")
        from data_pipelines.synth.common import FolderInUseError
        for key, folder, n, seed, split in (("train_dir", cfg.data.train_dir, synth.num_train, synth.seed, "train"),
                                            ("test_dir", cfg.data.test_dir, synth.num_test, synth.test_seed, "test")):
            try:
                synthesize(folder, n, seed, split=split, image_px=synth.image_px, workers=synth.workers,
                           shard_size=synth.shard_size, replace_own=False, **synth.options)
            except FolderInUseError as e:
                raise ConfigError(f"data.{key}: {e}. To train on the data there as it is, set data.synth=null; "
                                  f"to synthesize, point data.{key} at another (empty or new) folder") from None
    if not cfg.data.mixture:
        find_shards(cfg.data.train_dir)
    find_shards(cfg.data.test_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml); a relative "
                    "configs/... path that is not here names the config molmini ships (molmini/config/shipped.py)")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved config (YAML, after the preset and overrides) and the model's parameters "
                         "per component, trainable and frozen in this stage; build nothing else, write nothing")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
    ap.add_argument("--resume", default="", metavar="auto|PATH",
                    help="continue a run: `auto` takes the latest complete checkpoint of the run folder (needs "
                         "train.run_name; starts fresh when there is none), or give a checkpoints/step-N folder")
    ap.add_argument("--overwrite", action="store_true",
                    help="start anew in a run folder that holds a run: the old run is renamed to "
                         "NAME.replaced-TIMESTAMP beside it (nothing is deleted)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (also MOLMINI_DEBUG=1)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 train.max_steps=100")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_reporting_errors(lambda: print_config(args) if args.print_config else run(args), debug=args.debug)


def resolved_config(args: argparse.Namespace) -> Config:
    from molmini.config.shipped import default_config, resolve_config
    return load_config(resolve_config(args.config) if args.config else default_config(), args.overrides)


def print_config(args: argparse.Namespace) -> int:
    """The config as YAML (reusable as --config), then the parameter table as YAML comments: no data is
    prepared, no run folder written, no pretrained weights fetched."""
    import yaml

    from molmini.train.summary import format_counts, stage_parameter_counts
    cfg = resolved_config(args)
    counts = stage_parameter_counts(cfg)  # with train.init_from, cfg.model becomes the checkpoint's
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(format_counts(counts))
    return 0


def run(args: argparse.Namespace) -> int:
    from accelerate.utils import broadcast_object_list

    from molmini.model.interface import load_trained
    from molmini.progress import logs_around_bars
    from molmini.train.accelerator import make_accelerator
    from molmini.train.checkpointing import check_run_folder, move_run_aside
    from molmini.train.loop import NonFiniteLossError, train
    cfg = resolved_config(args)
    if args.resume == "auto" and not cfg.train.run_name:
        raise ConfigError("--resume auto continues the run folder named by train.run_name; pass "
                          "train.run_name=NAME (the same as the run to continue)")
    accelerator = make_accelerator(cfg)
    name = [cfg.train.run_name or time.strftime("%Y%m%d-%H%M%S")]
    broadcast_object_list(name)  # every process writes to the main process's run folder
    run_dir = Path(cfg.train.output_dir) / name[0]
    if args.resume not in ("", "auto") and not cfg.train.run_name:
        run_dir = Path(args.resume).parent.parent  # RUN/checkpoints/step-N continues in RUN
    check_run_folder(run_dir, args.resume, args.overwrite)  # by every process before any writes
    if args.overwrite and accelerator.is_main_process:
        aside = move_run_aside(run_dir)
        if aside is not None:
            print(f"--overwrite: moved the run that was in {run_dir} to {aside}")
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        prepare_data(cfg)

    try:
        with logs_around_bars():  # warnings (a skipped record) print above the progress bar
            summary = train(cfg, run_dir, accelerator, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if accelerator.is_main_process and not args.no_eval:
        from eval.heldout import evaluate, format_table, write_heldout_report
        checkpoint = run_dir / "checkpoint"
        model = load_trained(checkpoint, max_length=cfg.data.max_length)
        if cfg.model.hf_vlm:  # the model card names the pretrained model the fine-tune started from
            from molmini.model.transformers_vlm import resolve_hf_vlm
            model.source = resolve_hf_vlm(cfg.model.hf_vlm)
        results, rows = evaluate(model, cfg.data.test_dir, cfg.data.train_dir, batch_size=cfg.eval.batch_size,
                                 max_new_tokens=cfg.eval.max_new_tokens, max_items=cfg.eval.max_items,
                                 model_path=str(checkpoint))
        results["checkpoint"] = str(checkpoint)
        write_heldout_report(run_dir, results, rows)
        model.write_model_card(checkpoint, eval_results=results, training=summary)
        print(format_table(results))
    if accelerator.is_main_process:
        print(f"run folder: {run_dir}  (checkpoint: {run_dir / 'checkpoint'})")
        print(json.dumps({k: v for k, v in summary.items() if k != "shards_by_rank"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
