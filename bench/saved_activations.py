"""Where a training step's activation memory goes: the bytes autograd saves for backward in one training
forward, per component, for molmini (each connector) and transformers' LLaVA at equal shape.

    python bench/saved_activations.py [--shape S2] [--batch 8] [KIND ...]   (KIND: mlp, attention_pool_2x2,
                                                                             pixel_shuffle, llava)

Each saved tensor is counted once by its storage, under the innermost module running when autograd saved
it (up to three levels deep); parameters and buffers are left out (they are resident anyway), and so is
what activation checkpointing recomputes instead of keeping. This is the part of the step's peak memory
that the model's design decides; bench/train_throughput.py measures the whole peak.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer_models as P  # noqa: E402
import train_throughput as TT  # noqa: E402


def saved_bytes(kind: str, shape: P.Shape, batch: int) -> collections.Counter:
    """Bytes saved for backward by one training forward of `kind`, by component."""
    torch.manual_seed(0)
    c = TT.build_contender(kind, shape, torch.device("cpu"), batch)
    resident = {t.untyped_storage().data_ptr() for t in list(c.model.parameters()) + list(c.model.buffers())}
    seen, per, running = set(resident), collections.Counter(), ["(outside modules)"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            per[running[-1]] += storage.nbytes()
        return t

    def enter(name: str):
        return lambda module, args: running.append(name)

    def leave(module, args, output) -> None:  # a forward hook that returned a value would replace the output
        running.pop()

    hooks = []
    for name, module in c.model.named_modules():
        if name and name.count(".") <= 2:
            hooks += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c.model(**c.batch) if c.peer else c.model(**c.batch, return_logits=False)
    for hook in hooks:
        hook.remove()
    grouped = collections.Counter()
    for name, n in per.items():
        grouped[".".join(name.split(".")[:2])] += n
    return grouped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kinds", nargs="*", default=["mlp", "attention_pool_2x2", P.PEER])
    ap.add_argument("--shape", default="S2")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = P.get_shape(args.shape)
    totals = {}
    for kind in args.kinds:
        grouped = saved_bytes(kind, shape, args.batch)
        totals[kind] = sum(grouped.values())
        print(f"{kind} at {args.shape}, batch {args.batch}: {totals[kind] / 2**20:.0f} MiB saved for backward")
        for name, n in grouped.most_common():
            if n >= 2**20 / 10:
                print(f"  {name:44s} {n / 2**20:8.1f} MiB")
    if P.PEER in totals:
        for kind, total in totals.items():
            if kind != P.PEER:
                print(f"{kind}: {total / totals[P.PEER]:.2f}x {P.PEER}'s saved activations")


if __name__ == "__main__":
    main()
