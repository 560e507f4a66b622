"""Packing (molmini/data/packing.py): records packed into one sequence compute what they compute alone."""
from __future__ import annotations

import json
import random

import pytest
import torch

from tests.helpers import make_records, tiny_config


def test_rows_hold_every_sample_once_within_capacity():
    rng = random.Random(0)
    from molmini.data.packing import pack_rows
    for _ in range(50):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 20))]
        rows = pack_rows(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        # first-fit decreasing never needs more than 11/9 OPT + 1 rows; at least it beats one row each
        assert len(rows) <= max(1, len(lengths))
    assert pack_rows([70, 10], 64) == [[0], [1]]  # a sample over capacity rides alone
    assert pack_rows([30, 30, 30], 64) == [[0, 1], [2]]


def per_record_losses(model, processor, samples, packed: bool):
    """Each record's loss sum, from one forward per record whose labels are kept and all others cleared."""
    from molmini.data.packing import pack_samples
    from molmini.model.loss import IGNORE_INDEX
    sums = []
    for keep in range(len(samples)):
        cleared = [dict(s, labels=s["labels"] if i == keep else [IGNORE_INDEX] * len(s["labels"]))
                   for i, s in enumerate(samples)]
        rows = pack_samples(cleared, 10_000) if packed else cleared
        batch = processor.collate(rows)
        batch.pop("keys")
        sums.append(model(**batch, return_logits=False)["loss_sum"].item())
    return sums


def test_packed_records_give_their_unpacked_losses_and_gradients(tiny_model):
    from molmini.data.packing import pack_samples
    processor = tiny_model.processor
    samples = [processor.process_record(r) for r in make_records(5, seed=2)]
    packed = pack_samples(samples, 10_000)
    assert len(packed) == 1 and packed[0]["segment_ids"][-1] == 5
    assert per_record_losses(tiny_model, processor, samples, True) == pytest.approx(
        per_record_losses(tiny_model, processor, samples, False), rel=1e-5)

    grads = []
    for rows in (samples, packed):
        tiny_model.zero_grad()
        batch = processor.collate(rows)
        batch.pop("keys")
        out = tiny_model(**batch, return_logits=False)
        out["loss_sum"].backward()
        grads.append({n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None})
        tokens = int(out["num_loss_tokens"])
    assert tokens == sum(sum(1 for l in s["labels"][1:] if l != -100) for s in samples)  # normaliser unchanged
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6) for n in grads[0])


def test_masked_multi_annotation_samples_are_refused():
    from molmini.data.packing import pack_samples
    with pytest.raises(ValueError, match="multi_annotation=turns"):
        pack_samples([{"input_ids": [1], "labels": [1], "segment_ids": [0]}], 8)


def test_a_packed_run_trains_the_same_records_in_fuller_rows(tmp_path):
    from data_pipelines.shards import ShardWriter
    from molmini.train.loop import train
    for split in ("train", "test"):
        with ShardWriter(tmp_path / split, generator="test", maxcount=8) as w:
            for i, r in enumerate(make_records(16)):
                if i % 3:  # records of one and of two question/answer pairs: unpacked rows are part padding
                    r.messages = r.messages[:2]
                w.write(r)
    logs = {}
    for packing in ("false", "true"):
        cfg = tiny_config(f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}",
                          "data.synth=null", "data.num_workers=0", "data.shuffle_buffer=0", "train.batch_size=8",
                          "train.log_every=1", "train.trackers=[]", "train.max_steps=3", f"data.packing={packing}")
        summary = train(cfg, tmp_path / f"run-{packing}")
        assert summary["samples"] == 24
        logs[packing] = [json.loads(l) for l in (tmp_path / f"run-{packing}" / "train_log.jsonl").read_text().splitlines()]
    assert all(p["padding_fraction"] < u["padding_fraction"] for p, u in zip(logs["true"], logs["false"]))
    # the same records, so the first step (same weights) has the same loss
    assert logs["true"][0]["loss"] == pytest.approx(logs["false"][0]["loss"], rel=1e-4)
