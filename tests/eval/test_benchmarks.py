"""Benchmark loaders: fixture parquet files in each dataset's Hugging Face schema (as `hf download`
leaves them), corrupt images, missing folders, the jsonl format and held-out synthetic shards."""
from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eval.benchmarks import BENCHMARKS, load_benchmark, write_jsonl
from tests.helpers import make_records

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the `datasets` Image feature
STRINGS = pa.list_(pa.string())
CORRUPT = b"\x89PNG\r\n\x1a\n this is not a png"


def png(colour: str = "red", size: int = 8, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format=fmt)
    return out.getvalue()


def image_cell(data: bytes) -> dict:
    return {"bytes": data, "path": None}


def write_parquet(path, schema: pa.Schema, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


CHARTQA = pa.schema([("type", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("image", IMAGE)])
# HuggingFaceM4/ChartQA: `label` a list of answers, `human_or_machine` a class label (0 human, 1 machine)
CHARTQA_M4 = pa.schema([("image", IMAGE), ("query", pa.string()), ("label", STRINGS), ("human_or_machine", pa.int64())])
DOCVQA = pa.schema([("questionId", pa.string()), ("question", pa.string()), ("question_types", STRINGS),
                    ("image", IMAGE), ("docId", pa.int64()), ("ucsf_document_id", pa.string()),
                    ("ucsf_document_page_no", pa.string()), ("answers", STRINGS), ("data_split", pa.string())])
INFOVQA = pa.schema([("questionId", pa.string()), ("question", pa.string()), ("answers", STRINGS),
                     ("answer_type", STRINGS), ("image", IMAGE), ("image_url", pa.string()),
                     ("operation/reasoning", STRINGS), ("ocr", pa.string()), ("data_split", pa.string())])
# HuggingFaceM4/DocumentVQA: lmms-lab's columns with integer ids, in data/
DOCVQA_M4 = pa.schema([("questionId", pa.int32()), ("question", pa.string()), ("question_types", STRINGS),
                       ("image", IMAGE), ("docId", pa.int32()), ("ucsf_document_id", pa.string()),
                       ("ucsf_document_page_no", pa.string()), ("answers", STRINGS)])
# pixparse/docvqa-single-page-questions: question_id
DOCVQA_PIXPARSE = pa.schema([("image", IMAGE), ("question_id", pa.int64()), ("question", pa.string()),
                             ("answers", STRINGS), ("data_split", pa.string())])
TEXTVQA = pa.schema([("image_id", pa.string()), ("question_id", pa.int32()), ("question", pa.string()),
                     ("question_tokens", STRINGS), ("image", IMAGE), ("image_width", pa.int32()),
                     ("image_height", pa.int32()), ("flickr_original_url", pa.string()),
                     ("flickr_300k_url", pa.string()), ("answers", STRINGS), ("image_classes", STRINGS),
                     ("set_name", pa.string()), ("ocr_tokens", STRINGS)])
AI2D = pa.schema([("question", pa.string()), ("options", STRINGS), ("answer", pa.string()), ("image", IMAGE)])


def docvqa_row(qid: str, answers: list[str], image: bytes) -> dict:
    return {"questionId": qid, "question": f"What is {qid}?", "question_types": ["form"], "image": image_cell(image),
            "docId": 7, "ucsf_document_id": "abc", "ucsf_document_page_no": "1", "answers": answers,
            "data_split": "validation"}


def infovqa_row(qid: str, answers: list[str]) -> dict:
    return {"questionId": qid, "question": "How many?", "answers": answers, "answer_type": ["single span"],
            "image": image_cell(png("blue")), "image_url": "http://x", "operation/reasoning": ["counting"],
            "ocr": "{}", "data_split": "validation"}


def textvqa_row(qid: int, question: str, answers: list[str]) -> dict:
    return {"image_id": "img", "question_id": qid, "question": question, "question_tokens": question.split(),
            "image": image_cell(png("green", fmt="JPEG")), "image_width": 8, "image_height": 8,
            "flickr_original_url": "", "flickr_300k_url": "", "answers": answers, "image_classes": ["Sign"],
            "set_name": "val", "ocr_tokens": ["STOP"]}


def ai2d_row(answer: str, image: bytes | None = None) -> dict:
    return {"question": "Which animal eats grass?", "options": ["wolf", "deer", "hawk", "fox"], "answer": answer,
            "image": image_cell(image or png("white"))}

# ---- parquet benchmarks ----------------------------------------------------------------------------------


def test_chartqa_subsets_prompt_scoring_and_a_corrupt_image(tmp_path, caplog):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", CHARTQA, [
        {"type": "human_test", "question": "What is the peak?", "answer": "52", "image": image_cell(png())},
        {"type": "augmented_test", "question": "Which year?", "answer": "2019", "image": image_cell(png("blue"))},
        {"type": "human_test", "question": "Broken?", "answer": "no", "image": image_cell(CORRUPT)}])
    bench = load_benchmark("chartqa", tmp_path)
    with caplog.at_level(logging.WARNING):
        items = list(bench)
    assert [(i.id, i.subset, i.golds) for i in items] == [("chartqa-test-00000", "human", ["52"]),
                                                          ("chartqa-test-00001", "augmented", ["2019"])]
    assert [row_id for row_id, _ in bench.skipped] == ["chartqa-test-00002"]
    assert "chartqa-test-00002" in caplog.text and "cannot be decoded" in caplog.text
    first = items[0]
    assert first.prompt == "What is the peak?\nAnswer the question with a single word."
    assert first.load_image().size == (8, 8)
    assert first.score("50") == 1.0 and first.score("60") == 0.0   # relaxed accuracy, 5%
    settings = bench.settings()
    assert settings["dataset_id"] == "lmms-lab/ChartQA" and settings["split"] == "test"
    assert settings["max_new_tokens"] == 16 and settings["skipped_rows"] == 1
    assert settings["prompt"] == "{question}\nAnswer the question with a single word."


