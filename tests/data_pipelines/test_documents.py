"""Synthetic documents: extractive answers printed on the page, refusals, images, determinism."""
import io
import random
import re
from collections import Counter

import pytest
from PIL import Image

from data_pipelines.synth.common import REFUSAL
from data_pipelines.synth.documents import ABSENT, KINDS, QUESTION_TYPES, make_record, synthesize


@pytest.fixture(scope="module")
def records():
    return [make_record(random.Random(i), f"d{i}", image_px=256) for i in range(40)]


def test_answers_are_spans_of_the_page_and_match_the_fields(records):
    seen = Counter()
    for rec in records:
        doc, transcript = rec.meta["document"], rec.meta["transcript"]
        assert len(rec.qa_pairs()) == len(rec.meta["qa_types"]) == len(rec.meta["qa_args"]) >= 4
        for qtype, args, (question, answer) in zip(rec.meta["qa_types"], rec.meta["qa_args"], rec.qa_pairs()):
            seen[qtype] += 1
            if qtype == "unanswerable":
                assert answer == REFUSAL and question == ABSENT[doc["kind"]]
                continue
            assert answer == doc["fields"][args["field"]]
            assert answer in transcript, (rec.key, question, answer)  # extractive: printed on the page
    assert set(seen) == set(QUESTION_TYPES)


def test_field_formats(records):
    for rec in records:
        fields = rec.meta["document"]["fields"]
        for name in ("total", "subtotal", "tax", "amount"):
            if name in fields:
                assert re.fullmatch(r"[$€£]\d{1,3}(,\d{3})*\.\d\d", fields[name]), fields[name]
        if rec.meta["document"]["kind"] == "invoice":
            money = lambda s: float(s[1:].replace(",", ""))  # noqa: E731
            assert abs(money(fields["subtotal"]) + money(fields["tax"]) - money(fields["total"])) < 0.005
            assert f"Invoice No: {fields['invoice_number']}" in rec.meta["transcript"].splitlines()


def test_every_kind_and_noise_occur_and_images_decode(records):
    kinds, exts = Counter(), Counter()
    for rec in records:
        kinds[rec.meta["document"]["kind"]] += 1
        exts[rec.image_ext] += 1
        image = Image.open(io.BytesIO(rec.image))
        image.load()
        assert image.mode == "RGB" and image.width == 256 and 48 <= image.height <= 600
    assert set(kinds) == set(KINDS) and exts["jpg"] and exts["png"]
    clean = make_record(random.Random(3), "c", image_px=256, noise=False)
    assert clean.image_ext == "png"


def test_workers_do_not_change_the_output(tmp_path):
    one = synthesize(tmp_path / "one", 6, seed=1, image_px=128, workers=1, shard_size=4, progress=False)
    two = synthesize(tmp_path / "two", 6, seed=1, image_px=128, workers=2, shard_size=4, progress=False)
    assert one["shards"] == two["shards"] and one["params"] == {"image_px": 128, "noise": True}
