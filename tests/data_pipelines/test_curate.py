"""Curation filters: each drops what it should and keeps the rest, the report counts it, decontamination
against evaluation shard folders, and the command line end to end."""
import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from data_pipelines.__main__ import main
from data_pipelines.curate import (AnswerLength, EmptyOrGarbledText, EvalImageOverlap, EvalQAOverlap, ExactDuplicates,
                                   HammingIndex, MaxAspectRatio, MinImageSize, NearDuplicates, RepeatedNgrams, curate,
                                   garbled_fraction, load_eval_set, normalise_text, perceptual_hash, standard_filters,
                                   write_report)
from data_pipelines.shards import ShardWriter, verify_manifest
from molmini.data.reader import find_shards, iter_records
from molmini.data.records import IMAGE_MARKER, Record


def blocky_image(seed: int, size=(64, 64), fmt="PNG", quality=90) -> bytes:
    """Random 8x8 blocks scaled up: distinct seeds give unrelated perceptual hashes."""
    cells = np.random.RandomState(seed).randint(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(cells).resize(size, Image.NEAREST)
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def record(key, image=None, qas=(("What is shown?", "Blocks."),), seed=0, size=(64, 64), **kw) -> Record:
    messages = []
    for i, (q, a) in enumerate(qas):
        messages += [{"role": "user", "content": (IMAGE_MARKER if i == 0 else "") + q},
                     {"role": "assistant", "content": a}]
    return Record(key=key, image=image if image is not None else blocky_image(seed, size), messages=messages,
                  source=kw.get("source", "test"), task=kw.get("task", "vqa"))


def run(filters, records):
    kept, report = curate(records, filters, max_examples=2)
    return [r.key for r in kept], report


def test_min_image_size():
    keys, report = run([MinImageSize(32)], [record("small", size=(64, 16)), record("ok", size=(32, 40)),
                                            record("bad", image=b"not an image")])
    assert keys == ["ok"]
    result = report.filters[0]
    assert result.dropped == 2 and [e["key"] for e in result.examples] == ["small", "bad"]
    assert "64x16" in result.examples[0]["why"]


def test_max_aspect_ratio():
    keys, report = run([MaxAspectRatio(4.0)], [record("wide", size=(200, 40)), record("tall", size=(40, 170)),
                                               record("ok", size=(160, 40))])
    assert keys == ["ok"] and report.filters[0].dropped == 2


def test_empty_or_garbled_text():
    assert garbled_fraction("fine\ttext\n") == 0.0
    assert garbled_fraction("\ufffd\ufffd\x00a") == 0.75
    records = [record("empty-answer", qas=[("Q?", "  ")]), record("marker-only", qas=[("", "A")]),
               record("garbled", qas=[("Q?", "\ufffd\ufffd\ufffd\x07ok")]),
               record("ok", qas=[("Q?", "Caf\u00e9 \u2014 fine\nsecond line")])]
    keys, report = run([EmptyOrGarbledText(0.3)], records)
    assert keys == ["ok"]
    assert report.filters[0].dropped == 3
    assert "message 1 (assistant) is empty" in report.filters[0].examples[0]["why"]


def test_answer_length():
    records = [record("short", qas=[("Q?", "")]), record("long", qas=[("Q?", "x" * 21)]),
               record("one-long", qas=[("Q?", "fine"), ("Q2?", "y" * 30)]), record("ok", qas=[("Q?", "x" * 20)])]
    keys, report = run([AnswerLength(1, 20)], records)
    assert keys == ["ok"] and report.filters[0].dropped == 3


def test_repeated_ngrams():
    records = [record("unigram", qas=[("Q?", "the the the the")]),
               record("trigram", qas=[("Q?", "I think so. I think so. I think so. I think so.")]),
               record("ok", qas=[("Q?", "the cat sat on the mat and the dog sat too")]),
               record("three-times", qas=[("Q?", "very very very good")])]
    keys, report = run([RepeatedNgrams(max_n=4, max_repeats=4)], records)
    assert keys == ["ok", "three-times"]
    assert "'the' 4 times" in report.filters[0].examples[0]["why"]
    assert "'i think so.' 4 times" in report.filters[0].examples[1]["why"]


def test_exact_duplicates():
    image = blocky_image(1)
    keys, report = run([ExactDuplicates()], [record("a", image=image), record("b", seed=2),
                                             record("a-again", image=image, qas=[("Other?", "Yes.")])])
    assert keys == ["a", "b"]
    assert report.filters[0].examples == [{"key": "a-again", "why": "same image bytes as a"}]


def test_near_duplicates_catch_reencoded_and_resized_copies():
    original = blocky_image(3)
    jpeg_copy = blocky_image(3, fmt="JPEG", quality=80)
    resized = blocky_image(3, size=(96, 96))
    assert (perceptual_hash(original) ^ perceptual_hash(jpeg_copy)).bit_count() <= 16
    assert (perceptual_hash(original) ^ perceptual_hash(blocky_image(4))).bit_count() > 64
    records = [record("orig", image=original), record("jpeg", image=jpeg_copy), record("resized", image=resized),
               record("other", seed=4), record("broken", image=b"\x89PNG\r\n\x1a\ntruncated")]
    keys, report = run([NearDuplicates(threshold=16)], records)
    assert keys == ["orig", "other"]
    result = report.filters[0]
    assert result.dropped == 3 and result.params == {"threshold": 16}
    assert result.examples[0]["key"] == "jpeg" and "from orig" in result.examples[0]["why"]


def test_hamming_index_agrees_with_brute_force():
    rng = random.Random(0)
    bits = 64  # few enough bits that random hashes fall within the larger radii of each other
    stored = [rng.getrandbits(bits) for _ in range(300)]
    # Queries near some stored hashes (a few bits flipped) and far from all.
    queries = [h ^ (1 << rng.randrange(bits)) ^ (1 << rng.randrange(bits)) for h in stored[:50]]
    queries += [rng.getrandbits(bits) for _ in range(50)]
    for radius in (0, 2, 5, 12, 20):
        index = HammingIndex(radius, bits=bits)
        for i, h in enumerate(stored):
            index.add(h, str(i))
        for q in queries:
            expected = any((q ^ h).bit_count() <= radius for h in stored)
            found = index.find(q)
            assert (found is not None) == expected
            if found:
                assert (q ^ stored[int(found[0])]).bit_count() == found[1] <= radius


def write_shards(folder, records):
    with ShardWriter(folder, generator="test", maxcount=3) as writer:
        for r in records:
            writer.write(r)


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "eval"
    write_shards(folder, [record("e0", seed=100, qas=[("What is the title?", "Sales 2020"), ("Max?", "45")]),
                          record("e1", seed=101, qas=[("Is it blue?", "No")])])
    return folder


def test_load_eval_set_from_shard_folders(eval_dir):
    evals = load_eval_set([eval_dir], threshold=10)
    assert evals.records == 2 and evals.hashes.size == 2 and evals.unreadable == 0
    assert ("what is the title", "sales 2020") in evals.qa_pairs
    assert normalise_text(f"{IMAGE_MARKER}  What is the TITLE?") == "what is the title"


def test_eval_image_overlap(eval_dir):
    evals = load_eval_set([eval_dir])
    leaked = blocky_image(100, fmt="JPEG", quality=85)  # an evaluation image, re-encoded
    keys, report = run([EvalImageOverlap(evals)], [record("leak", image=leaked), record("clean", seed=5)])
    assert keys == ["clean"]
    assert "evaluation image eval/e0" in report.filters[0].examples[0]["why"]


def test_eval_qa_overlap_trims_exchanges_and_drops_fully_contaminated_records(eval_dir):
    evals = load_eval_set([eval_dir])
    trimmed = record("trimmed", seed=6, qas=[("What is the title?", "Sales  2020."), ("Min?", "3")])
    whole = record("whole", seed=7, qas=[("is it BLUE", "no")])
    clean = record("clean", seed=8, qas=[("What is the title?", "Revenue")])  # same question, other answer
    kept, report = curate([trimmed, whole, clean], [EvalQAOverlap(evals)])
    kept = list(kept)
    assert [r.key for r in kept] == ["trimmed", "clean"]
    assert kept[0].messages == [{"role": "user", "content": IMAGE_MARKER + "Min?"},
                                {"role": "assistant", "content": "3"}]
    assert kept[1] is clean
    result = report.filters[0]
    assert result.dropped == 1 and result.examples[0]["key"] == "whole"
    assert dict(result.counts) == {"exchanges_removed": 2, "records_trimmed": 1}


def test_curate_report_counts_and_files(tmp_path):
    dup = blocky_image(9)
    records = [record("ok", seed=10), record("tiny", size=(8, 8)), record("dup", image=dup),
               record("dup-2", image=dup), record("dup-3", image=dup), record("dup-4", image=dup),
               record("loop", seed=11, qas=[("Q?", "no no no no no")])]
    filters = standard_filters(skip=["near_duplicates"])
    assert [f.name for f in filters] == ["min_image_size", "max_aspect_ratio", "empty_or_garbled_text",
                                         "answer_length", "repeated_ngrams", "exact_duplicates"]
    kept, report = curate(records, filters, max_examples=2)
    assert [r.key for r in kept] == ["ok", "dup"]
    data = report.as_dict()
    assert (data["seen"], data["kept"], data["dropped"]) == (7, 2, 5)
    by_name = {f["name"]: f for f in data["filters"]}
    assert by_name["min_image_size"]["dropped"] == 1 and by_name["repeated_ngrams"]["dropped"] == 1
    assert by_name["exact_duplicates"]["dropped"] == 3
    assert [e["key"] for e in by_name["exact_duplicates"]["examples"]] == ["dup-2", "dup-3"]  # at most 2
    json_path, md_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == data
    markdown = md_path.read_text()
    assert "| exact_duplicates |  | 3 |" in markdown and "- `dup-2`: same image bytes as dup" in markdown


def test_standard_filters_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown filter name"):
        standard_filters(skip=["exact_dupes"])


def test_cli_curate_end_to_end(tmp_path, eval_dir):
    source = tmp_path / "train"
    dup = blocky_image(20)
    write_shards(source, [record("keep-0", seed=21), record("keep-1", image=dup),
                          record("exact-dup", image=dup), record("near-dup", image=blocky_image(21, fmt="JPEG")),
                          record("leak", image=blocky_image(101, size=(80, 80))),
                          record("qa-leak", seed=22, qas=[("Max?", "45")]),
                          record("garbled", seed=23, qas=[("Q?", "\ufffd\ufffd\ufffd")])])
    out = tmp_path / "curated"
    assert main(["curate", "--input", str(source), "--out", str(out), "--eval", str(eval_dir),
                 "--near-dup-threshold", "20", "--examples", "1"]) == 0
    assert [r.key for r in iter_records(find_shards(out))] == ["keep-0", "keep-1"]
    manifest = verify_manifest(out)
    assert manifest["generator"] == "curate" and manifest["num_samples"] == 2
    assert manifest["params"]["filters"]["near_duplicates"] == {"threshold": 20}
    report = json.loads((out / "curation_report.json").read_text())
    dropped = {f["name"]: f["dropped"] for f in report["filters"]}
    assert dropped == {"min_image_size": 0, "max_aspect_ratio": 0, "eval_image_overlap": 1, "eval_qa_overlap": 1,
                       "empty_or_garbled_text": 1, "answer_length": 0, "repeated_ngrams": 0,
                       "exact_duplicates": 1, "near_duplicates": 1}
    assert report["eval_records"] == 2 and report["unreadable_input_records"] == 0
    assert all(len(f["examples"]) <= 1 for f in report["filters"])
    assert (out / "curation_report.md").is_file()

    # Templated data keeps its question/answer pairs when that filter is left out.
    assert main(["curate", "--input", str(source), "--out", str(out), "--eval", str(eval_dir),
                 "--skip", "eval_qa_overlap", "near_duplicates", "--overwrite"]) == 0
    assert [r.key for r in iter_records(find_shards(out))] == ["keep-0", "keep-1", "near-dup", "qa-leak"]
    assert main(["curate", "--input", str(source), "--out", str(source)]) == 2  # one error line (test_output_rule)