def test_chartqa_in_the_huggingfacem4_layout_has_the_same_subsets_and_every_label(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", CHARTQA_M4, [
        {"image": image_cell(png()), "query": "What is the peak?", "label": ["52"], "human_or_machine": 0},
        {"image": image_cell(png("blue")), "query": "Which year?", "label": ["2019", "2019.0"], "human_or_machine": 1},
        {"image": image_cell(png()), "query": "No answer?", "label": [], "human_or_machine": 0}])
    bench = load_benchmark("chartqa", tmp_path)
    items = list(bench)
    assert [(i.id, i.subset, i.golds) for i in items] == [("chartqa-test-00000", "human", ["52"]),
                                                          ("chartqa-test-00001", "augmented", ["2019", "2019.0"])]
    assert bench.skipped == [("chartqa-test-00002", "no gold answer")]
    assert items[0].prompt == "What is the peak?\nAnswer the question with a single word."
    assert items[1].score("2019") == 1.0 and items[1].load_image().getpixel((0, 0)) == (0, 0, 255)
    assert bench.settings()["layout"] == "HuggingFaceM4/ChartQA"


def test_chartqa_layouts_agree_on_the_same_questions(tmp_path):
    """The same three questions in both layouts give the same items (ids, prompts, golds, subsets, images)."""
    rows = [("human_test", 0, "Peak?", "52"), ("augmented_test", 1, "Year?", "2019"), ("human_test", 0, "Low?", "3")]
    write_parquet(tmp_path / "lmms" / "data" / "test-00000-of-00001.parquet", CHARTQA,
                  [{"type": t, "question": q, "answer": a, "image": image_cell(png(c))}
                   for (t, _, q, a), c in zip(rows, ["red", "blue", "green"])])
    write_parquet(tmp_path / "m4" / "data" / "test-00000-of-00001.parquet", CHARTQA_M4,
                  [{"image": image_cell(png(c)), "query": q, "label": [a], "human_or_machine": h}
                   for (_, h, q, a), c in zip(rows, ["red", "blue", "green"])])
    lmms, m4 = load_benchmark("chartqa", tmp_path / "lmms"), load_benchmark("chartqa", tmp_path / "m4")
    assert list(lmms) == list(m4) and len(list(m4)) == 3
    assert (lmms.settings()["layout"], m4.settings()["layout"]) == ("lmms-lab/ChartQA", "HuggingFaceM4/ChartQA")


def test_docvqa_reads_its_config_folder_only_and_scores_with_anls(tmp_path):
    write_parquet(tmp_path / "DocVQA" / "validation-00000-of-00002.parquet", DOCVQA,
                  [docvqa_row("101", ["Johnson", "Mr. Johnson"], png())])
    write_parquet(tmp_path / "DocVQA" / "validation-00001-of-00002.parquet", DOCVQA,
                  [docvqa_row("102", ["1998"], png("blue"))])
    write_parquet(tmp_path / "DocVQA" / "test-00000-of-00001.parquet", DOCVQA, [docvqa_row("900", [], png())])
    write_parquet(tmp_path / "InfographicVQA" / "validation-00000-of-00001.parquet", INFOVQA,
                  [infovqa_row("555", ["12"])])
    items = list(load_benchmark("docvqa", tmp_path))
    assert [(i.id, i.golds, i.metric) for i in items] == [("101", ["Johnson", "Mr. Johnson"], "anls"),
                                                          ("102", ["1998"], "anls")]
    assert items[0].prompt == "What is 101?\nAnswer the question using a single word or phrase."
    assert items[0].score("jonson") == pytest.approx(1 - 1 / 7)

    info = load_benchmark("infovqa", tmp_path)  # the whole repo in one folder: each config reads its own
    assert [(i.id, i.golds) for i in info] == [("555", ["12"])]
    assert info.settings()["config"] == "InfographicVQA" and info.settings()["max_new_tokens"] == 32


