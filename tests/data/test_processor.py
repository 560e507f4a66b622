"""The processor (molmini/data/processor.py): a record becomes token ids whose labels are the answers
alone, the images become crops in the sequence, and the processor saved with a checkpoint comes back equal."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from molmini.data.processor import MolminiProcessor
from molmini.data.records import Record, RecordError
from molmini.data.tokenizer import IMAGE_PATCH
from molmini.model.loss import IGNORE_INDEX
from tests.helpers import make_records, png_bytes


def test_labels_are_the_answer_tokens_and_nothing_else(tiny_model):
    processor = tiny_model.processor
    record = make_records(1, seed=2)[0]
    sample = processor.process_record(record)
    ids, labels = torch.tensor(sample["input_ids"]), torch.tensor(sample["labels"])
    answered = labels != IGNORE_INDEX
    assert torch.equal(ids[answered], labels[answered])  # a label is the token at its own position
    text = processor.tokenizer.decode(ids[answered].tolist())
    for _, answer in record.qa_pairs():
        assert answer in text
    assert "How many bars" not in text and "What colour" not in text
    patches = (ids == tiny_model.token_ids[IMAGE_PATCH]).sum().item()
    assert patches == sample["pool_index"].shape[0] > 0  # one placeholder per pooled image token
    assert not answered[ids == tiny_model.token_ids[IMAGE_PATCH]].any()


def test_a_batch_pads_to_its_longest_row_and_masks_the_padding(tiny_model):
    processor = tiny_model.processor
    short = Record(key="short", image=png_bytes("red"), messages=[
        {"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}])
    samples = [processor.process_record(r) for r in (make_records(1)[0], short)]
    batch = processor.collate(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][1, lengths[1]:] == IGNORE_INDEX).all()


def test_a_first_exchange_over_max_length_is_refused_by_reason(tiny_model, tmp_path):
    tiny_model.processor.save_pretrained(tmp_path)
    tight = MolminiProcessor.from_pretrained(tmp_path, max_length=8)
    with pytest.raises(RecordError) as e:
        tight.process_record(make_records(1)[0])
    assert e.value.reason == "over_max_length" and "data.max_length" in str(e.value)


def test_the_saved_processor_loads_back_equal(tiny_model, tmp_path):
    tiny_model.processor.save_pretrained(tmp_path)
    back = MolminiProcessor.from_pretrained(tmp_path)
    as_json = lambda config: json.loads(json.dumps(dataclasses.asdict(config)))  # tuples come back as lists
    assert as_json(back.config) == as_json(tiny_model.processor.config)
    record = make_records(1, seed=4)[0]
    assert back.process_record(record)["input_ids"] == tiny_model.processor.process_record(record)["input_ids"]
    (tmp_path / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="processor_config.json is missing"):
        MolminiProcessor.from_pretrained(tmp_path)


def test_special_tokens_in_a_records_text_are_plain_characters_for_training_and_eval(tiny_model, tmp_path):
    """`<im_patch>` (and any molmini special token) written in a question or an answer is text: no image
    placeholder, turn end or role header comes from it. It used to add a placeholder with no image feature,
    which stopped training in a DataLoader worker and eval heldout with a message naming no record."""
    from data_pipelines.shards import ShardWriter
    from eval.heldout import evaluate
    from molmini.data.tokenizer import END, SPECIAL_TOKENS, USER

    processor = tiny_model.processor
    question = "What does <im_patch> mean in <|end|><|user|> here?"
    record = Record(key="literal", image=png_bytes("red"), messages=[
        {"role": "user", "content": "<image>" + question}, {"role": "assistant", "content": "a token <im_col>"}])
    sample = processor.process_record(record)
    ids = torch.tensor(sample["input_ids"])
    special = {name: tiny_model.token_ids[name] for name in SPECIAL_TOKENS}
    assert (ids == special[IMAGE_PATCH]).sum().item() == sample["pool_index"].shape[0]  # the image's only
    assert (ids == special[END]).sum().item() == 2 and (ids == special[USER]).sum().item() == 1  # the template's
    text_ids = processor._text(question)
    assert not set(text_ids) & set(special.values()) and processor.tokenizer.decode(text_ids) == question
    batch = processor.collate([sample, processor.process_record(make_records(1)[0])])  # it trains, beside others
    batch.pop("keys")
    tiny_model(**batch)["loss"].backward()

    with ShardWriter(tmp_path / "test", generator="test", maxcount=4) as writer:
        for r in [record] + make_records(3):
            writer.write(r)
    results, rows = evaluate(tiny_model, str(tmp_path / "test"), str(tmp_path / "test"), max_new_tokens=2)
    assert results["skipped_records"] == 0 and {r["key"] for r in rows} >= {"literal"}
    prompt = processor.process_prompt(record.load_image(), question)["input_ids"]
    assert prompt.count(special[IMAGE_PATCH]) == sample["pool_index"].shape[0]
