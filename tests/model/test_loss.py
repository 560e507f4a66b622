"""The answer-only loss (molmini/model/loss.py): the LM head runs at answer positions only, in checkpointed chunks,
and gives the same loss and gradients as the plain full-vocabulary computation."""
import torch
import torch.nn.functional as F

from molmini.model.loss import IGNORE_INDEX, answer_loss_sum, count_loss_tokens
from tests.helpers import make_records
from tests.model.test_model import batch_of


def plain_loss_sum(hidden, labels, head):
    logits = head(hidden)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def random_case(seed: int, batch=3, length=40, width=16, vocab=300, answer_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, width, generator=g, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[torch.rand(batch, length, generator=g) > answer_fraction] = IGNORE_INDEX
    head = torch.nn.Linear(width, vocab, bias=True).double()
    return hidden, labels, head


def grads(fn, hidden, labels, head):
    h = hidden.clone().requires_grad_(True)
    for p in head.parameters():
        p.grad = torch.zeros_like(p)
    loss = fn(h, labels, head)
    loss.backward()
    return loss.detach(), h.grad, head.weight.grad.clone(), head.bias.grad.clone()


def test_loss_and_gradients_match_the_plain_computation_for_any_chunking():
    for seed in range(3):
        hidden, labels, head = random_case(seed)
        expected = grads(plain_loss_sum, hidden, labels, head)
        for chunk in (1, 7, 1024):  # many chunks, a ragged last chunk, one chunk
            got = grads(lambda h, l, m: answer_loss_sum(h, l, m, chunk_tokens=chunk), hidden, labels, head)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-7)


def test_no_answer_tokens_gives_zero_loss_and_zero_gradient():
    hidden, labels, head = random_case(0)
    labels[:] = IGNORE_INDEX
    loss, hidden_grad, weight_grad, _ = grads(answer_loss_sum, hidden, labels, head)
    assert loss.item() == 0 and count_loss_tokens(labels).item() == 0
    assert not hidden_grad.any() and not weight_grad.any()


def test_the_last_position_never_carries_loss():
    hidden, labels, head = random_case(1)
    base = answer_loss_sum(hidden, labels, head)
    moved = hidden.clone()
    moved[:, -1] += 100.0  # the last position predicts no token: its hidden state must not matter
    assert torch.equal(answer_loss_sum(moved, labels, head), base)


def test_model_loss_without_logits_equals_the_loss_from_full_logits(tiny_model):
    batch = batch_of(tiny_model, make_records(3))
    full = tiny_model(**batch)
    lean = tiny_model(**batch, return_logits=False)
    assert "logits" not in lean
    manual = F.cross_entropy(full["logits"][:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                             ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(lean["loss_sum"], manual, rtol=1e-5, atol=1e-5)
    lean["loss"].backward()
    lean_grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    (manual / full["num_loss_tokens"]).backward()
    for n, p in tiny_model.named_parameters():
        if n in lean_grads:
            torch.testing.assert_close(lean_grads[n], p.grad, rtol=1e-4, atol=1e-6)
