"""Generation throughput: molmini's `generate_ids` against LlavaForConditionalGeneration.generate at equal shape.

    OMP_NUM_THREADS=2 python bench/generate_throughput.py --shape S2 --steps 3 --json out.json
    python bench/generate_throughput.py --shape H100 --json out.json         # on a GPU: bf16 weights

Greedy decoding with the KV cache, exactly the shape's new tokens (16 on the CPU shapes, 32 at H100 as in
../shared/reference/peer_throughput.md; min_new_tokens holds off the stop token), prompt = the image's tokens
plus the shape's prompt text, at each of the shape's batch sizes (1 and 16 on the CPU). The models are built
as in bench/peer_models.py and called in turn, the order rotating each round, so machine load hits all alike.
Figure: new tokens per second (batch x new tokens over the median call, prefill included), and its ratio to
LLaVA's at the same batch size.

With --checkpoint, trained models instead, each in the --variants that molmini/model/fast_inference.py offers
(`generate`, `serve`, `demo` and `python -m eval` take them as --quantize and --compile):

    OMP_NUM_THREADS=2 python bench/generate_throughput.py --checkpoint runs/NAME/checkpoint \
        --test-dir data/charts/test --train-dir data/charts/train --json out.json

For each variant: new tokens per second at batch 1 and 16 (the same 16 new tokens, on held-out images),
first-token latency (batch 1, from the image file's bytes to the first token: preprocessing, tower and
prefill), the first call's seconds (torch.compile compiles there), and relaxed accuracy on the whole held-out
set with its difference from fp32 in points. A variant is kept when it loses at most --max-accuracy-drop
points. The timed calls rotate over the variants each round, as above.
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


# name: (--quantize, --compile). int8-weight is torchao's weight-only int8 (Int8WeightOnlyConfig), measured as a
# candidate and not offered: it was slower than fp32 on the 2-core CPU (docs/inference.md).
VARIANTS = {"fp32": ("none", False), "int8-dynamic": ("int8-dynamic", False), "int8-weight": ("torchao", False),
            "compile": ("none", True), "int8-dynamic+compile": ("int8-dynamic", True)}


def prepare(model, name: str):
    """`model` as the variant `name` answers."""
    from molmini.model.fast_inference import speed_up
    quantize, compile = VARIANTS[name]
    if quantize != "torchao":
        return speed_up(model, quantize, compile)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ValueError("the int8-weight variant needs torchao: pip install torchao, or leave it out of "
                         "--variants") from None
    speed_up(model)  # records the parameters as trained
    quantize_(model, Int8WeightOnlyConfig())
    model.inference_options["quantize"] = "int8-weight (torchao)"
    return model


def timed_group(checkpoint: str, names: list[str], items: list, sizes: list[int], args: argparse.Namespace
                ) -> tuple[dict[str, Any], dict[tuple[str, str], list[float]], dict[tuple[str, str], float]]:
    """Load `checkpoint` once per variant in `names` and time them in rotation: (each variant's model, load and
    prepare seconds; the timed calls' seconds by (variant, call); each call's first, untimed seconds)."""
    import io

    from PIL import Image

    from molmini.model.vlm import MolminiModel

    def batch_of(model, some):  # from the images' bytes, as a request brings them
        return model._on_device(model.processor.prompt_batch(
            [[Image.open(io.BytesIO(data)) for data in it.images] for it in some], [it.prompt for it in some]))

    new, models, calls = args.new_tokens, {}, []
    for name in names:
        start = time.perf_counter()
        model = MolminiModel.from_pretrained(checkpoint)
        loaded = time.perf_counter()
        prepare(model, name)
        models[name] = {"model": model, "load_s": round(loaded - start, 3),
                        "prepare_s": round(time.perf_counter() - loaded, 3)}
        for b in sizes:
            batch = batch_of(model, items[:b])
            calls.append((name, f"batch_{b}", (b, new), lambda m=model, batch=batch: m.generate_ids(
                **batch, max_new_tokens=new, min_new_tokens=new)))
        calls.append((name, "first_token", (1, 1), lambda m=model: m.generate_ids(**batch_of(m, items[:1]),
                                                                                 max_new_tokens=1)))
    times: dict[tuple[str, str], list[float]] = {}
    first: dict[tuple[str, str], float] = {}
    with torch.no_grad():
        for r in range(args.warmup + args.steps):
            for name, key, expected, call in calls[r % len(calls):] + calls[:r % len(calls)]:
                start = time.perf_counter()
                ids = call()
                seconds = time.perf_counter() - start
                if tuple(ids.shape) != expected:
                    raise RuntimeError(f"{name} returned new tokens of shape {tuple(ids.shape)}, expected {expected}")
                first.setdefault((name, key), seconds)
                if r >= args.warmup:
                    times.setdefault((name, key), []).append(seconds)
    return models, times, first


def speed_fields(name: str, times: dict, first: dict, sizes: list[int], new: int) -> dict[str, Any]:
    """A variant's timing figures from timed_group's calls: per batch size the median and every call's seconds
    and new tokens/s, the first-token latency and each batch size's first call."""
    fields: dict[str, Any] = {}
    for b in sizes:
        t = median(times[(name, f"batch_{b}")])
        fields[f"batch_{b}"] = {"call_s_median": round(t, 4),
                                "call_s_all": [round(x, 4) for x in times[(name, f"batch_{b}")]],
                                "new_tokens_per_s": round(b * new / t, 1)}
    fields["first_token_latency_s"] = round(median(times[(name, "first_token")]), 4)
    fields["first_call_s"] = {f"batch_{b}": round(first[(name, f"batch_{b}")], 3) for b in sizes}
    return fields


