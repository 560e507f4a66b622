"""A few optimizer steps of the tiny model under FSDP2 (PyTorch's `fully_shard`), sharded the way
configs/accelerate/fsdp.yaml asks: each block class it names is its own shard unit, then the whole model.
Run under `accelerate launch --multi_gpu --num_processes 2 tests/helpers/fsdp_step.py OUT.pt` (gloo on a CPU host)
it writes the losses and the gathered weights to OUT.pt; tests/train/test_loop.py compares them with one
process's unsharded run over the same global batches.

accelerate's own FSDP path needs an accelerator (on a CPU host its launcher falls back to DDP), so this applies
`fully_shard` itself, as accelerate's `fsdp2_prepare_model` does, and trains through the loop's own
`accumulate_gradients`, gradient clipping and AdamW."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

from molmini.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from molmini.model.vlm import MolminiModel  # noqa: E402
from molmini.train.accelerator import make_accelerator  # noqa: E402
from molmini.train.loop import accumulate_gradients  # noqa: E402
from tests.helpers import ROOT, corpus, make_records, tiny_config  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 4


def shard_unit_classes() -> list[str]:
    fsdp = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    return fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")


def fully_shard_model(model: torch.nn.Module, world: int) -> int:
    """Shard each block of the configured classes, then the rest of the model; returns the blocks sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world,))
    names = shard_unit_classes()
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return len(blocks)


def batches(processor, rank: int, world: int, accum: int) -> list[list[dict[str, torch.Tensor]]]:
    """Each step's micro-batches for this process: a global batch of 8 records, split over the processes,
    then over `accum` micro-batches; half the records have one question, half two, so the token counts differ."""
    steps = []
    for step in range(STEPS):
        records = make_records(GLOBAL_BATCH, seed=10 + step)
        for r in records[GLOBAL_BATCH // 2:]:
            r.messages = r.messages[:2]
        per_rank = GLOBAL_BATCH // world
        mine = records[rank * per_rank:(rank + 1) * per_rank]
        per_micro = per_rank // accum
        micro = []
        for i in range(accum):
            batch = processor.collate([processor.process_record(r, r.messages)
                                       for r in mine[i * per_micro:(i + 1) * per_micro]])
            batch.pop("keys")
            micro.append(batch)
        steps.append(micro)
    return steps


def train(accelerator, shard: bool, accum: int = 1) -> dict:
    """Losses and the full weights after STEPS steps of AdamW with the loop's clipping."""
    torch.manual_seed(0)
    model = MolminiModel(tiny_config().model, train_bpe_tokenizer(corpus(), vocab_size=300)).train()
    processor = model.processor
    sharded_blocks = fully_shard_model(model, accelerator.num_processes) if shard else 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, norms = [], []
    for micro in batches(processor, accelerator.process_index, accelerator.num_processes, accum):
        loss, _ = accumulate_gradients(model, micro, accelerator)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
    weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
               for n, p in model.named_parameters()}
    sharded = [n for n, p in model.named_parameters() if hasattr(p, "full_tensor")]
    return {"losses": losses, "norms": norms, "weights": weights, "sharded_parameters": len(sharded),
            "sharded_blocks": sharded_blocks}


if __name__ == "__main__":
    acc = make_accelerator(tiny_config("train.trackers=[]"))
    results = {accum: train(acc, shard=True, accum=accum) for accum in (1, 2)}
    if acc.is_main_process:
        torch.save({**results, "world": acc.num_processes}, sys.argv[1])
    acc.wait_for_everyone()
    acc.end_training()
