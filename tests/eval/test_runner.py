"""eval run / report end to end: a tiny molmini and tiny random LLaVA, Qwen2-VL and Idefics3 (loaded
through the real AutoModelForImageTextToText / AutoProcessor path) on one synthetic benchmark, resumed
runs, the cache's keys, the report's table and plots."""
from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from eval.__main__ import main
from eval.models import MolminiAdapter, build_adapter
from eval.report import PUBLISHED_SCORES, pareto_front, published_rows
from tests.helpers import tiny_config
from tests.helpers.hf_tiny_vlms import save_tiny_llava, save_tiny_vlm


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    from data_pipelines.synth.charts import synthesize
    from molmini.model.vlm import MolminiModel

    root = tmp_path_factory.mktemp("eval_run")
    synthesize(root / "shards", 8, 0, image_px=32, workers=1, shard_size=8, progress=False)
    torch.manual_seed(0)
    run_dir = root / "molmini_run"
    MolminiModel(tiny_config().model, tokenizer).save_pretrained(run_dir / "checkpoint")
    (run_dir / "train_summary.json").write_text(json.dumps({"wall_time_s": 90.0, "device": "cpu", "num_processes": 1}))
    torch.manual_seed(1)
    other = MolminiModel(tiny_config().model, tokenizer).save_pretrained(root / "other_molmini")
    save_tiny_llava(root / "tiny_llava", tokenizer)
    return {"root": root, "shards": root / "shards", "molmini": run_dir / "checkpoint", "other": other,
            "llava": root / "tiny_llava"}


def count_generated_prompts(monkeypatch) -> list[str]:
    """Every prompt MolminiAdapter.generate is asked to answer, in order."""
    seen: list[str] = []
    original = MolminiAdapter.generate

    def counting(self, images, prompts, max_new_tokens):
        seen.extend(prompts)
        return original(self, images, prompts, max_new_tokens)
    monkeypatch.setattr(MolminiAdapter, "generate", counting)
    return seen


