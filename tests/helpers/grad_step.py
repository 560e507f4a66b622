"""One optimizer step's gradients through the training loop's own `accumulate_gradients`, for a fixed
global batch of 8 records split over the processes and `accum` micro-batches. Run under
`accelerate launch --multi_gpu --num_processes 2 tests/helpers/grad_step.py OUT.pt` (gloo on a CPU host) it
writes the main process's (synchronised) gradients to OUT.pt; tests/train/test_loop.py compares them
with one process's."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

from molmini.data.tokenizer import train_bpe_tokenizer  # noqa: E402
from molmini.model.vlm import MolminiModel  # noqa: E402
from molmini.train.accelerator import make_accelerator  # noqa: E402
from molmini.train.loop import accumulate_gradients  # noqa: E402
from tests.helpers import corpus, make_records, tiny_config  # noqa: E402

GLOBAL_BATCH = 8


def global_batch():
    """8 records; the first half has two questions each, the second one, so the processes' loss-token
    counts differ and averaging per process would weigh tokens unequally."""
    records = make_records(GLOBAL_BATCH, seed=3)
    for r in records[GLOBAL_BATCH // 2:]:
        r.messages = r.messages[:2]
    return records


def gradients(accelerator, accum: int) -> tuple[dict[str, torch.Tensor], int, float]:
    """(gradients by parameter name, this process's loss tokens, global loss) after one step."""
    torch.manual_seed(0)
    model = MolminiModel(tiny_config().model, train_bpe_tokenizer(corpus(), vocab_size=300)).train()
    processor = model.processor
    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = GLOBAL_BATCH // world
    mine = global_batch()[rank * per_rank:(rank + 1) * per_rank]
    per_micro = per_rank // accum
    micro_batches = []
    for i in range(accum):
        batch = processor.collate([processor.process_record(r, r.messages) for r in mine[i * per_micro:(i + 1) * per_micro]])
        batch.pop("keys")
        micro_batches.append({k: v.to(accelerator.device) for k, v in batch.items()})
    model = accelerator.prepare(model)
    loss, _ = accumulate_gradients(model, micro_batches, accelerator)
    tokens = int(sum((b["labels"][:, 1:] != -100).sum() for b in micro_batches))
    grads = {n: p.grad.detach().cpu().clone() for n, p in accelerator.unwrap_model(model).named_parameters()}
    return grads, tokens, loss.item()


if __name__ == "__main__":
    from accelerate.utils import gather_object
    acc = make_accelerator(tiny_config("train.trackers=[]"))
    results = {}
    for accum in (1, 2):
        grads, tokens, loss = gradients(acc, accum)
        results[accum] = {"grads": grads, "tokens": gather_object([tokens]), "loss": loss}
    if acc.is_main_process:
        torch.save({**results, "world": acc.num_processes}, sys.argv[1])
    acc.wait_for_everyone()
    acc.end_training()
