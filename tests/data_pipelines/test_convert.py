"""Converters: every format on fixture files written here in the exact published schemas, bad rows
counted and skipped, images kept byte for byte, shards and manifest, and the command line end to end."""
import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines.__main__ import main
from data_pipelines.convert import ConversionStats
from data_pipelines.convert import checked_image_bytes as encode_image
from data_pipelines.convert import (convert, convert_captions, convert_cauldron, convert_chartqa, convert_llava,
                                    convert_pixmo_docs)
from data_pipelines.shards import read_manifest, verify_manifest
from molmini.data.reader import find_shards, iter_records
from molmini.data.records import IMAGE_MARKER

# The Hugging Face `Image` feature as Arrow stores it.
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image_bytes(fmt: str = "PNG", colour=(200, 40, 40), size=(48, 40)) -> bytes:
    img = Image.new("RGB", size, "white")
    img.paste(colour, (4, 4, size[0] // 2, size[1] - 4))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def hf_image(data: bytes | None = None, path: str | None = None) -> dict:
    return {"bytes": data, "path": path}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_encode_image_keeps_png_and_jpeg_bytes_and_reencodes_others():
    png, jpeg, gif = image_bytes("PNG"), image_bytes("JPEG"), image_bytes("GIF")
    assert encode_image(png) == (png, "png")
    assert encode_image(jpeg) == (jpeg, "jpg")
    data, ext = encode_image(gif)
    assert ext == "png" and Image.open(io.BytesIO(data)).format == "PNG"
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8)).save(cmyk, format="TIFF")
    data, ext = encode_image(cmyk.getvalue())
    assert ext == "png" and Image.open(io.BytesIO(data)).mode == "RGB"


@pytest.fixture
def llava_files(tmp_path):
    images = tmp_path / "images"
    (images / "coco").mkdir(parents=True)
    files = {"coco/a.png": image_bytes("PNG"), "b.jpg": image_bytes("JPEG", (0, 90, 200)),
             "c.gif": image_bytes("GIF", (0, 160, 0)), "d.png": image_bytes("PNG", (90, 90, 90)),
             "corrupt.png": b"\x89PNG\r\n\x1a\n not really"}
    for name, data in files.items():
        (images / name).write_bytes(data)

    def turns(*values):
        return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]

    entries = [
        {"id": "1.a", "image": "coco/a.png", "conversations": turns("<image>\nWhat is red?", "A box.")},
        {"id": "2", "image": "coco/a.png", "conversations": turns("What colour?\n<image>", "Red.", "Sure?", "Yes.")},
        {"id": "3", "image": "b.jpg", "conversations": turns("<image>\nDescribe.", "A blue box.")},
        {"id": "4", "image": "c.gif", "conversations": turns("<image>\nColour?", "Green.")},
        {"id": "5", "image": "missing.png", "conversations": turns("<image>\nHi?", "Hi.")},
        {"id": "6", "image": "corrupt.png", "conversations": turns("<image>\nHi?", "Hi.")},
        {"id": "7", "image": "b.jpg", "conversations": []},
        {"id": "8", "conversations": turns("Write a haiku about rain.", "Soft rain on the roof.", "Another?", "No.")},
        {"id": "9", "image": "b.jpg", "conversations": turns("<image>\nUnanswered?")},
        {"id": "10", "image": "b.jpg", "conversations": [{"from": "system", "value": "x"}]},
        {"id": "11", "image": ["b.jpg", "c.gif"], "conversations": turns("<image>\n<image>\nSame?", "No.")},
        {"id": "12", "image": "d.png", "conversations": turns("<image><image>\nTwice?", "Once.")},
        {"id": "13", "image": 5, "conversations": turns("<image>\nHi?", "Hi.")},
    ]
    json_path = tmp_path / "llava.json"
    json_path.write_text(json.dumps(entries))
    return json_path, images, files


