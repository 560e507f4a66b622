"""Every generator records what it drew where (data_pipelines/synth/text_boxes.py): each box lies inside the
image, its text is text the generator's own data says it printed, and the box drawn back onto the image
covers ink. The boxes pass the record reader's check and survive a shard."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from data_pipelines.synth import charts, documents, tables, words
from data_pipelines.synth.text_boxes import PilTextBoxes, moved, rotated
from molmini.data.records import Record, text_boxes_problem


def check_boxes(record: Record) -> list[dict]:
    """The record's boxes, asserted inside the image and on ink (some pixel in the box differs from the
    image's most common colour, the background, by a clear margin)."""
    boxes = record.meta["text_boxes"]
    assert boxes and text_boxes_problem(boxes) == ""
    image = np.asarray(Image.open(io.BytesIO(record.image)).convert("RGB")).astype(np.int16)
    height, width = image.shape[:2]
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    for entry in boxes:
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, entry
        region = image[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))].reshape(-1, 3)
        assert np.abs(region - background).max() > 60, f"no ink under {entry}"
    assert Record.from_sample(record.to_sample()).meta["text_boxes"] == boxes  # through the reader's check
    return boxes


@pytest.mark.parametrize("renderer", charts.RENDERERS)
@pytest.mark.parametrize("seed", range(6))
def test_basic_charts_box_every_label_value_tick_and_title(renderer, seed):
    record = charts.make_chart_record(random.Random(seed), "c", 128, renderer)
    texts = [b["text"] for b in check_boxes(record)]
    spec = record.meta["chart"]
    expected = list(spec["labels"]) + ([spec["title"]] if spec["title"] else [])
    if spec["kind"] != "pie":
        expected += ["0", "25", "50", "75", "100"] + ([str(v) for v in spec["values"]] if spec["value_labels"] else [])
    assert sorted(texts) == sorted(expected) if spec["kind"] != "pie" else set(expected) <= set(texts)
    slanted = [b for b in record.meta["text_boxes"] if "angle" in b]
    assert all(b["text"] in spec["labels"] and b["angle"] == 45.0 for b in slanted)


@pytest.mark.parametrize("seed", range(4))
def test_full_variety_charts_box_their_labels_and_no_tick_they_did_not_draw(seed):
    record = charts.make_record(random.Random(seed), "v", 256, variety="full")
    texts = {b["text"] for b in check_boxes(record)}
    chart = record.meta["chart"]
    assert set(chart["categories"]) <= texts or chart["kind"] == "scatter"
    assert chart["title"] is None or chart["title"] in texts
    assert not any("$" in t for t in texts)  # mathtext sources are left out


@pytest.mark.parametrize("seed", range(3))
def test_tables_box_every_cell_and_follow_the_scan_skew(seed):
    record = tables.make_record(random.Random(seed), "t", 448, noise=True)
    texts = [b["text"] for b in check_boxes(record)]
    table = tables.TableData(**record.meta["table"])
    cells = list(table.columns) + [cell for row in table.display_rows() for cell in row]
    assert sorted(texts) == sorted([c for c in cells if c.strip()] + ([table.title] if table.title else []))


@pytest.mark.parametrize("seed", range(4))
def test_documents_box_every_line_they_print(seed):
    record = documents.make_record(random.Random(seed), "d", 512)
    boxes = check_boxes(record)
    transcript = record.meta["transcript"]
    assert all(b["text"] in transcript for b in boxes)
    printed = " ".join(b["text"] for b in boxes)
    assert all(value in printed for value in record.meta["document"]["fields"].values())


def test_drills_box_each_item_in_its_slant():
    for seed in range(8):
        record = words.make_record(random.Random(seed), "w", 128)
        boxes = check_boxes(record)
        assert [b["text"] for b in boxes] == record.meta["items"]


def test_rotated_boxes_follow_pil_s_rotation():
    image = Image.new("RGB", (200, 100), "white")
    image.paste((0, 0, 0), (150, 20, 160, 30))
    box = [{"text": "x", "box": [150.0, 20.0, 160.0, 30.0]}]
    for degrees in (-2.0, 1.5, 30.0):
        turned = np.asarray(image.rotate(degrees, expand=False, fillcolor="white").convert("L"))
        ys, xs = np.nonzero(turned < 128)
        (moved_box,) = rotated(box, degrees, 200, 100)
        x0, y0, x1, y1 = moved_box["box"]
        assert x0 - 1 <= xs.min() and xs.max() <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1 + 1
        assert moved_box["angle"] == degrees
    assert moved(box, 0.5, 0.5, 10, 0, 200, 100) == [{"text": "x", "box": [85.0, 10.0, 90.0, 15.0]}]
    with pytest.raises(ValueError, match="one line at a time"):
        PilTextBoxes(10, 10).text(None, (0, 0), "two\nlines", None)


def test_curate_keeps_the_boxes_of_the_records_it_keeps(tmp_path):
    from data_pipelines.__main__ import main
    from molmini.data.reader import find_shards, iter_records
    charts.synthesize(tmp_path / "charts", 6, seed=3, image_px=64, shard_size=3, progress=False)
    assert main(["curate", "--input", str(tmp_path / "charts"), "--out", str(tmp_path / "curated")]) == 0
    before = {r.key: r.meta["text_boxes"] for r in iter_records(find_shards(tmp_path / "charts"))}
    after = {r.key: r.meta["text_boxes"] for r in iter_records(find_shards(tmp_path / "curated"))}
    assert after and all(before[key] == boxes and boxes for key, boxes in after.items())