@pytest.mark.parametrize("name", ["docvqa", "infovqa"])
def test_document_qa_in_the_huggingfacem4_and_pixparse_layouts(tmp_path, name):
    m4 = [{"questionId": qid, "question": f"What is {qid}?", "question_types": ["form"], "image": image_cell(png()),
           "docId": 7, "ucsf_document_id": "abc", "ucsf_document_page_no": "1", "answers": answers}
          for qid, answers in ((101, ["Johnson"]), (102, None))]  # None: how its test split stores no answers
    write_parquet(tmp_path / "m4" / "data" / "validation-00000-of-00001.parquet", DOCVQA_M4, m4)
    write_parquet(tmp_path / "m4" / "data" / "test-00000-of-00001.parquet", DOCVQA_M4, m4[:1])
    bench = load_benchmark(name, tmp_path / "m4")
    assert [(i.id, i.golds, i.question) for i in bench] == [("101", ["Johnson"], "What is 101?")]
    assert bench.skipped[0][0] == "102" and "no gold answers" in bench.skipped[0][1]
    assert bench.settings()["layout"] == "lmms-lab/DocVQA, HuggingFaceM4/DocumentVQA"

    write_parquet(tmp_path / "pixparse" / "validation.parquet", DOCVQA_PIXPARSE, [
        {"image": image_cell(png("blue")), "question_id": 7, "question": "Date?", "answers": ["1998", "'98"],
         "data_split": "validation"}])
    bench = load_benchmark(name, tmp_path / "pixparse")
    [item] = list(bench)
    assert (item.id, item.golds, item.metric) == ("7", ["1998", "'98"], "anls") and item.score("98") > 0.5
    assert bench.settings()["layout"] == "pixparse/docvqa-single-page-questions"


def test_rows_without_answers_are_skipped_by_id(tmp_path):
    write_parquet(tmp_path / "validation-00000-of-00001.parquet", DOCVQA,
                  [docvqa_row("1", ["a"], png()), docvqa_row("2", [], png())])
    bench = load_benchmark("docvqa", tmp_path)  # files directly in the folder are found too
    assert [i.id for i in bench] == ["1"] and bench.skipped[0][0] == "2"


def test_textvqa_ids_capitalised_prompt_and_vqa_accuracy(tmp_path):
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", TEXTVQA,
                  [textvqa_row(34602, "what does the sign say?", ["stop"] * 9 + ["stop sign"])])
    [item] = list(load_benchmark("textvqa", tmp_path))
    assert item.id == "34602" and len(item.golds) == 10 and item.metric == "vqa_accuracy"
    assert item.prompt == "What does the sign say?\nAnswer the question using a single word or phrase."
    assert item.load_image().size == (8, 8)  # JPEG bytes decode too
    assert item.score("Stop.") == 1.0 and item.score("stop sign") == pytest.approx(0.3)


def test_ai2d_mask_and_no_mask_variants(tmp_path):
    write_parquet(tmp_path / "ai2d" / "data" / "test-00000-of-00001.parquet", AI2D,
                  [ai2d_row("1"), ai2d_row("7"), ai2d_row("0", image=CORRUPT)])
    bench = load_benchmark("ai2d", tmp_path / "ai2d")
    [item] = list(bench)
    assert item.golds == ["B"] and item.options == ["wolf", "deer", "hawk", "fox"]
    assert item.prompt == ("Which animal eats grass?\nA. wolf\nB. deer\nC. hawk\nD. fox\n"
                           "Answer with the option's letter from the given choices directly.")
    assert item.score("B") == 1.0 and item.score("The answer is (B) deer.") == 1.0 and item.score("A") == 0.0
    assert [row_id for row_id, _ in bench.skipped] == ["ai2d-test-00001", "ai2d-test-00002"]  # bad index, image
    assert bench.settings()["variant"] == "mask"

    write_parquet(tmp_path / "ai2d_no_mask" / "test.parquet", AI2D, [ai2d_row("3")])
    no_mask = load_benchmark("ai2d_no_mask", tmp_path / "ai2d_no_mask")
    assert [i.golds for i in no_mask] == [["D"]]
    assert no_mask.settings()["variant"] == "no_mask"
    assert no_mask.settings()["dataset_id"] == "Efficient-Large-Model/ai2d-no-mask"