def print_variants(checkpoint: str, rows: dict[str, Any], sizes: list[int]) -> None:
    base = rows["fp32"]
    print(f"{checkpoint}: {base['options'].get('parameters', 0) / 1e6:.2f}M parameters, "
          f"{base['heldout_items']} held-out questions (speed-ups against fp32 timed in the same rotation)")
    print(f"  {'variant':<22}" + "".join(f"{'tok/s b' + str(b):>16}" for b in sizes)
          + f"{'1st tok ms':>14}{'1st call s':>12}{'accuracy':>10}{'change':>8}  kept")
    for name, row in rows.items():
        speeds = "".join(f"{row[f'batch_{b}']['new_tokens_per_s']:>9.1f} x{row['speed_vs_fp32'][f'batch_{b}']:<5.2f}"
                         for b in sizes)
        print(f"  {name:<22}{speeds}{1000 * row['first_token_latency_s']:>8.1f} x{row['first_token_vs_fp32']:<4.2f}"
              f"{max(row['first_call_s'].values()):>12.1f}{row['heldout_relaxed_accuracy']:>10.1f}"
              f"{row['accuracy_change_points']:>+8.1f}  " + ("yes" if row["kept"] else "no"))


def checkpoint_variants(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    """The fast_inference variants of each --checkpoint: speed on held-out images and held-out accuracy.

    The eager variants are timed together; each compiled one in a group of its own beside fp32, after
    torch._dynamo.reset(): every compiled model adds its graphs to the same code object's cache
    (LlamaForCausalLM.forward), and each call of any of them then checks the guards of all, which no
    serving process with its one model pays."""
    import torch._dynamo

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from eval.benchmarks import load_benchmark
    from eval.heldout import evaluate

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or "fp32" not in names:
        raise ValueError(f"--variants {args.variants!r}: give fp32 and any of {', '.join(VARIANTS)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    groups = [[v for v in names if not VARIANTS[v][1]]] + [["fp32", v] for v in names if VARIANTS[v][1]]
    items = []
    for item in load_benchmark("synthetic", args.test_dir):
        items.append(item)
        if len(items) == max(sizes):
            break
    results: dict[str, Any] = {}
    for checkpoint in args.checkpoint:
        rows: dict[str, Any] = {}
        for group in groups:
            torch._dynamo.reset()
            models, times, first = timed_group(checkpoint, group, items, sizes, args)
            timed = {name: {**models[name], **speed_fields(name, times, first, sizes, args.new_tokens)}
                     for name in group}
            del models
            for name, row in timed.items():
                if name in rows:  # fp32 beside a compiled variant: only that variant's baseline
                    continue
                row["timed_beside"] = group
                model = row.pop("model")
                row["options"] = dict(model.inference_options)
                start = time.perf_counter()
                heldout, _ = evaluate(model, args.test_dir, args.train_dir, batch_size=max(sizes), max_new_tokens=8,
                                      max_items=args.limit, model_path=f"{checkpoint}#{name}",
                                      max_skipped_fraction=0.5)
                row.update({"heldout_items": heldout["overall"]["n"],
                            "heldout_relaxed_accuracy": round(100 * heldout["overall"]["relaxed_accuracy"], 2),
                            "heldout_per_type": {t: round(100 * v["relaxed_accuracy"], 1)
                                                 for t, v in heldout["per_type"].items()},
                            "heldout_wall_s": round(time.perf_counter() - start, 2)})
                if VARIANTS[name][1]:  # a compiled variant, timed in a group of its own with fp32
                    row["fp32_in_group"] = {k: timed["fp32"][k] for k in
                                            [f"batch_{b}" for b in sizes] + ["first_token_latency_s"]}
                rows[name] = row
            del timed
        base = rows["fp32"]
        for name, row in rows.items():
            ref = row.get("fp32_in_group", base)  # the fp32 timed in the same rotation
            row["accuracy_change_points"] = round(row["heldout_relaxed_accuracy"] - base["heldout_relaxed_accuracy"], 2)
            row["kept"] = row["accuracy_change_points"] >= -args.max_accuracy_drop
            row["speed_vs_fp32"] = {f"batch_{b}": round(row[f"batch_{b}"]["new_tokens_per_s"] /
                                                        ref[f"batch_{b}"]["new_tokens_per_s"], 2) for b in sizes}
            row["first_token_vs_fp32"] = round(ref["first_token_latency_s"] / row["first_token_latency_s"], 2)
        results[str(checkpoint)] = rows
        print_variants(checkpoint, rows, sizes)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="S1", help=f"one of {', '.join(P.SHAPES)} (bench/peer_models.py)")
    ap.add_argument("--steps", type=int, default=3, help="timed calls per model and batch size")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--connector", default="both", help="attention_pool_2x2, mlp or both (molmini's connector)")
    ap.add_argument("--batch-sizes", default="", help="comma-separated (default: the shape's, e.g. 1,16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, OMP_NUM_THREADS)")
    ap.add_argument("--json", default="", metavar="OUT", help="merge the figures into this JSON file")
    ap.add_argument("--key", default="", help="the key in --json (default: generate/SHAPE, or "
                    "generate/checkpoints with --checkpoint)")
    ap.add_argument("--checkpoint", action="append", default=[], help="a trained checkpoint folder (repeat for "
                    "several): measure its --variants on held-out images instead of the shape's random models")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"with --checkpoint: fp32 and any of "
                    f"{', '.join(VARIANTS)} (int8-weight: torchao's, a candidate not offered; needs torchao)")
    ap.add_argument("--test-dir", default="data/charts/test", help="with --checkpoint: held-out shards")
    ap.add_argument("--train-dir", default="data/charts/train", help="with --checkpoint: the training shards "
                    "(the majority baseline)")
    ap.add_argument("--limit", type=int, default=0, help="with --checkpoint: the first N held-out questions (0: all)")
    ap.add_argument("--new-tokens", type=int, default=16, help="with --checkpoint: new tokens per timed call")
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0, help="with --checkpoint: the most points of "
                    "held-out accuracy a kept variant may lose")
    args = ap.parse_args(argv)
    if args.checkpoint:
        sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [1, 16]
        if args.threads:
            torch.set_num_threads(args.threads)
        load_start = load_average()
        torch.manual_seed(0)
        result = {"benchmark": "generate_throughput/checkpoints", "device": "cpu", "new_tokens": args.new_tokens,
                  "steps": args.steps, "warmup": args.warmup, "test_dir": args.test_dir,
                  "checkpoints": checkpoint_variants(args, sizes), "machine": machine(),
                  "load_average_start": load_start, "load_average_end": load_average(),
                  "command": "python bench/generate_throughput.py "
                             + " ".join(argv if argv is not None else sys.argv[1:])}
        if args.json:
            merge_into(args.json, args.key or "generate/checkpoints", result)
        return result
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
