"""The reading loss (molmini/data/reading.py targets, molmini/model/reading.py head): a box in patch (i, j)
gives a target at (i, j) of every crop that sees it; the loss falls; the stage trains the tower and head
alone; the head is never saved; and with the weight at zero a run is what it was without the loss."""
from __future__ import annotations

import random

import pytest
import torch

from data_pipelines.shards import ShardWriter
from data_pipelines.synth.charts import make_chart_record
from molmini.data.crops import tile_image
from molmini.data.processor import IGNORE_INDEX
from molmini.data.reading import read_targets, token_points
from molmini.data.records import Record
from molmini.data.tokenizer import train_bpe_tokenizer
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, png_bytes, tiny_config

READING = ["model.reading.weight=1.0"]


def charts(n: int, seed: int = 0, px: int = 32) -> list[Record]:
    return [make_chart_record(random.Random(seed * 1000 + i), f"c{seed}-{i}", px) for i in range(n)]


@pytest.fixture(scope="module")
def chart_tokenizer():
    texts = [m["content"] for r in charts(40) for m in r.messages] + [b["text"] for r in charts(40) for b in
                                                                      r.meta["text_boxes"]]
    return train_bpe_tokenizer(texts, vocab_size=300)


def test_a_box_in_patch_i_j_is_a_target_at_i_j_of_the_global_view():
    from PIL import Image
    tiled = tile_image(Image.new("RGB", (64, 64), "white"), 32, 8, 0, 0)
    ids = {"Pear": [7], "42": [9, 11]}
    # "Pear" centred at (x=20, y=44) of the 64 px image: (10, 22) in the 32 px view, patch row 2, col 1
    boxes = [{"text": "Pear", "box": [16, 40, 24, 48]}, {"text": "42", "box": [0, 0, 32, 8]}]
    targets = read_targets(tiled, boxes, ids.get, no_text=0, ignore_index=IGNORE_INDEX, image_size=32, patch_size=8)
    assert targets.shape == (1, 16)
    grid = targets[0].view(4, 4)
    assert grid[2, 1] == 7
    assert grid[0, 0] == 9 and grid[0, 1] == 11  # two tokens laid along their line, left to right
    assert int((grid != 0).sum()) == 3