def test_llava_merges_rows_per_image_and_skips_bad_rows(llava_files, caplog):
    json_path, images, files = llava_files
    stats = ConversionStats()
    with caplog.at_level(logging.WARNING):
        records = list(convert_llava(json_path, images, stats=stats))
    assert [r.key for r in records] == ["llava-1_a", "llava-3", "llava-4", "llava-8", "llava-11"]
    merged = records[0]
    assert merged.messages == [user("<image>\nWhat is red?"), assistant("A box."), user("What colour?"),
                               assistant("Red."), user("Sure?"), assistant("Yes.")]
    assert merged.meta == {"ids": ["1.a", "2"], "image": "coco/a.png"}
    assert (merged.image, merged.image_ext) == (files["coco/a.png"], "png")
    assert (records[1].image, records[1].image_ext) == (files["b.jpg"], "jpg")
    assert records[2].image_ext == "png" and Image.open(io.BytesIO(records[2].image)).format == "PNG"
    assert all((r.source, r.task) == ("llava", "instruct") for r in records)

    assert (stats.rows, stats.records, stats.text_only, stats.multi_image) == (13, 5, 1, 1)
    assert stats.skipped == {"missing_image_file": 1, "undecodable_image": 1, "empty_conversation": 1,
                             "invalid_conversation": 2, "image_marker_mismatch": 1, "invalid_image": 1}
    assert "ids ['12']" in stats.examples["image_marker_mismatch"][0]
    assert "missing.png" in caplog.text and "id '9'" in caplog.text  # each warning names its row


def test_llava_text_only_and_multi_image_entries_become_records(llava_files):
    json_path, images, files = llava_files
    records = {r.key: r for r in convert_llava(json_path, images)}
    text = records["llava-8"]  # LLaVA-665k's text-only conversations: kept, not skipped
    assert (text.image, text.num_images, text.images, text.meta) == (None, 0, [], {"ids": ["8"]})
    assert text.messages == [user("Write a haiku about rain."), assistant("Soft rain on the roof."), user("Another?"),
                             assistant("No.")]
    pair = records["llava-11"]
    assert pair.num_images == 2 and pair.images[0] == (files["b.jpg"], "jpg") and pair.images[1][1] == "png"
    assert pair.meta == {"ids": ["11"], "images": ["b.jpg", "c.gif"]}
    assert pair.messages[0] == user("<image>\n<image>\nSame?")


def test_llava_one_record_per_row(llava_files):
    json_path, images, _ = llava_files
    records = list(convert_llava(json_path, images, group_by_image=False, source="mix", task="vqa"))
    assert [r.key for r in records] == ["mix-1_a", "mix-2", "mix-3", "mix-4", "mix-8", "mix-11"]
    assert records[1].messages[0] == user("What colour?\n<image>")  # its own first turn keeps the marker
    assert records[0].image == records[1].image


def write_parquet(path, rows: dict, schema: pa.Schema):
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


CAULDRON_SCHEMA = pa.schema([
    ("images", pa.list_(IMAGE_STRUCT)),
    ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))),
])


def test_cauldron_one_record_per_row_with_all_texts(tmp_path):
    png = image_bytes("PNG")
    (tmp_path / "on_disk.png").write_bytes(png)
    texts = [{"user": "Question: which box?\nAnswer:", "assistant": "The red one.", "source": "ai2d"},
             {"user": "How many boxes?", "assistant": "1", "source": "ai2d"}]
    rows = {"images": [[hf_image(png)], [hf_image(png), hf_image(png)], [hf_image(png)], [hf_image(b"garbage")],
                       [hf_image(path="on_disk.png")], []],
            "texts": [texts, texts, [], texts, texts[:1], texts]}
    path = write_parquet(tmp_path / "train-00000-of-00001.parquet", rows, CAULDRON_SCHEMA)
    stats = ConversionStats()
    records = list(convert_cauldron(path, tmp_path, stats=stats))
    assert [r.key[-7:] for r in records] == ["0000000", "0000001", "0000004"]
    assert records[0].key == "cauldron-train-00000-of-00001-0000000"
    first = records[0]
    assert first.messages == [user("Question: which box?\nAnswer:"), assistant("The red one."),
                              user("How many boxes?"), assistant("1")]
    assert (first.image, first.image_ext, first.source, first.task) == (png, "png", "the_cauldron/ai2d", "vqa")
    assert first.meta == {"file": "train-00000-of-00001", "row": 0, "text_sources": ["ai2d"]}
    assert records[1].images == [(png, "png"), (png, "png")]  # a multi-image row keeps every image
    assert records[2].image == png  # read from the struct's path
    assert stats.skipped == {"no_image": 1, "empty_conversation": 1, "undecodable_image": 1}
    assert (stats.rows, stats.records, stats.multi_image) == (6, 3, 1)