def predictions(out_dir) -> list[dict]:
    return [json.loads(line) for path in sorted((out_dir / "predictions").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def test_llava_and_molmini_in_one_run_and_one_report(workspace):
    out, report = workspace["root"] / "results", workspace["root"] / "report"
    assert main(["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synth-charts={workspace['shards']}",
                 "--baselines", f"majority,text-only:{workspace['molmini']},llava:{workspace['llava']}",
                 "--out", str(out), "--batch-size", "4"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    by_name = {r["model"]["name"]: r for r in results}
    assert set(by_name) == {"molmini_run", "tiny_llava", "majority (benchmark golds)", "text-only molmini_run"}
    llava = by_name["tiny_llava"]
    assert llava["model"]["kind"] == "baseline" and llava["model"]["num_parameters"] > 0
    assert llava["settings"]["max_new_tokens"] == 8 and llava["settings"]["prompt_template"] == "question_only"
    n_items = llava["n"]
    assert n_items > 0 and all(r["n"] == n_items for r in results)
    assert by_name["majority (benchmark golds)"]["score"] > 0   # the most common answer is right sometimes
    rows = predictions(out)
    assert len(rows) == 4 * n_items
    assert {"prediction", "normalised_prediction", "score", "golds", "item_id"} <= set(rows[0])

    assert main(["report", str(out), "--out", str(report)]) == 0
    table = (report / "report.md").read_text()
    assert "| molmini_run | molmini |" in table and "| tiny_llava | baseline |" in table
    for png in ("scores_vs_parameters.png", "scores_vs_training_cost.png"):  # molmini_run recorded its cost
        with Image.open(report / png) as image:
            image.verify()
            assert image.format == "PNG"
    rows = json.loads((report / "report.json").read_text())["rows"]
    assert next(r for r in rows if r["name"] == "molmini_run")["training_hours"] == pytest.approx(90 / 3600)


def test_one_command_puts_molmini_and_hf_baselines_in_one_table_and_plot(workspace):
    root = workspace["root"]
    qwen, idefics = save_tiny_vlm("qwen2_vl", root / "tiny_qwen2_vl"), save_tiny_vlm("idefics3", root / "tiny_idefics3")
    out, report = root / "hf_results", root / "hf_report"
    assert main(["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={workspace['shards']}",
                 "--baselines", f"hf:{qwen},hf:{idefics}", "--out", str(out), "--limit", "6", "--batch-size", "3",
                 "--no-majority"]) == 0
    assert main(["report", str(out), "--out", str(report), "--no-published"]) == 0
    table = (report / "report.md").read_text()
    for row in ("| molmini_run | molmini |", "| tiny_qwen2_vl | baseline |", "| tiny_idefics3 | baseline |"):
        assert row in table
    rows = {r["name"]: r for r in json.loads((report / "report.json").read_text())["rows"]}
    assert set(rows) == {"molmini_run", "tiny_qwen2_vl", "tiny_idefics3"}
    assert all(r["num_parameters"] > 0 and set(r["scores"]) == {"synthetic"} for r in rows.values())  # all plotted
    assert len(predictions(out)) == 3 * 6
    with Image.open(report / "scores_vs_parameters.png") as image:
        image.verify()


def test_the_majority_baseline_is_scored_beside_every_benchmark_by_default(workspace):
    from eval.lmms_layout import sanitized_model_name
    out = workspace["root"] / "default_baseline"
    args = ["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={workspace['shards']}",
            "--limit", "4", "--batch-size", "2", "--lmms-eval-layout"]
    assert main(args + ["--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["model"]["kind"] for r in results] == ["molmini", "baseline"]
    assert results[1]["model"]["name"] == "majority (benchmark golds)" and results[1]["n"] == results[0]["n"]
    # every folder it writes has a file-system-safe name (no spaces or brackets)
    folders = [p.name for p in (out / "lmms_eval").iterdir()]
    assert sanitized_model_name("majority (benchmark golds)") in folders
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in folders), folders
    assert main(args + ["--out", str(workspace["root"] / "no_baseline"), "--no-majority"]) == 0
    results = json.loads((workspace["root"] / "no_baseline" / "results.json").read_text())["results"]
    assert [r["model"]["kind"] for r in results] == ["molmini"]


def test_resume_answers_only_items_not_yet_cached(workspace, monkeypatch):
    out = workspace["root"] / "resume"
    seen = count_generated_prompts(monkeypatch)
    args = ["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={workspace['shards']}",
            "--out", str(out), "--batch-size", "2", "--no-majority"]
    assert main(args + ["--limit", "3"]) == 0
    first = list(seen)
    assert len(first) == 3
    assert main(args) == 0
    total = json.loads((out / "results.json").read_text())["results"][0]["n"]
    assert len(seen) == total and seen[:3] == first    # the first 3 were not asked again
    assert len(predictions(out)) == total
    assert main(args) == 0
    assert len(seen) == total                          # a finished run answers nothing


def test_cache_is_keyed_by_model(workspace, monkeypatch):
    out = workspace["root"] / "two_models"
    seen = count_generated_prompts(monkeypatch)
    for model in (workspace["molmini"], workspace["other"]):
        assert main(["run", "--no-majority", "--model", str(model), "--benchmarks",
                     f"synthetic={workspace['shards']}",
                     "--out", str(out), "--limit", "4"]) == 0
    assert len(seen) == 8                              # the second model did not reuse the first's answers
    results = json.loads((out / "results.json").read_text())["results"]
    assert len({r["model"]["cache_key"] for r in results}) == 2
    assert len(list((out / "predictions").glob("*.jsonl"))) == 2


def write_benchmark(folder, bars: list[int]) -> None:
    """A synthetic benchmark folder of records keyed item0, item1, ... whatever their content: record i is a
    red chart of bars[i] bars, asked the same two questions (so only its image tells it apart)."""
    import shutil

    from data_pipelines.shards import ShardWriter
    from molmini.data.records import Record
    from tests.helpers import png_bytes
    shutil.rmtree(folder, ignore_errors=True)
    with ShardWriter(folder, generator="test", maxcount=4) as writer:
        for i, n in enumerate(bars):
            writer.write(Record(key=f"item{i}", image=png_bytes("red", bars=n), messages=[
                {"role": "user", "content": "<image>What colour are the bars?"},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": "How many bars are there?"}, {"role": "assistant", "content": str(n)}],
                meta={"qa_types": ["colour", "count"]}))


def test_a_cached_answer_is_reused_only_for_the_same_item_model_and_settings(workspace, tmp_path, monkeypatch,
                                                                             caplog):
    """Records replaced by others under the same keys were scored with the old records' answers (60 of 66
    reused); a checkpoint rewritten in place with the same sizes and times likewise. Each answer is now
    keyed on the item's images and prompt, the checkpoint's contents and the generation settings."""
    import os
    import shutil
    seen = count_generated_prompts(monkeypatch)
    bench, model = tmp_path / "bench", tmp_path / "model"
    shutil.copytree(workspace["molmini"], model)
    write_benchmark(bench, [1] * 6)                    # 6 records, 2 questions each
    args = ["run", "--model", str(model), "--benchmarks", f"synthetic={bench}", "--out", str(tmp_path / "out"),
            "--no-majority"]
    assert main(args) == 0 and len(seen) == 12
    write_benchmark(bench, [2, 3, 4, 2, 1, 1])         # the first 4 records replaced, under the same keys
    with caplog.at_level("WARNING", logger="eval.runner"):
        assert main(args) == 0
    assert len(seen) == 12 + 8                          # their 8 questions asked again, the other 4 reused
    assert "8 cached answers were stale" in caplog.text and "4 reused" in caplog.text
    assert main(args) == 0 and len(seen) == 20          # now all 12 are cached

    weights, times = model / "model.safetensors", os.stat(model / "model.safetensors")
    shutil.copyfile(workspace["other"] / "model.safetensors", weights)  # other weights, same size
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))        # and the same times
    assert main(args) == 0 and len(seen) == 32


def test_heldout_out_answers_again_what_changed(workspace, tmp_path, monkeypatch, tiny_model):
    from eval.heldout import evaluate
    seen = count_generated_prompts(monkeypatch)
    bench = tmp_path / "bench"
    write_benchmark(bench, [1] * 4)
    kwargs = {"max_new_tokens": 2, "model_path": str(workspace["molmini"]), "out_dir": tmp_path / "out"}
    evaluate(tiny_model, str(bench), str(bench), **kwargs)
    write_benchmark(bench, [1, 2, 1, 3])
    evaluate(tiny_model, str(bench), str(bench), **kwargs)
    assert len(seen) == 8 + 4
    evaluate(tiny_model, str(bench), str(bench), **{**kwargs, "max_new_tokens": 3})  # other settings: all again
    assert len(seen) == 8 + 4 + 8


def test_a_prompt_template_override_asks_every_item_with_it_and_is_recorded(workspace, monkeypatch, capsys):
    out = workspace["root"] / "override"
    seen = count_generated_prompts(monkeypatch)
    args = ["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={workspace['shards']}",
            "--out", str(out), "--limit", "2", "--no-majority"]
    assert main(args) == 0 and main(args + ["--prompt-template", "lmms_eval_chartqa"]) == 0
    asked_plain, asked_override = seen[:2], seen[2:]
    assert len(asked_override) == 2  # another template is another cache entry: both asked again
    assert all(o == p + "\nAnswer the question with a single word." for p, o in zip(asked_plain, asked_override))
    (entry,) = json.loads((out / "results.json").read_text())["results"]  # the latest result per model, benchmark
    assert entry["settings"]["prompt_template"] == "lmms_eval_chartqa"
    assert entry["settings"]["prompt"] == "{question}\nAnswer the question with a single word."
    capsys.readouterr()
    assert main(args + ["--prompt-template", "no_such"]) == 2
    err = capsys.readouterr().err
    assert "no_such" in err and "question_only" in err


def test_model_specs_pick_adapters(workspace):
    assert type(build_adapter(str(workspace["llava"]))).__name__ == "HFVisionLanguageAdapter"  # detected
    assert type(build_adapter(str(workspace["molmini"]))).__name__ == "MolminiAdapter"
    assert build_adapter("majority").num_parameters == 0
    with pytest.raises(ValueError, match="names no model"):
        build_adapter("llava:")


def test_pareto_front_and_published_rows():
    assert pareto_front([(1, 10), (2, 5), (3, 20), (3, 15), (5, 20)]) == [(1, 10), (3, 20)]
    rows = {r.name: r for r in published_rows(PUBLISHED_SCORES, ["chartqa", "ai2d_no_mask"])}
    assert rows["Molmo-7B-D"].scores == {"chartqa": 84.1, "ai2d_no_mask": 93.2}
    assert rows["Molmo-7B-D"].num_parameters == 8_000_000_000 and rows["GPT-4o-0513"].num_parameters is None


def write_mostly_broken_benchmark(folder, good: int, broken: int) -> None:
    """`good` readable records and `broken` whose image bytes are not an image (2 questions each)."""
    from data_pipelines.shards import ShardWriter
    from molmini.data.records import Record
    from tests.helpers import png_bytes
    with ShardWriter(folder, generator="test", maxcount=4) as writer:
        for i in range(good + broken):
            writer.write(Record(key=f"item{i}", image=png_bytes("red") if i < good else b"not an image at all",
                                messages=[{"role": "user", "content": "<image>What colour are the bars?"},
                                          {"role": "assistant", "content": "red"},
                                          {"role": "user", "content": "Is it red?"},
                                          {"role": "assistant", "content": "Yes"}],
                                meta={"qa_types": ["colour", "compare"]}))


@pytest.mark.parametrize("command", ["run", "heldout"])
def test_an_evaluation_that_skipped_most_of_its_input_exits_non_zero_unless_allowed(workspace, tmp_path, capsys,
                                                                                      command):
    """A LLaVA convert with the wrong --images skipped 24 of 25 rows and exited 0; an evaluation over a folder
    whose images mostly do not decode likewise scored the few that did. Now it fails naming the reason and
    the fix, writes no score, and --max-skipped-fraction 1 accepts it."""
    bench, out = tmp_path / "bench", tmp_path / "out"
    write_mostly_broken_benchmark(bench, good=1, broken=3)        # 6 of 8 questions skipped (75%)
    args = (["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={bench}", "--no-majority"]
            if command == "run" else
            ["heldout", "--model", str(workspace["molmini"]), "--test-dir", str(bench), "--train-dir", str(bench)])
    args += ["--out", str(out), "--max-new-tokens", "2"] if command == "heldout" else ["--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "skipped 6 of 8 questions (75%" in err and "3 undecodable_image" in err
    assert "--max-skipped-fraction 1" in err and "data_pipelines inspect" in err
    assert not (out / "results.json").exists() and not (out / "eval_results.json").exists()
    assert main(args + ["--max-skipped-fraction", "0.8"]) == 0      # a threshold above the share accepts it
    written = out / ("results.json" if command == "run" else "eval_results.json")
    assert written.is_file()
    if command == "run":
        assert json.loads(written.read_text())["results"][0]["n"] == 2   # the 2 readable questions scored
    else:
        assert json.loads(written.read_text())["skipped_records"] == 3


def test_a_benchmark_that_skipped_a_few_items_still_scores(workspace, tmp_path):
    bench, out = tmp_path / "bench", tmp_path / "out"
    write_mostly_broken_benchmark(bench, good=3, broken=1)        # 2 of 8 skipped: under the 50% default
    assert main(["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={bench}",
                 "--no-majority", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["results"][0]["n"] == 6


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "half"])
def test_max_skipped_fraction_must_be_a_fraction(workspace, tmp_path, capsys, value):
    with pytest.raises(SystemExit):
        main(["run", "--model", str(workspace["molmini"]), "--benchmarks", "synthetic=x", "--out", str(tmp_path),
              "--max-skipped-fraction", value])
    assert "is not a fraction from 0 to 1" in capsys.readouterr().err


def test_a_quantized_model_is_named_and_cached_apart_from_the_float_one(workspace, tmp_path, monkeypatch):
    """Quantized answers may differ from the float model's: a results folder keeps both, and neither reuses the
    other's cached answers."""
    seen = count_generated_prompts(monkeypatch)
    bench, out = tmp_path / "bench", tmp_path / "out"
    write_benchmark(bench, [1, 2, 3])
    args = ["run", "--model", str(workspace["molmini"]), "--benchmarks", f"synthetic={bench}", "--no-majority",
            "--out", str(out)]
    assert main(args) == 0 and len(seen) == 6
    assert main(args + ["--quantize", "int8-dynamic"]) == 0 and len(seen) == 12   # asked again, not reused
    assert main(args + ["--quantize", "int8-dynamic"]) == 0 and len(seen) == 12   # its own answers are cached
    results = json.loads((out / "results.json").read_text())["results"]
    by_name = {r["model"]["name"]: r["model"] for r in results}
    assert set(by_name) == {"molmini_run", "molmini_run (int8-dynamic)"}
    assert by_name["molmini_run"]["cache_key"] != by_name["molmini_run (int8-dynamic)"]["cache_key"]
    # its size is reported as trained: quantized layers hold no nn.Parameter
    assert by_name["molmini_run"]["num_parameters"] == by_name["molmini_run (int8-dynamic)"]["num_parameters"]
