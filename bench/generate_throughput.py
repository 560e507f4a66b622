"""Generation throughput: molmini's `generate_ids` against LlavaForConditionalGeneration.generate at equal shape.

    OMP_NUM_THREADS=2 python bench/generate_throughput.py --shape S2 --steps 3 --json out.json
    python bench/generate_throughput.py --shape H100 --json out.json         # on a GPU: bf16 weights

Greedy decoding with the KV cache, exactly the shape's new tokens (16 on the CPU shapes, 32 at H100 as in
../shared/reference/peer_throughput.md; min_new_tokens holds off the stop token), prompt = the image's tokens
plus the shape's prompt text, at each of the shape's batch sizes (1 and 16 on the CPU). The models are built
as in bench/peer_models.py and called in turn, the order rotating each round, so machine load hits all alike.
Figure: new tokens per second (batch x new tokens over the median call, prefill included), and its ratio to
LLaVA's at the same batch size.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_models as P  # noqa: E402
from results_file import load_average, machine, merge_into  # noqa: E402

from molmini.errors import run_reporting_errors  # noqa: E402


def generators(kind: str, shape: P.Shape, device: torch.device, dtype: torch.dtype, sizes: list[int]
               ) -> list[tuple[int, str, Callable[[], torch.Tensor], int]]:
    """One model, and for each batch size (b, name, a call that returns the new token ids [b, new], prompt length)."""
    new = shape.gen_new_tokens
    out = []
    if kind == P.PEER:
        with device:  # initialised where it runs: much faster on a GPU
            llava = P.build_llava(shape).eval().to(device=device, dtype=dtype)
        for b in sizes:
            batch = P.to_device(P.llava_batch(llava, shape, b, prompt_only=True), device)
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
            length = batch["input_ids"].shape[1]

            def call(batch=batch, length=length) -> torch.Tensor:
                ids = llava.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
                return ids[:, length:]  # transformers returns the prompt and the new tokens
            out.append((b, P.PEER, call, length))
        return out
    with device:
        model = P.build_molmini(shape, kind).eval().to(device=device, dtype=dtype)
    for b in sizes:
        batch = P.to_device(P.molmini_batch(model, shape, b, prompt_only=True), device)
        out.append((b, f"molmini {kind}", lambda batch=batch: model.generate_ids(
            **batch, max_new_tokens=new, min_new_tokens=new), batch["input_ids"].shape[1]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="S1", help=f"one of {', '.join(P.SHAPES)} (bench/peer_models.py)")
    ap.add_argument("--steps", type=int, default=3, help="timed calls per model and batch size")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--connector", default="both", help="attention_pool_2x2, mlp or both (molmini's connector)")
    ap.add_argument("--batch-sizes", default="", help="comma-separated (default: the shape's, e.g. 1,16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, OMP_NUM_THREADS)")
    ap.add_argument("--json", default="", metavar="OUT", help="merge the figures into this JSON file")
    ap.add_argument("--key", default="", help="the key in --json (default: generate/SHAPE)")
    args = ap.parse_args(argv)
    shape = P.get_shape(args.shape)
    connectors = P.parse_connectors(args.connector)
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else list(shape.gen_batches)
    except ValueError:
        raise ValueError(f"--batch-sizes {args.batch_sizes!r} must be integers separated by commas, e.g. 1,16")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    load_start = load_average()
    torch.manual_seed(0)
    calls = [c for k in (*connectors, P.PEER) for c in generators(k, shape, device, dtype, sizes)]
    times: dict[tuple[str, int], list[float]] = {}
    with torch.no_grad():
        for r in range(args.warmup + args.steps):
            for b, name, call, _ in calls[r % len(calls):] + calls[:r % len(calls)]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                new_ids = call()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                if new_ids.shape != (b, shape.gen_new_tokens):
                    raise RuntimeError(f"{name} returned new tokens of shape {tuple(new_ids.shape)}, expected "
                                       f"{(b, shape.gen_new_tokens)}")
                if r >= args.warmup:
                    times.setdefault((name, b), []).append(seconds)
    models: dict[str, dict[str, Any]] = {}
    for b, name, _call, prompt in calls:
        t = median(times[(name, b)])
        models.setdefault(name, {})[f"batch_{b}"] = {
            "prompt_tokens": prompt, "call_s_median": round(t, 4),
            "call_s_all": [round(x, 4) for x in times[(name, b)]],
            "new_tokens_per_s": round(b * shape.gen_new_tokens / t, 2)}
    ratios = {name: {k: round(v["new_tokens_per_s"] / models[P.PEER][k]["new_tokens_per_s"], 3) for k, v in m.items()}
              for name, m in models.items() if name != P.PEER}
    result = {"benchmark": "generate_throughput", "shape": P.shape_dict(shape), "device": device.type,
              "dtype": str(dtype).removeprefix("torch."), "new_tokens": shape.gen_new_tokens, "steps": args.steps,
              "warmup": args.warmup, "models": models, "ratio_to_llava": ratios, "machine": machine(),
              "load_average_start": load_start, "load_average_end": load_average(),
              "command": "python bench/generate_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    for name, m in models.items():
        print(f"{name:<30} " + "  ".join(f"batch {k.split('_')[1]}: {v['new_tokens_per_s']:>8.1f} new tok/s "
                                         f"x{ratios.get(name, {}).get(k, 1):.2f}" for k, v in m.items()))
    if args.json:
        merge_into(args.json, args.key or f"generate/{args.shape}", result)
    return result


if __name__ == "__main__":
    sys.exit(run_reporting_errors(lambda: main() and 0))  # bad input: one `error: ...` line, exit 2