def test_cauldron_reads_arrow_stream_files(tmp_path):
    """`datasets.save_to_disk` writes Arrow stream files (data-00000-of-00001.arrow)."""
    table = pa.table({"images": [[hf_image(image_bytes("JPEG"))]],
                      "texts": [[{"user": "Q?", "assistant": "A.", "source": "vqarad"}]]}, schema=CAULDRON_SCHEMA)
    folder = tmp_path / "saved"
    folder.mkdir()
    with pa.ipc.new_stream(folder / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    records = list(convert_cauldron(folder, source="vqarad-custom"))
    assert len(records) == 1 and records[0].source == "vqarad-custom" and records[0].image_ext == "jpg"


PIXMO_DOCS_SCHEMA = pa.schema([
    ("image", IMAGE_STRUCT), ("image_id", pa.string()),
    # `datasets` stores a Sequence of {question, answer} as a struct of lists.
    ("questions", pa.struct([("question", pa.list_(pa.string())), ("answer", pa.list_(pa.string()))])),
])


def test_pixmo_docs_all_questions_of_an_image_in_one_record(tmp_path):
    png = image_bytes("PNG")
    rows = {"image": [hf_image(png), hf_image(png), hf_image(png), hf_image(None)],
            "image_id": ["doc.0001", "doc-2", "doc-3", "doc-4"],
            "questions": [{"question": ["What is the title?", "How many rows?"], "answer": ["Budget", "4"]},
                          {"question": ["Q?", "Q2?"], "answer": ["A"]},
                          {"question": [], "answer": []},
                          {"question": ["Q?"], "answer": ["A"]}]}
    path = write_parquet(tmp_path / "charts.parquet", rows, PIXMO_DOCS_SCHEMA)
    stats = ConversionStats()
    records = list(convert_pixmo_docs(path, stats=stats))
    assert len(records) == 1
    record = records[0]
    assert record.key == "pixmo-docs-doc_0001" and record.meta == {"image_id": "doc.0001"}
    assert record.messages == [user("What is the title?"), assistant("Budget"), user("How many rows?"),
                               assistant("4")]
    assert (record.source, record.task, record.image) == ("pixmo-docs", "doc_qa", png)
    assert stats.skipped == {"invalid_conversation": 1, "empty_conversation": 1, "missing_image": 1}


CHARTQA_SCHEMA = pa.schema([("image", IMAGE_STRUCT), ("query", pa.string()), ("label", pa.list_(pa.string())),
                            ("human_or_machine", pa.int64())])


@pytest.fixture
def chartqa_parquet(tmp_path):
    chart_a, chart_b = image_bytes("PNG", (10, 10, 200)), image_bytes("PNG", (200, 10, 10))
    rows = {"image": [hf_image(chart_a), hf_image(chart_b), hf_image(chart_a), hf_image(chart_b),
                      hf_image(b"not an image")],
            "query": ["Highest bar?", "Lowest bar?", "Value of 2020?", "Empty label?", "Broken?"],
            "label": [["Sales"], ["Costs"], ["45", "45.0"], [], ["x"]],
            "human_or_machine": [0, 1, 1, 0, 0]}
    return write_parquet(tmp_path / "train-00000-of-00001.parquet", rows, CHARTQA_SCHEMA), chart_a, chart_b


def test_chartqa_groups_questions_by_image(chartqa_parquet):
    path, chart_a, chart_b = chartqa_parquet
    stats = ConversionStats()
    records = list(convert_chartqa(path, stats=stats))
    assert [r.image for r in records] == [chart_a, chart_b]
    first = records[0]
    assert first.key == "chartqa-train-00000-of-00001-0000000"
    assert first.messages == [user("Highest bar?"), assistant("Sales"), user("Value of 2020?"), assistant("45")]
    assert first.meta == {"rows": ["train-00000-of-00001/0", "train-00000-of-00001/2"],
                          "labels": [["Sales"], ["45", "45.0"]], "subsets": ["human", "augmented"]}
    assert (first.source, first.task) == ("chartqa", "chart_qa")
    assert stats.skipped == {"empty_conversation": 1, "undecodable_image": 1}
    assert (stats.rows, stats.records) == (5, 2)


def test_chartqa_one_record_per_row(chartqa_parquet):
    path, chart_a, _ = chartqa_parquet
    records = list(convert_chartqa(path, group_by_image=False))
    assert [r.messages[0]["content"] for r in records] == ["Highest bar?", "Lowest bar?", "Value of 2020?"]
    assert records[2].image == chart_a and records[2].meta["subsets"] == ["augmented"]


def test_chartqa_in_the_lmms_lab_layout_converts_to_the_same_records(chartqa_parquet, tmp_path):
    path, _, _ = chartqa_parquet
    m4 = pq.read_table(path).to_pylist()
    lmms = [{"type": ["human_test", "augmented_test"][row["human_or_machine"]], "question": row["query"],
             "answer": row["label"][0] if row["label"] else None, "image": row["image"]} for row in m4]
    schema = pa.schema([("type", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                        ("image", IMAGE_STRUCT)])
    other = tmp_path / "lmms" / "test-00000-of-00001.parquet"
    other.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(lmms, schema=schema), other)
    stats = ConversionStats()
    records, expected = list(convert_chartqa(other, stats=stats)), list(convert_chartqa(path))
    assert [(r.image, r.messages, r.meta["subsets"]) for r in records] == \
        [(r.image, r.messages, r.meta["subsets"]) for r in expected]
    assert records[0].meta["labels"] == [["Sales"], ["45"]]  # lmms-lab keeps one answer per question
    assert stats.skipped == {"empty_conversation": 1, "undecodable_image": 1}


def test_chartqa_names_both_layouts_when_neither_fits(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", {"image": [hf_image(image_bytes())], "query": ["Q"]},
                         pa.schema([("image", IMAGE_STRUCT), ("query", pa.string())]))
    with pytest.raises(ValueError) as err:
        list(convert_chartqa(path))
    assert "x.parquet" in str(err.value) and "match no known layout" in str(err.value)
    assert "HuggingFaceM4/ChartQA (columns query, label, human_or_machine, image), missing ['label', " \
           "'human_or_machine']" in str(err.value)
    assert "lmms-lab/ChartQA (columns question, answer, type, image), missing" in str(err.value)


def test_captions_jsonl(tmp_path):
    (tmp_path / "pics").mkdir()
    png = image_bytes("PNG")
    (tmp_path / "pics" / "cat.1.png").write_bytes(png)
    lines = [json.dumps({"image": "pics/cat.1.png", "caption": "A red box on white."}), "",
             "{not json", json.dumps({"image": "pics/dog.png", "caption": "A dog."}),
             json.dumps({"image": "pics/cat.1.png", "caption": "   "}), json.dumps({"caption": "No image."})]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    stats = ConversionStats()
    records = list(convert_captions(jsonl, prompt="Caption this.", stats=stats))
    assert len(records) == 1
    assert records[0].key == "captions-pics_cat_1"
    assert records[0].messages == [user(IMAGE_MARKER + "Caption this."), assistant("A red box on white.")]
    assert (records[0].task, records[0].image, records[0].meta) == ("caption", png, {"image": "pics/cat.1.png"})
    assert stats.rows == 5  # the blank line is not a row
    assert stats.skipped == {"invalid_json": 1, "missing_image_file": 1, "empty_conversation": 1, "no_image": 1}
    assert f"{jsonl} line 3" in stats.examples["invalid_json"]


def test_convert_writes_shards_and_manifest(chartqa_parquet, tmp_path):
    path, chart_a, chart_b = chartqa_parquet
    out = tmp_path / "shards"
    manifest, stats = convert("chartqa", path, out, shard_size=1, progress=False, source="chartqa-human")
    assert verify_manifest(out) == read_manifest(out) == manifest
    assert manifest["num_samples"] == 2 and len(manifest["shards"]) == 2
    assert manifest["counts_by_source"] == {"chartqa-human": 2}
    assert manifest["counts_by_task"] == {"chart_qa": 2}
    assert manifest["generator"] == "convert-chartqa"
    assert manifest["params"]["conversion"] == stats.as_dict()
    assert manifest["params"]["conversion"]["skipped"] == {"empty_conversation": 1, "undecodable_image": 1}
    records = list(iter_records(find_shards(out)))
    assert [r.image for r in records] == [chart_a, chart_b]
    assert records[0].messages[1] == assistant("Sales")


def test_cli_convert_llava_end_to_end(llava_files, tmp_path, capsys):
    json_path, images, files = llava_files
    out = tmp_path / "out"
    assert main(["convert", "llava", "--input", str(json_path), "--images", str(images), "--out", str(out),
                 "--shard-size", "2", "--task", "conversation", "--max-skipped-fraction", "1"]) == 0
    manifest = verify_manifest(out)
    assert manifest["num_samples"] == 5 and len(manifest["shards"]) == 3
    assert manifest["counts_by_task"] == {"conversation": 5}
    conversion = manifest["params"]["conversion"]
    assert conversion["skipped"]["missing_image_file"] == 1
    assert (conversion["text_only"], conversion["multi_image"]) == (1, 1)
    assert "5 records in 3 shards from 13 rows" in capsys.readouterr().out
    records = list(iter_records(find_shards(out)))
    assert [r.key for r in records] == ["llava-1_a", "llava-3", "llava-4", "llava-8", "llava-11"]
    assert [r.num_images for r in records] == [1, 1, 1, 0, 2]  # read back from the shards as written
    assert records[4].images[0] == (files["b.jpg"], "jpg")
