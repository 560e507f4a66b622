"""Reading drills (data_pipelines/synth/words.py): the answers are the printed text, in reading order."""
from __future__ import annotations

import random

import numpy as np
import pytest

from data_pipelines.synth import words
from molmini.data.reader import BadRecords, find_shards, read_records


def test_answers_are_the_items_printed_in_reading_order():
    for i in range(200):
        rec = words.make_record(random.Random(i), key=f"w{i}", max_items=4)
        items = rec.meta["items"]
        assert 1 <= len(items) <= 4 and rec.meta["transcript"] == " ".join(items)
        answers = dict(zip(rec.meta["qa_types"], (m["content"] for m in rec.messages[1::2])))
        assert answers["read_all"] == " ".join(items) and answers["read_first"] == items[0]
        numbers = [t for t in items if t.isdigit()]
        assert answers.get("read_number") == (numbers[0] if numbers else None)
        image = np.asarray(rec.load_image().convert("L"))
        assert image.shape == (128, 128) and image.min() < 100  # something dark was drawn


def test_the_same_seed_draws_the_same_image_and_bigger_fonts_draw_more_ink():
    a = words.make_record(random.Random("s"), key="a")
    assert a.image == words.make_record(random.Random("s"), key="a").image

    def ink(min_px, max_px):
        total = 0
        for i in range(40):
            rec = words.make_record(random.Random(i), key="k", max_items=1, min_font_px=min_px, max_font_px=max_px)
            total += (np.asarray(rec.load_image().convert("L")) < 128).sum()
        return total
    assert ink(20, 24) > 2 * ink(8, 9)


def test_synthesize_writes_readable_shards_and_checks_its_options(tmp_path):
    words.synthesize(tmp_path / "w", 12, seed=0, shard_size=5, progress=False)
    bad = BadRecords()
    assert len(list(read_records(find_shards(tmp_path / "w"), bad))) == 12 and bad.total == 0
    with pytest.raises(ValueError, match="min_font_px"):
        words.synthesize(tmp_path / "x", 4, seed=0, min_font_px=30, max_font_px=10, progress=False)
