"""`molmini serve` throughput: N concurrent chat-completion requests (one chart image each), answered with
batching and with `--max-batch-size 1`, in requests/s and generated tokens/s.

    python bench/serve_throughput.py                              # a tiny random checkpoint built here
    python bench/serve_throughput.py --model runs/NAME/checkpoint --requests 64 --device cuda --dtype bfloat16

Each setting gets its own `molmini serve` process (the real command line), a warm-up request, then all
requests at once from N client threads. A random model rarely stops early, so most answers run to
--max-tokens; the tokens/s column counts what was actually generated.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
# tests/helpers/__init__.py's tiny model: a 32 px, 2-layer tower and a 2-layer, 64-wide llama.
TINY_OVERRIDES = [
    "model.vision.vision_cfg={image_size: 32, patch_size: 8, width: 64, layers: 2, head_width: 32}",
    "model.lm.config={model_type: llama, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
    "num_key_value_heads: 2, intermediate_size: 128, max_position_embeddings: 256, tie_word_embeddings: true}",
    "model.tokenizer.vocab_size=300",
]


def tiny_checkpoint(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    import torch

    from molmini.config import load_config
    from molmini.data.tokenizer import train_bpe_tokenizer
    from molmini.model.vlm import MolminiModel

    texts = [f"What colour are the bars? {c} How many bars are there? {n}" for c in ("red", "blue") for n in range(9)]
    torch.manual_seed(0)
    model = MolminiModel(load_config(None, TINY_OVERRIDES).model, train_bpe_tokenizer(texts * 5, vocab_size=300))
    return model.eval().save_pretrained(folder / "tiny")


def chart_data_url(seed: int, size: int) -> str:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i in range(1 + seed % 5):
        draw.rectangle([4 + i * size // 6, size // (2 + i), 10 + i * size // 6, size - 2],
                       fill=("red", "blue", "green")[(seed + i) % 3])
    buffer = io.BytesIO()
    image.save(buffer, "png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args: argparse.Namespace, model: str, max_batch_size: int) -> dict[str, float]:
    """Start a server with this batch size, fire the requests at once, and stop it."""
    port = free_port()
    command = [sys.executable, "-m", "molmini.cli", "serve", "--model", model, "--port", str(port),
               "--max-batch-size", str(max_batch_size), "--batch-wait-ms", str(args.batch_wait_ms),
               "--device", args.device] + (["--dtype", args.dtype] if args.dtype else [])
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=600)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read().decode()[-3000:]}")
            try:
                client.get(f"{url}/health")
                break
            except httpx.HTTPError:
                time.sleep(0.2)

        def ask(i: int) -> int:
            body = {"model": model, "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": chart_data_url(i, args.image_px)}},
                {"type": "text", "text": "What colour are the bars?"}]}]}
            reply = client.post(f"{url}/v1/chat/completions", json=body)
            reply.raise_for_status()
            return reply.json()["usage"]["completion_tokens"]

        ask(0)  # warm-up: first-call allocations and lazy imports
        before = client.get(f"{url}/health").json()
        with ThreadPoolExecutor(args.requests) as pool:
            start = time.perf_counter()
            tokens = sum(pool.map(ask, range(args.requests)))
            seconds = time.perf_counter() - start
        after = client.get(f"{url}/health").json()
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=60)
    return {"max_batch_size": max_batch_size, "seconds": seconds, "requests_per_s": args.requests / seconds,
            "tokens_per_s": tokens / seconds, "batches": after["batches"] - before["batches"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder or hub id (default: a tiny random checkpoint built here)")
    ap.add_argument("--requests", type=int, default=32, help="concurrent requests per setting")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch-size", type=int, default=8, help="the batched setting (compared with 1)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--image-px", type=int, default=64, help="side of the square test charts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_checkpoint(Path(tmp)))
        rows = [measure(args, model, size) for size in (args.max_batch_size, 1)]
    print(f"{args.requests} concurrent requests, max_tokens={args.max_tokens}, {args.image_px} px images, "
          f"device {args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'max batch':>9} {'batches':>8} {'seconds':>8} {'requests/s':>11} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['max_batch_size']:>9} {r['batches']:>8} {r['seconds']:>8.2f} {r['requests_per_s']:>11.2f} "
              f"{r['tokens_per_s']:>9.1f}")
    print(f"batching speed-up: {rows[0]['requests_per_s'] / rows[1]['requests_per_s']:.2f}x")


if __name__ == "__main__":
    main()
