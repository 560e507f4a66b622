"""Records with no image (LLaVA's text-only conversations) and with several images: written to shards and
read back (one-image records exactly as before), processed into zero or several crop sets, trained through
the model with finite loss and gradients, and evaluated."""
from __future__ import annotations

import json

import pytest
import torch

from data_pipelines.shards import ShardWriter
from molmini.data.reader import BadRecords, find_shards, read_records
from molmini.data.records import Record
from molmini.data.tokenizer import IMAGE_START
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, png_bytes, tiny_config


def text_only(key: str = "t0") -> Record:
    return Record(key=key, image=None, source="llava", task="instruct", messages=[
        {"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "red blue"},
        {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "green"}])


def two_images(key: str = "m0", markers: bool = True) -> Record:
    question = "<image> and <image>: which has more bars?" if markers else "Which has more bars?"
    return Record(key=key, image=png_bytes("red", bars=1), extra_images=[(png_bytes("blue", bars=3), "png")],
                  messages=[{"role": "user", "content": question}, {"role": "assistant", "content": "3"}])


def write(folder, records):
    with ShardWriter(folder, generator="test", maxcount=4) as writer:
        for record in records:
            writer.write(record)
    return find_shards(folder)


# ---- the record format -------------------------------------------------------------------------------

def test_one_image_records_are_written_exactly_as_before():
    record = make_records(1)[0]
    sample = record.to_sample()
    assert sorted(sample) == ["__key__", "json", "png"]
    assert json.loads(sample["json"]) == {"messages": record.messages, "source": "test", "task": "toy",
                                          "meta": {"qa_types": ["colour", "count"]}}


def test_text_only_and_multi_image_records_round_trip_through_shards(tmp_path):
    records = [make_records(1)[0], text_only(), two_images()]
    assert sorted(records[1].to_sample()) == ["__key__", "json"]
    assert sorted(records[2].to_sample()) == ["1.png", "__key__", "json", "png"]
    bad = BadRecords()
    back = list(read_records(write(tmp_path, records), bad))
    assert back == records and bad.total == 0
    assert [r.num_images for r in back] == [1, 0, 2]
    assert [im.getpixel((3, 30)) for im in back[2].load_images()] == [(255, 0, 0), (0, 0, 255)]


def test_a_lost_image_member_is_an_error_not_a_text_only_record():
    one, two = make_records(1)[0].to_sample(), two_images().to_sample()
    for sample, dropped in ((one, "png"), (two, "1.png"), (two, "png")):
        cut = {k: v for k, v in sample.items() if k != dropped}
        with pytest.raises(ValueError) as err:
            Record.from_sample(cut)
        assert err.value.reason == "missing_member"
    with pytest.raises(ValueError, match="is text-only"):
        text_only().load_image()


# ---- processor and model -----------------------------------------------------------------------------

@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    return MolminiModel(tiny_config("model.image.max_crops=2").model, tokenizer, max_length=512).train()


def image_blocks(model, ids) -> int:
    return int((torch.as_tensor(ids) == model.token_ids[IMAGE_START]).sum())


def test_a_text_only_record_has_zero_crops_and_no_image_tokens(model):
    sample = model.processor.process_record(text_only())
    assert sample["pixel_values"].shape == (0, 3, 32, 32) and sample["pool_index"].shape[0] == 0
    assert image_blocks(model, sample["input_ids"]) == 0
    assert sum(label != -100 for label in sample["labels"]) > 0  # its answers are trained on


@pytest.mark.parametrize("markers", [True, False])
def test_a_two_image_record_gets_both_images_at_their_markers_or_first(model, markers):
    sample = model.processor.process_record(two_images(markers=markers))
    one = model.processor.process_image(make_records(1)[0].load_image())
    assert image_blocks(model, sample["input_ids"]) == 2 * image_blocks(model, one["image_tokens"])
    assert sample["pixel_values"].shape[0] == 2 * one["pixel_values"].shape[0]


def finite_step(model, records):
    """One forward/backward through the model on a collated batch: the loss and every parameter's gradient."""
    model.zero_grad()
    batch = model.processor.collate([model.processor.process_record(r) for r in records])
    batch.pop("keys")
    out = model(**batch, return_logits=False)
    out["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("multi_annotation", ["turns", "masked"])
def test_a_batch_mixing_text_only_and_image_samples_trains(tokenizer, multi_annotation):
    torch.manual_seed(0)
    model = MolminiModel(tiny_config("model.image.max_crops=2", f"model.multi_annotation={multi_annotation}").model,
                         tokenizer, max_length=512).train()
    out, grads = finite_step(model, [text_only(), make_records(1)[0], two_images()])
    assert torch.isfinite(out["loss"]) and out["num_loss_tokens"] > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["connector.mlp.down.weight"].abs().sum() > 0  # the image samples reach the connector


def test_a_whole_batch_without_images_trains_and_keeps_every_parameter_in_the_graph(model):
    out, grads = finite_step(model, [text_only("a"), text_only("b")])
    assert torch.isfinite(out["loss"])
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]  # DDP needs them
    assert all((g == 0).all() for n, g in grads.items() if n.startswith(("vision.", "connector.", "pad_embed")))
    assert grads["lm.model.embed_tokens.weight"].abs().sum() > 0


def test_a_text_only_sample_answers_the_same_alone_and_beside_images(model):
    model.eval()
    proc = model.processor
    alone = proc.collate([proc.process_record(text_only())])
    mixed = proc.collate([proc.process_record(r) for r in (text_only(), two_images())])
    with torch.no_grad():
        logits_alone = model(**{k: v for k, v in alone.items() if k != "keys"})["logits"][0]
        logits_mixed = model(**{k: v for k, v in mixed.items() if k != "keys"})["logits"][0, :logits_alone.shape[0]]
    torch.testing.assert_close(logits_mixed, logits_alone, rtol=1e-4, atol=1e-5)


def test_generation_with_no_image_and_with_several(model):
    image = make_records(1)[0].load_image()
    answers = model.generate([None, [image, image], image], ["Write a haiku.", "<image><image>Same?", "Colour?"],
                             max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert model.generate([None], ["Write a haiku."], max_new_tokens=3) == answers[:1]  # batched = alone
    assert model.chat(None, "Write a haiku.", max_new_tokens=3) == answers[0]


# ---- the training loop and held-out evaluation -------------------------------------------------------

def test_training_and_heldout_evaluation_on_shards_that_mix_all_three(tmp_path, tokenizer):
    from eval.heldout import evaluate
    from molmini.train.loop import train

    mixed = make_records(6) + [text_only(f"t{i}") for i in range(3)] + [two_images(f"m{i}") for i in range(3)]
    for split in ("train", "test"):
        write(tmp_path / split, mixed)
    cfg = tiny_config(f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}", "data.synth=null",
                      "data.num_workers=0", "data.shuffle_buffer=0", "train.batch_size=4", "train.log_every=1",
                      "train.trackers=[]", "optim.warmup_steps=0", "train.max_steps=6", "data.max_length=512",
                      "model.image.max_crops=2", "train.eval_every=3", "train.eval_batches=2")
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 6 and summary["skipped_records"] == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)

    trained = MolminiModel.from_pretrained(tmp_path / "run" / "checkpoint")
    results, rows = evaluate(trained, str(tmp_path / "test"), str(tmp_path / "train"), max_new_tokens=2)
    assert results["skipped_records"] == 0
    assert {row["key"] for row in rows} == {r.key for r in mixed}  # every record, whatever its images


def test_curation_keeps_text_only_records_and_every_image_of_a_trimmed_record(tmp_path):
    from data_pipelines.curate import EvalSet, HammingIndex, curate, standard_filters

    evals = EvalSet(hashes=HammingIndex(16), qa_pairs={("another", "green")})  # the text-only record's 2nd pair
    pair = two_images()
    pair.messages += [{"role": "user", "content": "Another?"}, {"role": "assistant", "content": "green"}]
    records = [text_only("a"), text_only("b"), pair, make_records(1)[0]]
    kept, report = curate(records, standard_filters(evals=evals))
    kept = list(kept)
    assert [r.key for r in kept] == ["a", "b", "m0", records[3].key] and report.kept == 4
    assert kept[2].images == pair.images and len(kept[2].messages) == 2  # trimmed, both images kept
    assert kept[0].image is None and len(kept[0].messages) == 2
