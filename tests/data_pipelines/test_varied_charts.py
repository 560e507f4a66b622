"""Charts of the full variety: every answer recomputed from the stored data, formats, images, determinism."""
import io
import random
import re
from collections import Counter
from dataclasses import asdict

import pytest
from PIL import Image

from data_pipelines.synth.chart_qa import KIND_NAMES, KINDS, LETTERS, QUESTION_TYPES, sample_chart_data
from data_pipelines.synth.charts import record_for_index, synthesize
from data_pipelines.synth.common import REFUSAL, fmt_number
from data_pipelines.synth.varied_charts import make_varied_chart_record

PLAIN_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@pytest.fixture(scope="module")
def records():
    # Small images keep this fast; two of every kind, then random kinds.
    out = [make_varied_chart_record(random.Random(i), f"c{i}", image_px=160, kind=KINDS[i % len(KINDS)])
           for i in range(2 * len(KINDS))]
    return out + [make_varied_chart_record(random.Random(f"r{i}"), f"r{i}", image_px=160) for i in range(30)]


def series_values(chart):
    """(name, values) per answerable series, computed here independently of the generator."""
    if chart["kind"] == "scatter":
        return [(chart["series"][1], chart["values"][1])]
    out = list(zip(chart["series"], chart["values"]))
    if chart["kind"] == "stacked_bar":
        out.append(("total", [round(sum(c), chart["decimals"]) for c in zip(*chart["values"])]))
    return out


def expected_answer(qtype, question, chart, args):
    cats, d = chart["categories"], chart["decimals"]
    if qtype == "chart_type":
        return KIND_NAMES[chart["kind"]]
    if qtype == "count":
        return str(len(chart["series"]) if args.get("what") == "series" else len(cats))
    if qtype == "unanswerable":
        assert chart["absent"] not in cats and chart["absent"] in question
        return REFUSAL
    vals = series_values(chart)[args["s"]][1]
    num = lambda x: fmt_number(x, d)  # noqa: E731
    if qtype == "value":
        assert cats[args["i"]] in question
        return num(vals[args["i"]])
    if qtype == "max_label":
        return cats[max(range(len(vals)), key=vals.__getitem__)]
    if qtype == "min_label":
        return cats[min(range(len(vals)), key=vals.__getitem__)]
    if qtype == "max_value":
        return num(max(vals))
    if qtype == "compare":
        i, j = args["i"], args["j"]
        return cats[i] if vals[i] > vals[j] else cats[j]
    if qtype == "difference":
        return num(abs(vals[args["i"]] - vals[args["j"]]))
    if qtype == "sum":
        return num(sum(vals))
    if qtype == "average":
        return fmt_number(sum(vals) / len(vals), 2)
    if qtype == "trend":
        return "increase" if vals[-1] > vals[0] else "decrease"
    if qtype == "yes_no":
        i, j = args["i"], args["j"]
        assert question.index(cats[i]) < question.index(cats[j])
        return "Yes" if vals[i] > vals[j] else "No"
    if qtype == "multiple_choice":
        lowest = min(range(len(vals)), key=vals.__getitem__)
        for k, o in enumerate(args["options"]):
            assert f"({LETTERS[k]}) {cats[o]}" in question
        return LETTERS[args["options"].index(lowest)]
    raise AssertionError(qtype)


def test_every_answer_matches_the_stored_data(records):
    seen = Counter()
    for rec in records:
        chart = rec.meta["chart"]
        types, args = rec.meta["qa_types"], rec.meta["qa_args"]
        assert len(types) == len(args) == len(rec.qa_pairs()) >= 6
        for qtype, a, (question, answer) in zip(types, args, rec.qa_pairs()):
            assert answer == expected_answer(qtype, question, chart, a), (rec.key, question)
            seen[qtype] += 1
    assert set(seen) == set(QUESTION_TYPES)


def test_answers_are_plain_numbers_or_labels(records):
    numeric = {"count", "value", "max_value", "difference", "sum", "average"}
    for rec in records:
        for qtype, (_, answer) in zip(rec.meta["qa_types"], rec.qa_pairs()):
            if qtype in numeric:
                assert PLAIN_NUMBER.match(answer), (qtype, answer)  # no units, %, or thousands separators
            assert answer == answer.strip() and answer


def test_data_is_well_formed_and_extremes_unique(records):
    kinds = Counter()
    for rec in records:
        chart = rec.meta["chart"]
        kinds[chart["kind"]] += 1
        for _, vals in series_values(chart):
            assert len(vals) == len(chart["categories"]) == len(set(chart["categories"]))
            assert vals.count(max(vals)) == 1 and vals.count(min(vals)) == 1
        if chart["kind"] in ("pie", "donut"):
            assert sum(chart["values"][0]) == 100
        transcript = rec.meta["transcript"]
        assert transcript.startswith(KIND_NAMES[chart["kind"]] + " chart")
        assert all(c in transcript for c in chart["categories"])
        assert (chart["title"] in transcript) if chart["title"] else "Title:" not in transcript
    assert set(kinds) == set(KINDS)


def test_log_axes_and_several_series_occur():
    specs = [sample_chart_data(random.Random(i)) for i in range(300)]
    assert any(s.log_scale for s in specs)
    assert all(s.kind in ("bar", "hbar", "line") for s in specs if s.log_scale)
    assert any(len(s.series) == 3 and s.kind == "line" for s in specs)


def test_images_decode_with_varied_sizes(records):
    sizes = set()
    for rec in records:
        image = Image.open(io.BytesIO(rec.image))
        image.load()
        assert image.format == "PNG" and image.mode == "RGB" and image.width == 160
        assert 100 <= image.height <= 160
        sizes.add(image.size)
        assert len(set(image.convert("L").getdata())) > 5  # something was drawn
    assert len(sizes) > 1


def test_full_variety_is_deterministic_and_workers_do_not_matter(tmp_path):
    a = record_for_index(3, "train", 7, 128, variety="full")
    record_for_index(3, "train", 8, 128, variety="full")  # the reused figure must not carry state over
    b = record_for_index(3, "train", 7, 128, variety="full")
    assert (a.image, a.messages, a.meta) == (b.image, b.messages, b.meta)
    one = synthesize(tmp_path / "one", 6, seed=2, image_px=96, workers=1, shard_size=4, progress=False,
                     variety="full")
    two = synthesize(tmp_path / "two", 6, seed=2, image_px=96, workers=2, shard_size=4, progress=False,
                     variety="full")
    assert one["shards"] == two["shards"] and one["params"] == {"image_px": 96, "variety": "full"}
    with pytest.raises(ValueError, match="variety"):
        synthesize(tmp_path / "bad", 1, seed=0, variety="fancy", progress=False)


def test_every_kind_samples_distinct_values_for_many_seeds():
    # A measure too narrow for the decimals would loop forever in the sampler (scatter once did).
    for kind in KINDS:
        for seed in range(1500):
            data = sample_chart_data(random.Random(seed), kind)
            for _, values in series_values(asdict(data)):  # stacked bars' totals included
                assert len(set(values)) == len(values), (kind, seed)
