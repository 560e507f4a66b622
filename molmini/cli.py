"""The `molmini` command line: `molmini generate` answers questions about images with a checkpoint,
`molmini push` publishes a checkpoint folder to the Hugging Face hub."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from .model import MolminiModel
    images = []
    for path in args.image:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
            print(f"error: cannot read image {path!r} ({e}); pass a PNG or JPEG file", file=sys.stderr)
            return 2
    prompts = args.prompt
    if len(prompts) == 1 and len(images) > 1 and not args.together:
        prompts = prompts * len(images)  # the same question about every image
    model = MolminiModel.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.num_beams > 1:
        kwargs["num_beams"] = args.num_beams
    if args.temperature > 0:
        kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    if args.together:  # all images in one prompt, one <image> marker each
        if args.stream:
            for piece in model.stream(images, prompts[0], **kwargs):
                print(piece, end="", flush=True)
            print()
            return 0
        answers = model.generate([images], prompts[:1], **kwargs)
        rows = [{"images": args.image, "prompt": prompts[0], "answer": answers[0]}]
    else:
        if len(prompts) != len(images):
            print(f"error: {len(images)} images but {len(prompts)} prompts; pass one prompt, or one per image",
                  file=sys.stderr)
            return 2
        if args.stream and len(images) == 1:
            for piece in model.stream(images[0], prompts[0], **kwargs):
                print(piece, end="", flush=True)
            print()
            return 0
        answers = model.generate(images, prompts, batch_size=args.batch_size, **kwargs)
        rows = [{"image": i, "prompt": p, "answer": a} for i, p, a in zip(args.image, prompts, answers)]
    for row in rows:
        print(json.dumps(row) if args.json else row["answer"])
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_folder
    try:
        url = push_folder(Path(args.folder), args.repo_id, private=args.private or None)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="molmini", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer a prompt about an image with a checkpoint")
    gen.add_argument("--model", required=True, help="checkpoint folder (runs/NAME/checkpoint) or hub id owner/name")
    gen.add_argument("--image", required=True, nargs="+", help="image file(s)")
    gen.add_argument("--prompt", required=True, nargs="+", help="one prompt, or one per image")
    gen.add_argument("--together", action="store_true",
                     help="put all images in one prompt (mark each with <image> in the prompt)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    gen.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature (0: greedy)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    gen.add_argument("--dtype", default=None, help="e.g. bfloat16 on a GPU (default: as saved, float32)")
    gen.add_argument("--stream", action="store_true", help="print the answer token by token (one image)")
    gen.add_argument("--json", action="store_true", help="one JSON line per answer with image and prompt")
    gen.set_defaults(func=cmd_generate)

    push = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face hub")
    push.add_argument("folder", help="checkpoint folder, e.g. runs/NAME/checkpoint")
    push.add_argument("repo_id", help="owner/name on the hub (created if needed; log in with `hf auth login`)")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=cmd_push)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
