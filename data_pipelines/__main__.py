"""Command line: ``python -m data_pipelines GROUP ...``.

Each command group (``synth`` now; ``convert``, ``curate`` and ``inspect`` later) registers its own
subparser in `build_parser`, and each leaf command sets ``func`` to the function that runs it.
"""
from __future__ import annotations

import argparse
import logging
import sys


def _run_synth_charts(args: argparse.Namespace) -> int:
    from data_pipelines.synth import charts  # imported here so that --help stays fast

    manifest = charts.synthesize(args.out, num_images=args.num_images, seed=args.seed, split=args.split,
                                 image_px=args.image_px, workers=args.workers, shard_size=args.shard_size)
    print(f"{args.out}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards")
    return 0


def _add_synth(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser("synth", help="render synthetic images with exactly computed answers")
    generators = synth.add_subparsers(dest="generator", required=True, metavar="GENERATOR")

    p = generators.add_parser("charts", help="bar, line and pie charts with chart QA",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    p.add_argument("--num-images", type=int, default=1000, help="how many chart images (one record each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="split name, recorded in the manifest and record keys")
    p.add_argument("--image-px", type=int, default=128, help="image width and height in pixels")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (output does not depend on it)")
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    p.set_defaults(func=_run_synth_charts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