def test_targets_follow_the_box_through_every_crop_that_sees_it():
    from PIL import Image
    image = Image.new("RGB", (96, 48), "white")
    tiled = tile_image(image, 32, 8, max_crops=6, margin=1)
    assert len(tiled.placements) > 2  # a global view and a grid of crops
    box = [{"text": "x", "box": [70.0, 20.0, 74.0, 24.0]}]  # centre (72, 22) of the 96 x 48 image
    targets = read_targets(tiled, box, lambda t: [5], no_text=0, ignore_index=IGNORE_INDEX, image_size=32,
                           patch_size=8)
    for n, (sy, sx, dy, dx) in enumerate(tiled.placements):
        y, x = 22 * sy + dy, 72 * sx + dx
        inside = 0 <= y < 32 and 0 <= x < 32
        hit = (targets[n] == 5).nonzero().flatten().tolist()
        assert hit == ([int(y // 8) * 4 + int(x // 8)] if inside else []), n
        # and that crop really shows the pixel there: the placement maps the image onto the crop
    assert (targets == 5).sum() >= 2
    # a patch of padding only carries no target at all
    assert ((tiled.pad_fraction >= 1) == (targets == IGNORE_INDEX)).all()


def test_placements_map_image_pixels_onto_the_crops_pixels():
    image = torch.zeros(3, 60, 100, dtype=torch.uint8)
    image[:, 30, 80] = 255  # one white pixel
    tiled = tile_image(image, 32, 8, max_crops=4, margin=1)
    for crop, (sy, sx, dy, dx) in zip(tiled.crops, tiled.placements):
        y, x = round(30.5 * sy + dy - 0.5), round(80.5 * sx + dx - 0.5)
        if 0 <= y < 32 and 0 <= x < 32:
            bright = crop[0].float()
            assert bright[max(0, y - 2):y + 3, max(0, x - 2):x + 3].max() >= bright.max() * 0.5 > 0


def test_token_points_climb_a_slanted_label():
    (a, b) = token_points([0, 0, 10, 10], 45.0, 2)
    assert a[0] < b[0] and a[1] > b[1]  # up to the right
    (c,) = token_points([0, 0, 10, 4], 0.0, 1)
    assert c == (5.0, 2.0)


def test_the_processor_makes_targets_only_when_the_loss_is_on(chart_tokenizer):
    record = charts(1)[0]
    off = MolminiModel(tiny_config().model, chart_tokenizer)
    assert off.read_head is None and "read_labels" not in off.processor.process_record(record)
    on = MolminiModel(tiny_config(*READING).model, chart_tokenizer)
    sample = on.processor.process_record(record)
    labels = sample["read_labels"]
    assert labels.shape == sample["pad_fraction"].shape
    named = set(labels[(labels != IGNORE_INDEX) & (labels != on.processor.pad_token_id)].tolist())
    expected = {chart_tokenizer.encode(b["text"], add_special_tokens=False)[0] for b in record.meta["text_boxes"]}
    assert named and named <= {t for b in record.meta["text_boxes"]
                               for t in on.processor._text(b["text"])}
    assert len(named & expected) >= 1
    plain = on.processor.process_record(make_records(1)[0])  # no boxes: left out of the loss
    assert (plain["read_labels"] == IGNORE_INDEX).all()
    batch = on.processor.collate([sample, plain])
    assert batch["read_labels"].shape == batch["pad_fraction"].shape


def test_the_reading_stage_lowers_the_loss_and_leaves_the_lm_untouched(chart_tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(*READING, "model.reading.answer_weight=0", "optim.freeze=[connector,lm]")
    model = MolminiModel(cfg.model, chart_tokenizer).train()
    records = charts(64)
    lm_before = {n: p.clone() for n, p in model.lm.named_parameters()}
    trainable = [p for n, p in model.named_parameters() if model.component_of(n) == "vision"]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for step in range(40):
        group = records[(step * 16) % 64:(step * 16) % 64 + 16]
        batch = model.processor.collate([model.processor.process_record(r) for r in group])
        batch.pop("keys")
        out = model(**batch, return_logits=False)
        assert out["loss_sum"].item() == 0  # the answer loss is off: the LM is not run
        out["read_loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out["read_loss"].item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert all(torch.equal(p, lm_before[n]) for n, p in model.lm.named_parameters())


def test_the_head_is_not_saved_and_the_checkpoint_answers_as_the_model_did(chart_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MolminiModel(tiny_config(*READING).model, chart_tokenizer).eval()
    folder = model.save_pretrained(tmp_path / "ckpt")
    loaded = MolminiModel.from_pretrained(folder)
    assert loaded.read_head is None and loaded.config.reading.weight == 0
    assert not any(k.startswith("read_head") for k in loaded.state_dict())
    assert not loaded.processor.config.read_targets
    images = [r.load_image() for r in charts(2)]
    prompts = ["How many bars are there?", "What is the title?"]
    assert loaded.generate(images, prompts, max_new_tokens=4) == model.generate(images, prompts, max_new_tokens=4)


def test_the_head_has_its_own_learning_rate_group():
    from molmini.train.optim import lr_by_component, param_groups
    cfg = tiny_config(*READING, "optim.lr_reader=0.01")
    model = MolminiModel(cfg.model, train_bpe_tokenizer(["a b c"] * 3, vocab_size=300))
    groups = param_groups(model, cfg.optim)
    reader = [g for g in groups if g["component"] == "reader"]
    assert reader and all(g["lr"] == 0.01 for g in reader)
    assert sum(p.numel() for g in reader for p in g["params"]) == sum(p.numel() for p in model.read_head.parameters())
    optimizer = torch.optim.AdamW(groups)
    assert lr_by_component(optimizer)["lr_reader"] == 0.01


def write(folder, records):
    with ShardWriter(folder, generator="test") as writer:
        for r in records:
            writer.write(r)


def test_at_weight_zero_a_run_is_the_run_without_text_boxes(tmp_path):
    """Training on charts that carry their boxes, with the reading loss off, logs exactly the losses of the
    same charts with the boxes taken out: the loss switched off costs nothing and changes nothing."""
    from molmini.train.loop import train
    boxed = charts(24, px=32)
    bare = [Record(key=r.key, image=r.image, messages=r.messages, source=r.source, task=r.task,
                   meta={k: v for k, v in r.meta.items() if k != "text_boxes"}) for r in boxed]
    logs = []
    for name, records in (("boxed", boxed), ("bare", bare)):
        write(tmp_path / name / "train", records[:16])
        write(tmp_path / name / "test", records[16:])
        cfg = tiny_config(f"data.train_dir={tmp_path / name / 'train'}", f"data.test_dir={tmp_path / name / 'test'}",
                          "data.synth=null", "data.num_workers=0", "train.max_steps=6", "train.batch_size=4",
                          "train.log_every=1", "train.eval_every=3", "train.eval_batches=1", "train.trackers=[]",
                          "model.tokenizer.vocab_size=300")
        train(cfg, tmp_path / name / "run")
        logs.append([line for line in (tmp_path / name / "run" / "train_log.jsonl").read_text().splitlines()])
    strip = lambda lines: [{k: v for k, v in __import__("json").loads(l).items() if not k.endswith(("_per_s", "_s"))
                            and k not in ("data_wait", "elapsed_s")} for l in lines]
    assert strip(logs[0]) == strip(logs[1])
    assert not any("read_" in line for line in logs[0])


def test_a_run_with_the_reading_loss_logs_it_and_its_held_out_accuracy(tmp_path):
    from molmini.train.loop import train
    records = charts(24, px=32)
    write(tmp_path / "train", records[:16])
    write(tmp_path / "test", records[16:])
    cfg = tiny_config(f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}", "data.synth=null",
                      "data.num_workers=0", "train.max_steps=4", "train.batch_size=4", "train.log_every=1",
                      "train.eval_every=2", "train.eval_batches=1", "train.trackers=[]", *READING)
    summary = train(cfg, tmp_path / "run")
    import json
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("read_loss" in r for r in log if "loss" in r)
    assert [0 <= r["read_accuracy"] <= 1 for r in log if "eval_loss" in r] == [True, True]
    assert "lr_reader" in log[0] and summary["steps"] == 4
    assert MolminiModel.from_pretrained(tmp_path / "run" / "checkpoint").read_head is None


def test_the_answer_loss_off_needs_the_reading_loss_on():
    from molmini.config import ConfigError
    with pytest.raises(ConfigError, match="no loss to train"):
        tiny_config("model.reading.answer_weight=0")
    with pytest.raises(ConfigError, match="at least 0"):
        tiny_config("model.reading.weight=-1")
    assert tiny_config(*READING, "model.reading.answer_weight=0").model.reading.answer_weight == 0


def test_a_stage_from_a_checkpoint_keeps_its_own_reading_loss(tmp_path):
    """train.init_from takes the model from the checkpoint, which never holds the reading head; the run's
    model.reading still decides whether this stage reads (a reading stage, then a joint one that goes on)."""
    import json

    from molmini.train.loop import train
    records = charts(24, px=32)
    write(tmp_path / "train", records[:16])
    write(tmp_path / "test", records[16:])
    common = [f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}", "data.synth=null",
              "data.num_workers=0", "train.max_steps=2", "train.batch_size=4", "train.log_every=1",
              "train.trackers=[]"]
    train(tiny_config(*common), tmp_path / "first")  # no reading loss, so its checkpoint has none either
    cfg = tiny_config(*common, *READING, f"train.init_from={tmp_path / 'first' / 'checkpoint'}")
    train(cfg, tmp_path / "second")
    log = [json.loads(line) for line in (tmp_path / "second" / "train_log.jsonl").read_text().splitlines()]
    assert all("read_loss" in r for r in log if "loss" in r) and cfg.model.reading.weight == 1.0
    saved = (tmp_path / "second" / "config.yaml").read_text()
    assert "weight: 1.0" in saved  # the run says it read
    off = tiny_config(*common, f"train.init_from={tmp_path / 'second' / 'checkpoint'}")
    train(off, tmp_path / "third")
    assert not any("read_loss" in line for line in (tmp_path / "third" / "train_log.jsonl").read_text().splitlines())
