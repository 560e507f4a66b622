"""Synthetic charts: answers agree with the sampled data, images, determinism, reuse, balance."""
import io
import random
from collections import Counter
from pathlib import Path

import pytest
import webdataset
from PIL import Image

from data_pipelines.__main__ import main
from data_pipelines.shards import list_shards, read_manifest, verify_manifest
from data_pipelines.synth.charts import GENERATOR_VERSION, PALETTE, QUESTION_TYPES, make_chart_record, synthesize
from molmini.data.records import IMAGE_MARKER, Record
from tests.helpers.file_hashes import folder_hashes

NUM_CHARTS = 300


@pytest.fixture(scope="module")
def records():
    return [make_chart_record(random.Random(seed), key=f"chart-{seed}") for seed in range(NUM_CHARTS)]


def read_records(folder):
    return [Record.from_sample(s) for s in webdataset.WebDataset(list_shards(folder), shardshuffle=False)]


def test_constants():
    assert QUESTION_TYPES == ("chart_type", "count", "largest_label", "value", "compare", "colour_largest", "trend")
    assert GENERATOR_VERSION == "2"  # 2: the records say what each chart drew where (meta.text_boxes)
    assert sorted(PALETTE) == sorted(["red", "blue", "green", "orange", "purple", "brown", "pink", "gray"])


def test_answers_agree_with_chart_data(records):
    for record in records:
        chart = record.meta["chart"]
        labels, values, colours = chart["labels"], chart["values"], chart["colours"]
        top = values.index(max(values))
        assert values.count(max(values)) == 1
        for qtype, (question, answer) in zip(record.meta["qa_types"], record.qa_pairs(), strict=True):
            if qtype == "chart_type":
                assert answer == chart["kind"]
            elif qtype == "count":
                assert answer == str(len(labels))
            elif qtype == "largest_label":
                assert answer == labels[top]
            elif qtype == "value":
                label = question.removeprefix("What is the value of ").removesuffix("?")
                assert answer == str(values[labels.index(label)])
            elif qtype == "compare":
                a, b = question.removeprefix("Is ").removesuffix("?").split(" greater than ")
                assert a != b and values[labels.index(a)] != values[labels.index(b)]
                assert answer == ("Yes" if values[labels.index(a)] > values[labels.index(b)] else "No")
            elif qtype == "colour_largest":
                assert answer == colours[top]
            elif qtype == "trend":
                assert values[0] != values[-1]
                assert answer == ("up" if values[-1] > values[0] else "down")
            else:
                pytest.fail(f"unknown question type {qtype}")


def test_chart_data_is_well_formed(records):
    for record in records:
        chart = record.meta["chart"]
        kind, labels, values, colours = chart["kind"], chart["labels"], chart["values"], chart["colours"]
        assert 3 <= len(labels) <= 7 and len(set(labels)) == len(labels) == len(values)
        assert all(isinstance(v, int) for v in values)
        if kind == "pie":
            assert sum(values) == 100 and min(values) >= 5
        else:
            assert all(5 <= v <= 95 for v in values)
        assert len(colours) == (1 if kind == "line" else len(labels)) and len(set(colours)) == len(colours)
        assert set(colours) <= set(PALETTE)
        expected_types = {"bar": {"chart_type", "count", "largest_label", "value", "compare", "colour_largest"},
                          "line": {"chart_type", "count", "largest_label", "value", "compare", "trend"},
                          "pie": {"chart_type", "count", "largest_label", "colour_largest"}}[kind]
        assert sorted(record.meta["qa_types"]) == sorted(expected_types)
        transcript = record.meta["transcript"]
        assert transcript.startswith(f"{kind} chart. ")
        assert (chart["title"] in transcript) if chart["title"] else transcript.count(". ") == 1
        positions = [transcript.index(f"{label} {value}") for label, value in zip(labels, values)]
        assert positions == sorted(positions)


def test_messages_follow_the_schema(records):
    for record in records:
        assert record.task == "chart_qa" and record.source == "synth-charts"
        users = record.messages[0::2]
        assert users[0]["content"].startswith(IMAGE_MARKER)
        assert not any(IMAGE_MARKER in m["content"] for m in record.messages[1:])
        assert len(record.meta["qa_types"]) == len(users)
        sample = record.to_sample()
        assert Record.from_sample(sample).messages == record.messages


def test_question_orders_are_shuffled(records):
    orders = {tuple(r.meta["qa_types"]) for r in records if r.meta["chart"]["kind"] == "bar"}
    assert len(orders) > 10


def test_images_are_square_rgb_png(records):
    for record in records[:20]:
        image = Image.open(io.BytesIO(record.image))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (128, 128)
    for px in (96, 200):
        image = Image.open(io.BytesIO(make_chart_record(random.Random(5), "k", image_px=px).image))
        assert image.mode == "RGB" and image.size == (px, px)


def test_all_question_types_occur_and_answers_are_balanced(records):
    answers = Counter()
    for record in records:
        for qtype, (_, answer) in zip(record.meta["qa_types"], record.qa_pairs()):
            answers[qtype, answer] += 1
    assert {qtype for qtype, _ in answers} == set(QUESTION_TYPES)

    def share(qtype, answer, other):
        return answers[qtype, answer] / (answers[qtype, answer] + answers[qtype, other])

    # About 200 compare and 100 trend questions: allow roughly two standard deviations.
    assert 0.4 <= share("compare", "Yes", "No") <= 0.6
    assert 0.35 <= share("trend", "up", "down") <= 0.65
    assert all(answers["chart_type", kind] > NUM_CHARTS / 5 for kind in ("bar", "line", "pie"))


