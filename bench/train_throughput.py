"""Training-step throughput: molmini against transformers' LlavaForConditionalGeneration at equal shape.

    OMP_NUM_THREADS=2 python bench/train_throughput.py --shape S2 --steps 5 --warmup 1 --json out.json
    python bench/train_throughput.py --shape H100 --compile --json out.json        # on a GPU: bf16 autocast
    python bench/train_throughput.py --shape S2 --connector mlp --steps 0 --profile profile.txt

One process builds molmini with each connector asked for and LLaVA (bench/peer_models.py), then runs their
training steps in turn, one step each per round with the order rotating, so load from other work on the
machine hits all alike. A step is what each trains with: molmini's `model(**batch, return_logits=False)` with
the answer-only loss (molmini/model/loss.py), LLaVA's own forward with labels (full logits); then backward, gradient
clipping to 1.0 and AdamW. Figures: samples/s and LM tokens/s from the median step, peak memory, the ratio to
LLaVA (of medians, and the median of each round's ratio: steps seconds apart share the machine's load), and on a
GPU MFU (FLOPs as ../shared/reference/peer_throughput.md counts them, bench/peer_models.py).

Peak memory: on a GPU, the model's weights and optimizer state plus the most `torch.cuda` allocated during its
step above what was allocated before it. On the CPU, in a fresh subprocess per model: the peak resident set
(VmHWM, reset after the model is built) over the process before the model was built (`peak_memory_mib`:
weights, gradients, optimizer state, activations, allocator slack), and over the process once the model,
optimizer and batch exist (`step_peak_mib`: gradients, AdamW's moments, made at the first step, activations).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_models as P  # noqa: E402
from results_file import load_average, machine, merge_into  # noqa: E402

from molmini.errors import run_reporting_errors  # noqa: E402
from molmini.model.language_model import enable_transformers_checkpointing  # noqa: E402
from molmini.train.cost import peak_flops, training_flops  # noqa: E402


@dataclass
class Contender:
    name: str
    model: torch.nn.Module
    batch: dict[str, Any]
    peer: bool
    flops_per_sample: float
    image_tokens: int
    optimizer: torch.optim.Optimizer | None = None
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    step_peak_bytes: int = 0

    @property
    def lm_tokens(self) -> int:
        return self.batch["input_ids"].shape[1]


def build_contender(kind: str, shape: P.Shape, device: torch.device, batch_size: int, compile_backend: str = "",
                    checkpointing: bool = False) -> Contender:
    """kind: a molmini connector name or "llava"; compile_backend: torch.compile's backend, or "" for eager;
    checkpointing: activation checkpointing of every block (molmini's `train.gradient_checkpointing`, LLaVA's
    own `gradient_checkpointing_enable`). The weights are initialised on `device` (much faster on a GPU); the
    batch is built on the CPU."""
    if kind == P.PEER:
        with device:
            model = P.build_llava(shape)
        batch = P.llava_batch(model, shape, batch_size)
        image_tokens = int((batch["input_ids"][0] == model.config.image_token_index).sum())
        flops = P.llava_flops(model, shape, batch["input_ids"].shape[1], image_tokens)
    else:
        with device:
            model = P.build_molmini(shape, kind)
        batch = P.molmini_batch(model, shape, batch_size)
        image_tokens = batch["pool_index"].shape[0] // batch_size
        flops = P.molmini_flops(model, shape, batch["input_ids"].shape[1], image_tokens)
    model.to(device)
    if checkpointing:
        enable_transformers_checkpointing(model) if kind == P.PEER else model.enable_gradient_checkpointing()
    if compile_backend:
        model.compile(backend=compile_backend)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **fused)
    name = P.PEER if kind == P.PEER else f"molmini {kind}"
    return Contender(name, model, P.to_device(batch, device), kind == P.PEER, flops, image_tokens, optimizer)


def train_step(c: Contender, autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    with autocast():
        out = c.model(**c.batch) if c.peer else c.model(**c.batch, return_logits=False)
    loss = out.loss if c.peer else out["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(c.model.parameters(), 1.0)
    c.optimizer.step()
    c.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def autocast_for(device: torch.device, dtype: str) -> Callable[[], contextlib.AbstractContextManager]:
    if dtype == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def resident_bytes(c: Contender) -> int:
    """Weights, buffers and optimizer state: what the model holds between steps."""
    tensors = {t.data_ptr(): t for t in list(c.model.parameters()) + list(c.model.buffers())}
    for state in c.optimizer.state.values():
        tensors.update({t.data_ptr(): t for t in state.values() if isinstance(t, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def run_rounds(contenders: list[Contender], rounds: int, warmup: int, device: torch.device, autocast) -> None:
    """One step of each contender per round, the order rotating by one each round; rounds past `warmup`
    are timed (and, on a GPU, their peak memory measured)."""
    cuda = device.type == "cuda"
    for r in range(warmup + rounds):
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            loss = train_step(c, autocast)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if r >= warmup:
                c.times.append(seconds)
                c.losses.append(float(loss))
                if cuda:
                    c.step_peak_bytes = max(c.step_peak_bytes, torch.cuda.max_memory_allocated() - before)


# ---- peak memory on the CPU: one fresh process per model ---------------------------------------------------

def _proc_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


def memory_probe(shape: P.Shape, kind: str, batch_size: int, steps: int, checkpointing: bool = False
                 ) -> dict[str, Any]:
    """Peak resident memory of `steps` training steps of one model, in this (fresh) process."""
    # Both models' code is imported before the baseline, so neither's import counts as its memory.
    from transformers import CLIPVisionModel, LlamaForCausalLM, LlavaForConditionalGeneration  # noqa: F401

    from molmini.model.vlm import MolminiModel  # noqa: F401
    gc.collect()
    before_model = _proc_kib("VmRSS")
    c = build_contender(kind, shape, torch.device("cpu"), batch_size, checkpointing=checkpointing)
    gc.collect()
    built = _proc_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    for _ in range(steps):
        train_step(c, contextlib.nullcontext)
    peak = _proc_kib("VmHWM")
    return {"peak_memory_mib": round((peak - before_model) / 1024, 1), "step_peak_mib": round((peak - built) / 1024, 1),
            "weights_mib": round(P.count_params(c.model) * 4 / 2**20, 1)}


def cpu_peak_memory(shape_name: str, kind: str, batch_size: int, steps: int, checkpointing: bool = False
                    ) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--shape", shape_name, "--batch", str(batch_size), "--memory-probe", kind,
           "--steps", str(steps)] + (["--gradient-checkpointing"] if checkpointing else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": f"memory probe failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the profile: where molmini's step goes --------------------------------------------------------------

def profile_step(c: Contender, autocast, header: str, steps: int = 3) -> str:
    """`steps` profiled training steps (after one unprofiled) of a molmini contender: wall time per step by
    phase (forward per module, backward, optimizer) and the top operators by self time, as text."""
    from torch.profiler import ProfilerActivity, profile, record_function
    train_step(c, autocast)
    regions: list[Any] = []
    parts = {"vision tower": c.model.vision, "connector": c.model.connector, "LM decoder": c.model.lm.get_decoder()}
    hooks = []
    for name, module in parts.items():
        def enter(_m, _a, name=name):
            regions.append(record_function(f"forward: {name}"))
            regions[-1].__enter__()

        def leave(_m, _a, _o):
            regions.pop().__exit__(None, None, None)
        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            with record_function("forward (all)"), autocast():
                out = c.model(**c.batch, return_logits=False)
            with record_function("backward"):
                out["loss"].backward()
            with record_function("clip + AdamW"):
                torch.nn.utils.clip_grad_norm_(c.model.parameters(), 1.0)
                c.optimizer.step()
                c.optimizer.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e3 / steps for e in events
              if e.key.startswith(("forward", "backward", "clip"))}
    total = sum(v for k, v in phases.items() if k in ("forward (all)", "backward", "clip + AdamW"))
    lines = [header, f"step: {total:.0f} ms (wall time of the phases, mean of {steps} profiled steps)", ""]
    lines += [f"  {k:<28} {v:>9.0f} ms  {100 * v / total:5.1f}%" for k, v in phases.items()]
    vocab_size = c.model.lm.config.vocab_size
    vocab: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if any(isinstance(s, list) and vocab_size in s for s in e.input_shapes or []):
            vocab[e.key] = vocab.get(e.key, 0.0) + e.self_cpu_time_total / 1e3 / steps
    vocab_ms = sum(vocab.values())
    top = sorted(vocab.items(), key=lambda kv: -kv[1])[:8]
    lines += ["", f"ops with a vocabulary-sized ({vocab_size}) input (the LM head and loss at answer positions, the "
              f"embedding and its AdamW update): {vocab_ms:.0f} ms per step, {100 * vocab_ms / total:.1f}%; most: "
              + ", ".join(f"{k} {v:.0f} ms" for k, v in top)]
    lines += ["", f"operators by self CPU time, totals over the {steps} steps (forward and backward; "
              "'...Backward' rows are autograd's):", "", events.table(sort_by="self_cpu_time_total", row_limit=30)]
    print("\n".join(lines[:12]))
    return "\n".join(lines) + "\n"


# ---- the run -------------------------------------------------------------------------------------------

def summarise(c: Contender, batch_size: int, device: torch.device, memory: dict[str, Any]) -> dict[str, Any]:
    step = median(c.times)
    out = {"parameters": P.count_params(c.model), "image_tokens_per_sample": c.image_tokens,
           "lm_tokens_per_sample": c.lm_tokens, "step_s_median": round(step, 4), "step_s_mean": round(mean(c.times), 4),
           "step_s_all": [round(t, 4) for t in c.times], "samples_per_s": round(batch_size / step, 3),
           "lm_tokens_per_s": round(batch_size * c.lm_tokens / step, 1), "loss_first": round(c.losses[0], 4),
           "loss_last": round(c.losses[-1], 4), "flops_per_sample": c.flops_per_sample, **memory}
    peak = peak_flops(device)
    if peak:
        out["mfu"] = round(c.flops_per_sample * batch_size / step / peak, 4)
        out["mfu_6nt"] = round(training_flops(out["parameters"], batch_size * c.lm_tokens) / step / peak, 4)
    return out


def ratios_to_peer(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each molmini model's samples/s over LLaVA's: of the median steps, and the median and range of the
    per-round ratios (the two steps of a round are seconds apart, under the same load); memory likewise."""
    peer, ratios = models.get(P.PEER), {}
    for name, m in models.items():
        if peer is None or name == P.PEER:
            continue
        paired = sorted(p / t for p, t in zip(peer["step_s_all"], m["step_s_all"]))
        ratios[name] = {"samples_per_s": round(m["samples_per_s"] / peer["samples_per_s"], 3),
                        "samples_per_s_paired_median": round(median(paired), 3),
                        "samples_per_s_paired_range": [round(paired[0], 3), round(paired[-1], 3)]}
        for key in ("peak_memory_mib", "step_peak_mib"):
            if m.get(key) and peer.get(key):
                ratios[name][key] = round(m[key] / peer[key], 3)
    return ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="S1", help=f"one of {', '.join(P.SHAPES)} (bench/peer_models.py)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    ap.add_argument("--connector", default="both", help="attention_pool_2x2, mlp or both (molmini's connector)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the shape's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model (in place)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (aot_eager: no codegen)")
    ap.add_argument("--dtype", default="auto", help="fp32, bf16 (autocast) or auto: bf16 on a GPU, else fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, OMP_NUM_THREADS)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="activation checkpointing of every block, in every model (LLaVA's own)")
    ap.add_argument("--no-peer", action="store_true", help="molmini only (with --profile)")
    ap.add_argument("--memory-steps", type=int, default=2, help="steps of each CPU memory probe (0: no probe)")
    ap.add_argument("--profile", default="", metavar="TXT", help="also profile molmini's steps into this file")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps profiled (after one more), per connector")
    ap.add_argument("--json", default="", metavar="OUT", help="merge the figures into this JSON file")
    ap.add_argument("--key", default="", help="the key in --json (default: train/SHAPE[/compiled])")
    ap.add_argument("--memory-probe", default="", help=argparse.SUPPRESS)  # internal: one model's CPU memory
    args = ap.parse_args(argv)
    args.connectors = P.parse_connectors(args.connector)
    if args.dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--dtype {args.dtype!r} is unknown; choose fp32, bf16 or auto")
    args.command = "python bench/train_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    shape = P.get_shape(args.shape)
    batch_size = args.batch or shape.batch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(shape, args.memory_probe, batch_size, args.steps, args.gradient_checkpointing)))
        return None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = ("bf16" if device.type == "cuda" else "fp32") if args.dtype == "auto" else args.dtype
    autocast = autocast_for(device, dtype)
    load_start = load_average()
    torch.manual_seed(0)
    kinds = list(args.connectors) + ([] if args.no_peer else [P.PEER])
    backend = args.compile_backend if args.compile else ""
    contenders = [build_contender(k, shape, device, batch_size, backend, args.gradient_checkpointing) for k in kinds]
    result: dict[str, Any] | None = None
    if args.steps > 0:
        run_rounds(contenders, args.steps, args.warmup, device, autocast)
        models = {}
        for kind, c in zip(kinds, contenders):
            if device.type == "cuda":
                memory = {"peak_memory_mib": round((resident_bytes(c) + c.step_peak_bytes) / 2**20, 1),
                          "step_peak_mib": round(c.step_peak_bytes / 2**20, 1)}
            else:
                memory = (cpu_peak_memory(args.shape, kind, batch_size, args.memory_steps, args.gradient_checkpointing)
                          if args.memory_steps else {})
            models[c.name] = summarise(c, batch_size, device, memory)
        ratios = ratios_to_peer(models)
        result = {"benchmark": "train_throughput", "shape": P.shape_dict(shape), "batch": batch_size,
                  "device": device.type, "dtype": dtype, "compiled": backend or False,
                  "gradient_checkpointing": args.gradient_checkpointing, "steps": args.steps,
                  "warmup": args.warmup, "timing": "median step of the timed rounds (means in step_s_mean)",
                  "answer_label_fraction": {c.name: round(float((c.batch["labels"] != -100).float().mean()), 4)
                                            for c in contenders},
                  "models": models, "ratio_to_llava": ratios, "machine": machine(), "load_average_start": load_start,
                  "load_average_end": load_average(), "command": args.command}
        for name, m in models.items():
            extra = f"  MFU {m['mfu']:.1%}" if "mfu" in m else ""
            ratio = ratios.get(name, {}).get("samples_per_s_paired_median", 1)
            print(f"{name:<30} {m['samples_per_s']:>9.2f} samples/s {m['lm_tokens_per_s']:>10.0f} LM tokens/s  peak "
                  f"{m.get('peak_memory_mib', float('nan')):>8.0f} MiB{extra}  x{ratio:.2f}")
        if args.json:
            merge_into(args.json, args.key or f"train/{args.shape}" + ("/compiled" if args.compile else "")
                       + ("/checkpointed" if args.gradient_checkpointing else ""), result)
    if args.profile:
        sections = [profile_step(c, autocast, f"== molmini training step ({c.name}) at shape {shape.name}, batch "
                                 f"{batch_size}, {dtype}, {torch.get_num_threads()} threads, {machine()['date']}; "
                                 f"load average {load_average()}\n{args.command}", args.profile_steps)
                    for c in contenders if not c.peer]
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile).write_text("\n\n".join(sections))
    return result


if __name__ == "__main__":
    sys.exit(run_reporting_errors(lambda: main() and 0))  # bad input: one `error: ...` line, exit 2
