"""Command line: ``python -m data_pipelines GROUP ...``.

Each command group (``synth``, ``convert``, ``curate``; ``inspect`` later) registers its own subparser in
`build_parser`, and each leaf command sets ``func`` to the function that runs it. An output folder is
written beside itself and swapped in at the end (data_pipelines.outputs.atomic_output_dir), so a command
that fails leaves it as it was; a bad input is one `error: ...` line and exit status 2 (`--debug` or
MOLMINI_DEBUG=1: the traceback).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from molmini.errors import fraction


def _run_synth(args: argparse.Namespace) -> int:
    import importlib  # generators are imported here so that --help stays fast

    module = importlib.import_module(f"data_pipelines.synth.{args.generator}")
    options = {name: getattr(args, name) for name in ("variety", "renderer", "noise", "max_items", "min_font_px",
                                                      "max_font_px") if hasattr(args, name)}
    if args.image_px is not None:
        options["image_px"] = args.image_px
    elif getattr(args, "variety", "basic") == "full":
        options["image_px"] = FULL_VARIETY_PX
    manifest = module.synthesize(args.out, num_images=args.num_images, seed=args.seed, split=args.split,
                                 workers=args.workers, shard_size=args.shard_size, replace_own=False,
                                 overwrite=args.overwrite, engine=args.engine, ray_address=args.ray_address,
                                 **options)
    print(f"{args.out}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards "
          f"({manifest['generator']} v{manifest['generator_version']}, params {manifest['params']})")
    return 0


OVERWRITE_HELP = ("replace a shard set in --out that another command line wrote: it is moved aside to "
                  "OUT.replaced-TIMESTAMP (nothing is deleted). Without it such an --out is refused")


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for shards and manifest.json; written beside itself "
                   "and swapped in at the end, and only when the result holds at least one record")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): processes of this machine; ray: tasks on a Ray cluster (pip install "
                        "'molmini[ray]'), the same output. On a cluster, --out must be a path every node can write")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --engine ray: the cluster to connect to (default: RAY_ADDRESS, else a cluster started "
                        "on this machine for the command)")


FULL_VARIETY_PX = 384  # charts with titles, legends and long labels need more pixels than the basic mix


def _add_synth(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser("synth", help="render synthetic images with exactly computed answers")
    generators = synth.add_subparsers(dest="generator", required=True, metavar="GENERATOR")
    described = {
        "charts": ("bar, line and pie charts with chart QA (--variety full: nine chart kinds in varied styles)",
                   "128 (384 with --variety full)"),
        "tables": ("rendered tables with cell lookup, max, sum, count and compare questions", "448"),
        "documents": ("invoices, receipts, forms, letters and articles with extractive questions", "512"),
        "words": ("reading drills: chart words and numbers on a plain canvas, to read back", "128"),
    }
    for name, (help_text, px) in described.items():
        p = generators.add_parser(name, help=help_text, description=help_text)
        _add_out(p)
        p.add_argument("--num", "--num-images", dest="num_images", type=int, default=1000,
                       help="how many images, one record each (default: 1000)")
        p.add_argument("--seed", type=int, default=0, help="(default: 0)")
        p.add_argument("--split", default="train",
                       help="split name, recorded in the manifest and record keys (default: train)")
        p.add_argument("--image-px", type=int, default=None, help=f"image width in pixels (default: {px})")
        p.add_argument("--workers", type=int, default=1,
                       help="rendering processes of the local engine; the output does not depend on it (default: 1)")
        p.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: 1000)")
        _add_engine(p)
        if name == "charts":
            p.add_argument("--variety", choices=("basic", "full"), default="basic",
                           help="basic (default): the default run's bar/line/pie mix; full: every chart kind "
                                "and style")
            p.add_argument("--renderer", choices=("axes", "direct"), default="axes",
                           help="basic bar/line charts: axes (default: matplotlib Axes, as the default run) "
                                "or direct (no Axes, about 4x faster, near-identical images)")
        elif name == "tables":
            p.add_argument("--noise", action="store_true", help="scan noise: skew, blur, JPEG artefacts")
        elif name == "words":
            p.add_argument("--max-items", type=int, default=3, help="text items per image, at most (default: 3)")
            p.add_argument("--min-font-px", type=int, default=8, help="smallest font in pixels (default: 8)")
            p.add_argument("--max-font-px", type=int, default=24, help="largest font in pixels (default: 24)")
        else:
            p.add_argument("--no-noise", dest="noise", action="store_false",
                           help="clean renders (by default some pages get skew, blur or JPEG artefacts)")
        p.set_defaults(func=_run_synth)


def _run_convert(args: argparse.Namespace) -> int:
    from data_pipelines.convert import convert

    options = {name: getattr(args, name) for name in ("source", "task", "prompt") if getattr(args, name, None)}
    if getattr(args, "one_record_per_row", False):
        options["group_by_image"] = False
    manifest, stats = convert(args.format, args.input, args.out, images_dir=args.images, split=args.split,
                              shard_size=args.shard_size, overwrite=args.overwrite,
                              max_skipped_fraction=args.max_skipped_fraction, engine=args.engine,
                              ray_address=args.ray_address, **options)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.skipped.items())) or "none"
    print(f"{args.out}: {manifest['num_samples']} records in {len(manifest['shards'])} shards from {stats.rows} "
          f"rows; skipped rows: {skipped}")
    return 0


def _add_convert(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser("convert", help="convert a public dataset format into shards")
    formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")
    described = {
        "llava": ("LLaVA JSON: a list of {id, image, conversations}", "the LLaVA JSON file", "instruct"),
        "cauldron": ("HuggingFaceM4/the_cauldron parquet/arrow (images, texts)", "a parquet/arrow file or folder",
                     "vqa"),
        "pixmo-docs": ("allenai/pixmo-docs parquet (image, image_id, questions)", "a parquet file or folder",
                       "doc_qa"),
        "chartqa": ("HuggingFaceM4/ChartQA parquet (image, query, label, human_or_machine)",
                    "a parquet file or folder", "chart_qa"),
        "captions": ("an image folder with a JSONL of {image, caption} lines", "the captions JSONL file", "caption"),
    }
    for name, (help_text, input_help, task) in described.items():
        p = formats.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--input", required=True, help=input_help)
        _add_out(p)
        p.add_argument("--images", default=None,
                       help="folder that relative image paths start from (default: the input file's folder for "
                            "llava and captions; for parquet, embedded image bytes need none)")
        p.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: 1000)")
        p.add_argument("--max-skipped-fraction", type=fraction, default=0.5, metavar="F",
                       help="fail, writing nothing, when more than this fraction of the rows is skipped (a wrong "
                            "--images folder, usually); 1 keeps whatever could be read (default: 0.5)")
        p.add_argument("--split", default="train", help="split name, recorded in the manifest (default: train)")
        _add_engine(p)
        p.add_argument("--source", default=None,
                       help="record source (default: the format's name; for cauldron, the texts' own source)")
        p.add_argument("--task", default=None, help=f"record task (default: {task})")
        if name == "captions":
            p.add_argument("--prompt", default=None, help="the user turn before each caption "
                                                          "(default: 'Describe this image.')")
        if name in ("llava", "chartqa"):
            p.add_argument("--one-record-per-row", action="store_true",
                           help="do not merge rows about the same image into one conversation")
        p.set_defaults(func=_run_convert)


def _run_curate(args: argparse.Namespace) -> int:
    from data_pipelines.convert import write_shards
    from data_pipelines.curate import curate, load_eval_set, standard_filters, write_report
    from data_pipelines.shards import read_manifest
    from molmini.data.reader import BadRecords, find_shards, read_records

    if Path(args.input).resolve() == Path(args.out).resolve():
        raise ValueError(f"--out must differ from --input ({args.input}): curation writes a new set and never "
                         "replaces its own input; pass another --out")
    evals = load_eval_set(args.eval, threshold=args.eval_threshold) if args.eval else None
    filters = standard_filters(
        min_image_side=args.min_image_side, max_aspect_ratio=args.max_aspect_ratio,
        max_garbled_fraction=args.max_garbled_fraction, min_answer_chars=args.min_answer_chars,
        max_answer_chars=args.max_answer_chars, max_ngram=args.max_ngram, max_repeats=args.max_repeats,
        near_dup_threshold=args.near_dup_threshold, evals=evals, skip=args.skip)
    unreadable = BadRecords()
    if args.engine == "ray":
        from data_pipelines.ray_engine import connect
        from data_pipelines.ray_engine.curate import curate_on_ray

        connect(args.ray_address)
        records, report = curate_on_ray(find_shards(args.input), filters, unreadable, max_examples=args.examples)
    else:
        records, report = curate(read_records(find_shards(args.input), unreadable), filters,
                                 max_examples=args.examples)
    try:
        split = read_manifest(args.input).get("split", "train")
    except (FileNotFoundError, ValueError):
        split = "train"
    params = {"input": str(args.input), "eval": [str(e) for e in args.eval],
              "filters": {f.name: f.params() for f in filters}}
    def empty_reason() -> str:
        if report.seen == 0 and unreadable.total == 0:
            return (f"--input {args.input} holds no records (is it a shard folder? "
                    f"`python -m data_pipelines inspect --input {args.input}` shows what it holds)")
        dropped = ", ".join(f"{r.dropped} {r.name}" for r in report.filters if r.dropped) or "none"
        bad = ", ".join(f"{n} {reason}" for reason, n in sorted(unreadable.by_reason.items())) or "none"
        return f"kept 0 of {report.seen} records (dropped: {dropped}; unreadable: {bad})"

    manifest = write_shards(records, args.out, generator="curate", params=params, split=split,
                            shard_size=args.shard_size, overwrite=args.overwrite, empty_reason=empty_reason)
    report.extra["unreadable_input_records"] = unreadable.total
    report.extra["unreadable_by_reason"] = unreadable.by_reason
    if evals is not None:
        report.extra["eval_records"] = evals.records
    json_path, md_path = write_report(report, args.out)
    print(f"{args.out}: kept {report.kept} of {report.seen} records in {len(manifest['shards'])} shards; "
          f"report in {md_path.name} and {json_path.name}")
    return 0


def _add_curate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("curate", help="filter, deduplicate and decontaminate a shard folder",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="shard folder to curate")
    p.add_argument("--out", required=True, help="output shard folder; the report is written beside the shards. "
                   "Written beside itself and swapped in at the end, only when at least one record is kept")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--eval", nargs="+", default=[], metavar="SHARD_DIR",
                   help="evaluation shard folders to decontaminate against")
    p.add_argument("--eval-threshold", type=int, default=16,
                   help="Hamming distance (of 256 bits) at which a training image matches an evaluation image")
    p.add_argument("--near-dup-threshold", type=int, default=16,
                   help="Hamming distance (of 256 bits) at which two images are near duplicates")
    p.add_argument("--min-image-side", type=int, default=32, help="shortest allowed image side, in pixels")
    p.add_argument("--max-aspect-ratio", type=float, default=4.0, help="longest side over shortest side")
    p.add_argument("--max-garbled-fraction", type=float, default=0.3,
                   help="highest allowed fraction of unprintable or replacement characters in a message")
    p.add_argument("--min-answer-chars", type=int, default=1)
    p.add_argument("--max-answer-chars", type=int, default=4000)
    p.add_argument("--max-ngram", type=int, default=4, help="longest n-gram checked for back-to-back repeats")
    p.add_argument("--max-repeats", type=int, default=4,
                   help="an answer repeating an n-gram this many times in a row is dropped")
    p.add_argument("--skip", nargs="+", default=[], metavar="FILTER",
                   help="filters to leave out, by name: min_image_size, max_aspect_ratio, eval_image_overlap, "
                        "eval_qa_overlap (leave it out for templated data such as synth charts), "
                        "empty_or_garbled_text, answer_length, repeated_ngrams, exact_duplicates, near_duplicates")
    p.add_argument("--examples", type=int, default=10, help="example keys kept per filter in the report")
    p.add_argument("--shard-size", type=int, default=1000, help="records per output shard")
    _add_engine(p)
    p.set_defaults(func=_run_curate)


def _run_inspect(args: argparse.Namespace) -> int:
    from data_pipelines.inspect import contact_sheet

    for name in ("num", "cols", "tile_px"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_pairs < 0:
        raise ValueError(f"--max-pairs must be 0 or more, got {args.max_pairs}")
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already exists and is left as it is; choose another --out, or "
                              "pass --overwrite to replace it")
    path = contact_sheet(args.input, args.out, num=args.num, cols=args.cols, tile_px=args.tile_px,
                         max_pairs=args.max_pairs, draw_boxes=args.draw_boxes)
    print(f"wrote {path}")
    return 0


def _add_inspect(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("inspect", help="write a contact sheet PNG of samples with their questions and answers",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="shard folder")
    p.add_argument("--out", default="contact_sheet.png", help="PNG to write (an existing file is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.add_argument("--num", type=int, default=16, help="how many records")
    p.add_argument("--cols", type=int, default=4, help="records per row")
    p.add_argument("--tile-px", type=int, default=200, help="image size on the sheet")
    p.add_argument("--max-pairs", type=int, default=4, help="question/answer pairs shown per record")
    p.add_argument("--draw-boxes", action="store_true",
                   help="outline the text boxes each synthetic record says its renderer drew (meta.text_boxes)")
    p.set_defaults(func=_run_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also MOLMINI_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(commands)
    _add_convert(commands)
    _add_curate(commands)
    _add_inspect(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    # Imported after parsing: importing molmini loads torch, which `--help` should not wait for.
    from molmini.errors import run_reporting_errors
    return run_reporting_errors(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