def test_same_seed_gives_identical_records():
    first = make_chart_record(random.Random("same"), "k")
    make_chart_record(random.Random("other"), "k2")  # the reused figure must not carry state over
    again = make_chart_record(random.Random("same"), "k")
    assert first.image == again.image and first.messages == again.messages and first.meta == again.meta


def test_workers_do_not_change_the_output(tmp_path):
    one = synthesize(tmp_path / "one", 40, seed=11, workers=1, shard_size=16, progress=False)
    two = synthesize(tmp_path / "two", 40, seed=11, workers=2, shard_size=16, progress=False)
    assert one["shards"] == two["shards"]  # same names, counts and sha256s
    a, b = read_records(tmp_path / "one"), read_records(tmp_path / "two")
    assert [r.key for r in a] == [f"charts-train-{i:08d}" for i in range(40)]
    assert [(r.key, r.image, r.messages, r.meta) for r in a] == [(r.key, r.image, r.messages, r.meta) for r in b]
    verify_manifest(tmp_path / "two")


def test_synthesize_reuses_a_matching_folder_and_regenerates_otherwise(tmp_path, capsys):
    out = tmp_path / "charts"
    first = synthesize(out, 12, seed=1, shard_size=5, progress=False)
    assert first["num_samples"] == 12 and first["params"] == {"image_px": 128} and len(first["shards"]) == 3
    mtimes = {p: Path(p).stat().st_mtime_ns for p in list_shards(out)}

    again = synthesize(out, 12, seed=1, shard_size=5, progress=True)
    assert again == first and "reusing" in capsys.readouterr().err
    assert {p: Path(p).stat().st_mtime_ns for p in list_shards(out)} == mtimes

    smaller = synthesize(out, 12, seed=1, image_px=64, shard_size=100, progress=False)
    assert smaller["params"] == {"image_px": 64} and len(list_shards(out)) == 1  # old shards are gone
    assert Image.open(io.BytesIO(read_records(out)[0].image)).size == (64, 64)
    other_seed = synthesize(out, 12, seed=2, image_px=64, shard_size=100, progress=False)
    assert other_seed["seed"] == 2 and other_seed["shards"] != smaller["shards"]


def test_shards_without_manifest_are_left_alone(tmp_path):
    # An interrupted synthesis leaves its partial set beside the folder, never in it, so shards without a
    # manifest are someone else's: synthesis refuses to replace them.
    out = tmp_path / "charts"
    synthesize(out, 6, seed=4, shard_size=2, progress=False)
    (out / "manifest.json").unlink()
    before = folder_hashes(out)
    with pytest.raises(FileExistsError, match="only into an empty or missing folder"):
        synthesize(out, 4, seed=4, shard_size=2, progress=False)
    assert folder_hashes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["charts"]


def test_splits_differ(tmp_path):
    train = synthesize(tmp_path / "train", 4, seed=0, split="train", progress=False)
    val = synthesize(tmp_path / "val", 4, seed=0, split="val", progress=False)
    assert train["shards"][0]["sha256"] != val["shards"][0]["sha256"]
    assert read_records(tmp_path / "val")[0].key == "charts-val-00000000"


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    assert main(["synth", "charts", "--out", str(out), "--num-images", "5", "--seed", "9", "--split", "val",
                 "--image-px", "96", "--workers", "1", "--shard-size", "2"]) == 0
    manifest = read_manifest(out)
    assert (manifest["num_samples"], manifest["seed"], manifest["split"], manifest["params"]) == \
           (5, 9, "val", {"image_px": 96})
    assert len(manifest["shards"]) == 3


def test_direct_renderer_draws_the_bars_where_the_axes_renderer_does():
    import numpy as np

    from data_pipelines.synth.charts import render_chart, sample_chart
    from data_pipelines.synth.fast_charts import render_chart_direct

    def box(png, hex_colour):  # bounding box of the pixels of exactly this colour
        rgb = np.asarray(Image.open(io.BytesIO(png)))
        ys, xs = np.nonzero((rgb == [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]).all(axis=2))
        return np.array([xs.min(), ys.min(), xs.max(), ys.max()])

    checked = 0
    for seed in range(40):
        spec = sample_chart(random.Random(seed))
        if spec.kind != "bar":
            continue
        axes, direct = render_chart(spec), render_chart_direct(spec)
        assert Image.open(io.BytesIO(direct)).size == (128, 128)
        for colour in set(spec.colours) - {"gray"}:  # (anti-aliased black text has grey pixels too)
            # one bar per colour: the same place and height within 3 pixels (Axes snap bar edges to pixels)
            assert np.abs(box(axes, PALETTE[colour]) - box(direct, PALETTE[colour])).max() <= 3, (seed, colour)
            checked += 1
    assert checked > 20
    other = sample_chart(random.Random(99))
    assert render_chart_direct(other) == render_chart_direct(other)


def test_renderer_is_recorded_only_when_not_the_default(tmp_path):
    manifest = synthesize(tmp_path / "one", 12, seed=0, renderer="direct", shard_size=5, progress=False)
    assert manifest["params"] == {"image_px": 128, "renderer": "direct"}
    # the saved y-axis backgrounds differ between processes' histories; the images must not
    two = synthesize(tmp_path / "two", 12, seed=0, renderer="direct", shard_size=5, workers=2, progress=False)
    assert two["shards"] == manifest["shards"]
    with pytest.raises(ValueError, match="basic bar and line charts only"):
        synthesize(tmp_path / "bad", 1, seed=0, variety="full", renderer="direct", progress=False)
    with pytest.raises(ValueError, match="renderer"):
        synthesize(tmp_path / "bad", 1, seed=0, renderer="svg", progress=False)