def test_a_missing_folder_names_it_and_the_download_command(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark("docvqa", folder)
    message = str(err.value)
    assert str(folder) in message
    assert (f'hf download lmms-lab/DocVQA --repo-type dataset --include "DocVQA/validation-*.parquet" '
            f"--local-dir {folder}") in message
    assert "huggingface-cli download" in message


def test_a_folder_without_the_split_lists_what_it_has(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", TEXTVQA, [textvqa_row(1, "q", ["a"])])
    with pytest.raises(FileNotFoundError, match="no 'validation' parquet files.*data/train-00000-of-00001.parquet"):
        load_benchmark("textvqa", tmp_path)


def test_a_file_in_another_schema_names_every_layout_and_what_it_misses(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", AI2D, [ai2d_row("0")])
    with pytest.raises(ValueError) as err:
        list(load_benchmark("chartqa", tmp_path))
    message = str(err.value)
    assert "test-00000-of-00001.parquet" in message and "match no known layout" in message
    assert "lmms-lab/ChartQA (columns question, answer, type, image), missing ['type']" in message
    assert "HuggingFaceM4/ChartQA (columns query, label, human_or_machine, image), missing ['query', 'label'" in message
    write_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", AI2D, [ai2d_row("0")])
    with pytest.raises(ValueError, match=r"lmms-lab/DocVQA, HuggingFaceM4/DocumentVQA .*missing \['questionId'"):
        list(load_benchmark("docvqa", tmp_path))
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", CHARTQA, [])
    with pytest.raises(ValueError, match=r"no column\(s\) \['options'\]"):  # a one-layout benchmark
        list(load_benchmark("ai2d", tmp_path))


def test_a_missing_folder_names_the_other_layouts_too(tmp_path):
    with pytest.raises(FileNotFoundError, match="copies from lmms-lab/ChartQA; HuggingFaceM4/ChartQA are read too"):
        load_benchmark("chartqa", tmp_path / "nowhere")


def test_unknown_names_and_a_jsonl_without_a_path(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'mmmu'"):
        load_benchmark("mmmu", tmp_path)
    with pytest.raises(ValueError, match="needs a path"):
        load_benchmark("jsonl")
    for spec in BENCHMARKS.values():  # every parquet benchmark names where its files come from
        assert not spec.dataset_id or (spec.split and spec.include and spec.default_path.startswith("benchmarks/"))

# ---- jsonl -----------------------------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_every_field(tmp_path):
    write_parquet(tmp_path / "ai2d" / "data" / "test-00000-of-00001.parquet", AI2D, [ai2d_row("2")])
    write_parquet(tmp_path / "tv" / "data" / "validation-00000-of-00001.parquet", TEXTVQA,
                  [textvqa_row(5, "what brand?", ["sony"] * 10)])
    write_parquet(tmp_path / "cq" / "data" / "test-00000-of-00001.parquet", CHARTQA,
                  [{"type": "human_test", "question": "Max?", "answer": "9", "image": image_cell(png())}])
    items = (list(load_benchmark("ai2d", tmp_path / "ai2d")) + list(load_benchmark("textvqa", tmp_path / "tv"))
             + list(load_benchmark("chartqa", tmp_path / "cq")))
    path = write_jsonl(items, tmp_path / "subset" / "mine.jsonl")
    assert (tmp_path / "subset" / "mine_images").is_dir()
    back = list(load_benchmark("jsonl", path))
    assert back == items
    assert [i.prompt for i in back] == [i.prompt for i in items]


def test_jsonl_written_by_hand(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png())
    (tmp_path / "img" / "bad.png").write_bytes(CORRUPT)
    lines = [{"image": "img/a.png", "question": "Total?", "answers": ["42", 42.0], "metric": "relaxed_accuracy"},
             {"image": "img/a.png", "question": "Colour?", "answers": [1], "metric": "multiple_choice_accuracy",
              "options": ["blue", "red"], "id": "mc-1", "subset": "colour"},
             {"image": "img/missing.png", "question": "?", "answers": ["x"], "metric": "exact_match"},
             {"image": "img/bad.png", "question": "?", "answers": ["x"], "metric": "exact_match"}]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    bench = load_benchmark("jsonl", path)
    with caplog.at_level(logging.WARNING):
        items = list(bench)
    assert [(i.id, i.golds, i.prompt_template, i.subset) for i in items] == [
        ("task-1", ["42", "42.0"], "question_only", ""), ("mc-1", ["B"], "lmms_eval_mcq", "colour")]
    assert items[0].prompt == "Total?" and items[0].score("43") == 1.0
    assert items[1].prompt.startswith("Colour?\nA. blue\nB. red\n") and items[1].score("red") == 1.0
    assert [row_id for row_id, _ in bench.skipped] == ["task-3", "task-4"]
    assert "missing.png" in caplog.text and "task-4" in caplog.text
    assert bench.settings()["metric"] == "per item"


@pytest.mark.parametrize("line,error", [
    ("{not json", r"task.jsonl:1: not valid JSON"),
    ('{"image": "a.png", "question": "q"}', r"task.jsonl:1: missing \['answers', 'metric'\]"),
    ('{"image": "a.png", "question": "q", "answers": "x", "metric": "anls"}', "non-empty list"),
    ('{"image": "a.png", "question": "q", "answers": ["x"], "metric": "bleu"}', "metric 'bleu' is not one of"),
    ('{"image": "a.png", "question": "q", "answers": ["A"], "metric": "multiple_choice_accuracy"}',
     "needs an 'options'"),
    ('{"image": "a.png", "question": "q", "answers": ["x"], "metric": "anls", "prompt_template": "x"}',
     "prompt_template 'x' is not one of"),
])
def test_jsonl_errors_name_the_line(tmp_path, line, error):
    path = tmp_path / "task.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=error):
        list(load_benchmark("jsonl", path))


def test_jsonl_missing_file_and_a_vqa_warning(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_benchmark("jsonl", tmp_path / "nope.jsonl")
    (tmp_path / "a.png").write_bytes(png())
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"image": "a.png", "question": "q", "answers": ["x"], "metric": "vqa_accuracy"}))
    with caplog.at_level(logging.WARNING):
        assert len(list(load_benchmark("jsonl", path))) == 1
    assert "can never reach 1" in caplog.text

# ---- held-out synthetic shards ---------------------------------------------------------------------------


def test_synthetic_shards_one_item_per_question_with_its_type(tmp_path, caplog):
    from data_pipelines.shards import ShardWriter

    records = make_records(3)
    records[1].image = CORRUPT
    with ShardWriter(tmp_path, generator="test", split="test", maxcount=2) as writer:
        for record in records:
            writer.write(record)
    bench = load_benchmark("synthetic", tmp_path)
    with caplog.at_level(logging.WARNING):
        items = list(bench)
    assert [i.id for i in items] == ["r0-00000-0", "r0-00000-1", "r0-00002-0", "r0-00002-1"]
    assert [i.subset for i in items] == ["colour", "count"] * 2
    assert items[0].golds == [records[0].messages[1]["content"]] and items[0].metric == "relaxed_accuracy"
    assert items[0].prompt == "What colour are the bars?"
    assert [row_id for row_id, _ in bench.skipped] == ["r0-00001-0", "r0-00001-1"]
    assert "r0-00001-0" in caplog.text
    assert bench.settings()["max_new_tokens"] == 8


def test_synthetic_records_with_other_than_one_image_are_skipped_by_key(tmp_path):
    from data_pipelines.shards import ShardWriter

    import dataclasses
    one, two, none = make_records(3)
    # Valid records (one <image> per image, or none), which the held-out benchmark still leaves out.
    two = dataclasses.replace(two, extra_images=[(png("blue"), "png")], messages=[
        {**two.messages[0], "content": "<image><image>" + two.messages[0]["content"].replace("<image>", "")},
        *two.messages[1:]])
    none = dataclasses.replace(none, image=None, messages=[
        {**none.messages[0], "content": none.messages[0]["content"].replace("<image>", "")}, *none.messages[1:]])
    with ShardWriter(tmp_path, generator="test", split="test") as writer:
        for record in (one, two, none):
            writer.write(record)
    bench = load_benchmark("synthetic", tmp_path)
    assert [i.id for i in bench] == ["r0-00000-0", "r0-00000-1"]
    assert [row_id for row_id, _ in bench.skipped] == ["r0-00001", "r0-00002"]
    assert "2 images" in bench.skipped[0][1] and "0 images" in bench.skipped[1][1]
    assert bench.skipped_rows == 4  # each stood for its two questions


def test_synthetic_missing_folder_says_how_to_make_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_pipelines synth charts"):
        load_benchmark("synthetic", tmp_path / "none")
