"""Multi-annotation sequences: all pairs of a record in one sequence, as turns or with Molmo's masking."""
from __future__ import annotations

import torch

from molmini.data.processor import IGNORE_INDEX
from molmini.data.records import Record
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config


def masked_model(tokenizer):
    torch.manual_seed(0)
    return MolminiModel(tiny_config("model.multi_annotation=masked", "model.image.max_crops=2").model,
                        tokenizer).eval()


def one_pair(record: Record, k: int) -> Record:
    return Record(key=record.key, image=record.image, messages=record.messages[2 * k:2 * k + 2])


def run(model, records):
    batch = model.processor.collate([model.processor.process_record(r) for r in records])
    with torch.no_grad():
        return batch, model(**batch)["logits"]


def test_each_masked_answer_sees_only_the_image_and_its_question(tokenizer):
    model = masked_model(tokenizer)
    record = make_records(1)[0]
    batch, logits = run(model, [record])
    seg = batch["segment_ids"][0]
    assert set(seg.tolist()) == {0, 1, 2}
    # the second pair, scored inside the packed sequence, equals the same pair as a one-question prompt
    alone_batch, alone = run(model, [one_pair(record, 1)])
    second = seg == 2
    n = int(second.sum())
    prefix = int((seg == 0).sum())
    assert torch.equal(batch["input_ids"][0, second], alone_batch["input_ids"][0, prefix:prefix + n])
    assert torch.equal(batch["position_ids"][0, second], torch.arange(prefix, prefix + n))
    torch.testing.assert_close(logits[0, second], alone[0, prefix:prefix + n], atol=1e-5, rtol=1e-5)
    # and changing the first pair's answer changes nothing in the second pair
    changed = Record(key="x", image=record.image, messages=[record.messages[0], {"role": "assistant", "content": "purple"},
                                                             *record.messages[2:]])
    batch2, logits2 = run(model, [changed])
    second2 = batch2["segment_ids"][0] == 2
    torch.testing.assert_close(logits[0, second], logits2[0, second2], atol=1e-5, rtol=1e-5)


def test_masked_labels_are_the_answers_and_batches_pad(tokenizer):
    model = masked_model(tokenizer)
    records = make_records(3)
    records[1] = one_pair(records[1], 0)  # a shorter sequence gets padded
    batch, logits = run(model, records)
    assert torch.isfinite(logits).all()
    for row, record in enumerate(records):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        expected = []
        for answer in record.messages[1::2]:
            expected += model.processor._text(answer["content"]) + [model.processor.stop_token_id]
        assert labelled == expected
    assert (batch["segment_ids"][1][batch["attention_mask"][1] == 0] == -1).all()
    out = model(**batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_turns_let_later_answers_see_earlier_pairs(tokenizer):
    torch.manual_seed(0)
    model = MolminiModel(tiny_config().model, tokenizer).eval()
    record = make_records(1)[0]
    changed = Record(key="x", image=record.image, messages=[record.messages[0], {"role": "assistant", "content": "purple"},
                                                             *record.messages[2:]])
    batch, logits = run(model, [record])
    batch2, logits2 = run(model, [changed])
    assert "segment_ids" not in batch
    assert not torch.allclose(logits[0, -3:], logits2[0, -3:])
