"""The `molmini` command: one subcommand per function below, each registered in `build_parser`.

    molmini generate --model DIR_OR_HUB_ID --image IMG [IMG ...] --prompt TEXT   answers from a checkpoint
                     (IMG: a file or an http(s) URL)
    molmini push CHECKPOINT_DIR OWNER/NAME [--private]                           publish to the hub
    molmini plot RUN_DIR [--out PNG]                                             the run's training curves
    molmini serve --model DIR_OR_HUB_ID [--port 8000]                            an OpenAI-compatible server
    molmini demo CHECKPOINT [--port 7860] [--host 127.0.0.1] [--share]          a browser demo (Gradio)

A bad input (a missing folder, a damaged checkpoint, a prompt that does not fit its images) is one
`error: ...` line and exit status 2; `molmini --debug ...` or MOLMINI_DEBUG=1 shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Curves drawn by `plot`, each on its own panel when the log has it: (title, keys of train_log.jsonl).
PANELS = [("loss per answer token", ["loss", "eval_loss"]), ("reading loss (model.reading)", ["read_loss"]),
          ("held-out read accuracy", ["read_accuracy"]),
          ("learning rate", ["lr_vision", "lr_connector", "lr_lm", "lr_reader"]),
          ("gradient norm", ["grad_norm"]), ("throughput (samples/s)", ["samples_per_s"]),
          ("throughput (tokens/s)", ["tokens_per_s"]), ("time waiting for data (s per log interval)", ["data_wait_s"]),
          ("MFU", ["mfu"]), ("GPU memory (GiB)", ["gpu_mem_gb"])]


def read_log(run_dir: Path) -> list[dict]:
    from molmini.train.checkpointing import LOG_FILE, read_train_log
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass a run folder written by train.py (runs/<name>)")
    return read_train_log(path)  # a last line cut short by a kill is left out


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the curves of a run's train_log.jsonl to a PNG (default RUN_DIR/curves.png); returns its path.
    `python -m eval report` calls it too, to link a model's training curves from report.html."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    panels = [(title, [k for k in keys if any(r.get(k) is not None for r in records)]) for title, keys in PANELS]
    panels = [(t, ks or ["lr"]) if t == "learning rate" else (t, ks) for t, ks in panels]  # logs before lr_*
    panels = [(t, [k for k in ks if any(r.get(k) is not None for r in records)]) for t, ks in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        raise ValueError(f"{run_dir}/train_log.jsonl has no curves to draw")
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
    fig.suptitle(Path(run_dir).resolve().name)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the curves of a run's train_log.jsonl to a PNG (default RUN_DIR/curves.png)."""
    print(plot_curves(args.run_dir, args.out))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from molmini.data.images import load_image
    from molmini.data.records import IMAGE_MARKER
    from molmini.model.fast_inference import check_options as check_speed_options
    from molmini.model.fast_inference import speed_up
    from molmini.model.vlm import MolminiModel
    images = [load_image(source) for source in args.image]  # a bad one is an error naming it (exit 2)
    prompts = args.prompt
    if args.together:  # all images in one prompt, one <image> marker each
        if len(prompts) != 1:
            print(f"error: --together puts all images in one prompt, but {len(prompts)} prompts were given",
                  file=sys.stderr)
            return 2
        items = [(images, prompts[0], {"images": args.image})]
    else:
        if len(prompts) == 1:
            prompts = prompts * len(images)  # the same question about every image
        if len(prompts) != len(images):
            print(f"error: {len(images)} images but {len(prompts)} prompts; pass one prompt, or one per image",
                  file=sys.stderr)
            return 2
        items = [(im, p, {"image": path}) for im, p, path in zip(images, prompts, args.image)]
    for im, prompt, _ in items:
        n, markers = len(im) if isinstance(im, list) else 1, prompt.count(IMAGE_MARKER)
        if markers != n and not (markers == 0 and n == 1):
            print(f"error: the prompt {prompt!r} has {markers} {IMAGE_MARKER} markers for {n} image(s); put one "
                  f"{IMAGE_MARKER} per image (a single image needs none)", file=sys.stderr)
            return 2
    check_speed_options(args.quantize, args.compile, args.device)  # before the load: a refusal costs nothing
    model = speed_up(MolminiModel.from_pretrained(args.model, device=args.device, dtype=args.dtype),
                     args.quantize, args.compile)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.num_beams > 1:
        kwargs["num_beams"] = args.num_beams
    if args.temperature > 0:
        kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    if args.stream and len(items) == 1:
        for piece in model.stream(items[0][0], items[0][1], **kwargs):
            print(piece, end="", flush=True)
        print()
        return 0
    answers = model.generate([im for im, _, _ in items], [p for _, p, _ in items], batch_size=args.batch_size,
                             **kwargs)
    for (_, prompt, where), answer in zip(items, answers):
        print(json.dumps({**where, "prompt": prompt, "answer": answer}) if args.json else answer)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from molmini.hub.publish import push_folder
    try:
        url = push_folder(Path(args.folder), args.repo_id, private=args.private or None)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(url)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a checkpoint with OpenAI's chat-completions protocol (molmini/serve/server.py) until interrupted."""
    from molmini.serve.requests import Limits
    from molmini.serve.server import missing_server_packages, serve
    missing = missing_server_packages()
    if missing:
        print(f"error: molmini serve needs {' and '.join(missing)}: pip install \"molmini[serve]\"", file=sys.stderr)
        return 2
    limits = Limits(max_new_tokens=args.max_new_tokens_limit, max_image_pixels=args.max_image_pixels,
                    max_image_bytes=args.max_image_bytes)
    serve(args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
          batch_wait_ms=args.batch_wait_ms, limits=limits, device=args.device, dtype=args.dtype,
          model_name=args.served_model_name, quantize=args.quantize, compile=args.compile)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A browser page for a checkpoint (molmini/serve/demo.py): upload an image, ask, see the answer, the crops
    the model saw and its image tokens. Listens on 127.0.0.1 unless --host or --share asks for more."""
    from molmini.serve.demo import launch, missing_demo_packages
    from molmini.serve.requests import Limits
    missing = missing_demo_packages()
    if missing:
        print(f"error: molmini demo needs {' and '.join(missing)}: pip install \"molmini[demo]\"", file=sys.stderr)
        return 2
    limits = Limits(max_new_tokens=args.max_new_tokens_limit, max_image_pixels=args.max_image_pixels,
                    max_image_bytes=args.max_image_bytes)
    launch(args.checkpoint, host=args.host, port=args.port, share=args.share, device=args.device, dtype=args.dtype,
           limits=limits, quantize=args.quantize, compile=args.compile)
    return 0


def at_least(low: float, kind: type = int):
    """An argparse type: a number of `kind` that is at least `low`."""
    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value
    return parse


def probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how a command loads the model it answers with: --device, --dtype and the CPU speed-ups
    (--quantize, --compile)."""
    from molmini.model.fast_inference import add_arguments as add_speed_arguments  # light: torch loads later
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 on a GPU (default: as saved, float32)")
    add_speed_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="molmini", description=__doc__)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (also MOLMINI_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer a prompt about an image with a checkpoint")
    gen.add_argument("--model", required=True, help="checkpoint folder (runs/NAME/checkpoint) or hub id owner/name")
    gen.add_argument("--image", required=True, nargs="+", help="image file(s) or http(s) URL(s)")
    gen.add_argument("--prompt", required=True, nargs="+", help="one prompt, or one per image")
    gen.add_argument("--together", action="store_true",
                     help="put all images in one prompt (mark each with <image> in the prompt)")
    gen.add_argument("--max-new-tokens", type=at_least(1), default=64)
    gen.add_argument("--num-beams", type=at_least(1), default=1, help="beam search width (1: greedy)")
    gen.add_argument("--temperature", type=at_least(0.0, float), default=0.0,
                     help="sample at this temperature (0: greedy)")
    gen.add_argument("--top-p", type=probability, default=1.0)
    gen.add_argument("--batch-size", type=at_least(1), default=16)
    add_loading_arguments(gen)
    gen.add_argument("--stream", action="store_true", help="print the answer token by token (one image)")
    gen.add_argument("--json", action="store_true", help="one JSON line per answer with image and prompt")
    gen.set_defaults(func=cmd_generate)

    push = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face hub")
    push.add_argument("folder", help="checkpoint folder, e.g. runs/NAME/checkpoint")
    push.add_argument("repo_id", help="owner/name on the hub (created if needed; log in with `hf auth login`)")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=cmd_push)

    from molmini.serve.requests import Limits  # light (no torch): the serve limits' defaults live there
    srv = sub.add_parser("serve", help="serve a checkpoint as an OpenAI-compatible chat-completions API",
                         description=cmd_serve.__doc__)
    srv.add_argument("--model", required=True, help="checkpoint folder (runs/NAME/checkpoint) or hub id owner/name")
    srv.add_argument("--served-model-name", help="the model name clients see (default: the --model argument)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=at_least(1), default=8000)
    srv.add_argument("--max-batch-size", type=at_least(1), default=8, help="requests answered by one generate call")
    srv.add_argument("--batch-wait-ms", type=at_least(0.0, float), default=10.0,
                     help="how long the first request of a batch waits for more")
    srv.add_argument("--max-new-tokens-limit", type=at_least(1), default=Limits.max_new_tokens,
                     help="the largest max_tokens a request may ask for")
    srv.add_argument("--max-image-pixels", type=at_least(1), default=Limits.max_image_pixels,
                     help="width x height of one image")
    srv.add_argument("--max-image-bytes", type=at_least(1), default=Limits.max_image_bytes,
                     help="encoded size of one image")
    add_loading_arguments(srv)
    srv.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="a browser demo of a checkpoint: upload an image, ask, see what it saw",
                          description=cmd_demo.__doc__)
    demo.add_argument("checkpoint", help="checkpoint folder (runs/NAME/checkpoint, molmini's or a transformers "
                      "VLM's) or hub id owner/name")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    demo.add_argument("--port", type=at_least(1), default=None, help="port (default: 7860, or the next free one)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    demo.add_argument("--max-new-tokens-limit", type=at_least(1), default=256, help="the slider's largest value")
    demo.add_argument("--max-image-pixels", type=at_least(1), default=Limits.max_image_pixels,
                      help="width x height of an upload")
    demo.add_argument("--max-image-bytes", type=at_least(1), default=Limits.max_image_bytes,
                      help="size of an uploaded file")
    add_loading_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    p = sub.add_parser("plot", help="draw a run's training curves to a PNG", description=cmd_plot.__doc__)
    p.add_argument("run_dir", type=Path, help="a run folder (holding train_log.jsonl)")
    p.add_argument("--out", help="the PNG to write (default: RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_plot)
    return ap


def main(argv: list[str] | None = None) -> int:
    from molmini.errors import run_reporting_errors
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
