"""The record schema (molmini/data/records.py): a record survives the trip through a webdataset sample
unchanged, and a sample that breaks the schema is refused naming the record, the field and the reason."""
from __future__ import annotations

import json

import pytest

from molmini.data.records import Record, RecordError
from tests.helpers import make_records, png_bytes


def test_a_record_round_trips_through_its_sample_with_every_field():
    one = make_records(1)[0]
    two = Record(key="two-images", image=png_bytes("red"), extra_images=[(png_bytes("blue"), "png")],
                 messages=[{"role": "user", "content": "<image><image>Which is red?"},
                           {"role": "assistant", "content": "the first"}], source="s", task="t", meta={"k": [1]})
    text = Record(key="text-only", image=None, messages=[{"role": "user", "content": "2+2?"},
                                                         {"role": "assistant", "content": "4"}])
    for record in (one, two, text):
        back = Record.from_sample(record.to_sample())
        assert back == record
        assert back.num_images == record.num_images
    assert two.qa_pairs() == [("Which is red?", "the first")]
    assert [im.getpixel((0, 0)) for im in two.load_images()] == [(255, 255, 255)] * 2


@pytest.mark.parametrize("body, reason, named", [
    (b"{not json", "invalid_json", "not valid JSON"),
    (json.dumps([1, 2]).encode(), "invalid_schema", "list, not an object"),
    (json.dumps({"source": "x"}).encode(), "invalid_schema", "no 'messages'"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                 "meta": []}).encode(), "invalid_schema", "'meta' is list"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                 "meta": {"qa_types": "count"}}).encode(), "invalid_schema", "qa_types"),
])
def test_a_sample_that_breaks_the_schema_is_refused_by_reason(body, reason, named):
    with pytest.raises(RecordError) as e:
        Record.from_sample({"__key__": "bad-1", "png": png_bytes("red"), "json": body})
    assert e.value.reason == reason
    assert "'bad-1'" in str(e.value) and named in str(e.value)


def test_a_key_webdataset_would_split_and_a_missing_json_are_named():
    with pytest.raises(RecordError, match="contains '.'"):
        Record(key="a.b", image=png_bytes("red"), messages=make_records(1)[0].messages)
    with pytest.raises(RecordError) as e:
        Record.from_sample({"__key__": "k", "png": png_bytes("red")})
    assert e.value.reason == "missing_member" and ".json" in str(e.value)
    text_only = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    with pytest.raises(RecordError, match="text-only"):
        Record(key="t", image=None, messages=text_only).load_image()


@pytest.mark.parametrize("first_turn, images", [("<image><image>Which is red?", 1), ("<image>Colour?", 0),
                                                ("<image>Which is red?", 2)])
def test_image_markers_that_are_neither_none_nor_one_per_image_are_a_mismatch(first_turn, images):
    pictures = [png_bytes("red")] * images
    with pytest.raises(RecordError, match="markers for") as e:
        Record(key="m", image=pictures[0] if pictures else None, extra_images=[(p, "png") for p in pictures[1:]],
               messages=[{"role": "user", "content": first_turn}, {"role": "assistant", "content": "a"}])
    assert e.value.reason == "image_marker_mismatch"


@pytest.mark.parametrize("boxes, named", [
    ({"text": "a"}, "not a list"),
    ([{"box": [0, 0, 1, 1]}], "no text"),
    ([{"text": "Bread", "box": [0, 0, 1]}], "no box of 4 numbers"),
    ([{"text": "Bread", "box": [5, 0, 1, 1]}], "x0 <= x1"),
    ([{"text": "Bread", "box": [0, 0, 1, float("nan")]}], "no box of 4 numbers"),
    ([{"text": "Bread", "box": [0, 0, 1, 1], "angle": "45"}], "not a number of degrees"),
])
def test_text_boxes_of_the_wrong_shape_are_refused_naming_the_entry(boxes, named):
    body = {"messages": make_records(1)[0].messages, "meta": {"text_boxes": boxes}}
    with pytest.raises(RecordError) as e:
        Record.from_sample({"__key__": "boxed", "png": png_bytes("red"), "json": json.dumps(body).encode()})
    assert e.value.reason == "invalid_schema" and "meta.text_boxes" in str(e.value) and named in str(e.value)


def test_text_boxes_of_the_right_shape_are_kept_and_records_without_them_stay_valid():
    boxes = [{"text": "Bread", "box": [1.5, 2, 30, 12.5]}, {"text": "42", "box": [3, 4, 9, 10], "angle": 45.0}]
    record = Record(key="boxed", image=png_bytes("red"), messages=make_records(1)[0].messages,
                    meta={"text_boxes": boxes})
    assert Record.from_sample(record.to_sample()).meta["text_boxes"] == boxes
    assert "text_boxes" not in Record.from_sample(make_records(1)[0].to_sample()).meta
