"""`python -m eval run --lmms-eval-layout`: the run's results and predictions in lmms-eval's layout."""
from __future__ import annotations

import json

from eval.lmms_layout import sanitized_model_name

import torch

from tests.eval.test_benchmarks import CHARTQA, image_cell, png, write_parquet
from tests.helpers import synth_tiny_charts, tiny_config


def test_chartqa_results_in_lmms_eval_layout_equal_the_runs_scores(tmp_path, tokenizer):
    from eval.__main__ import main
    from molmini.model.vlm import MolminiModel
    rows = [{"type": t, "question": q, "answer": a, "image": image_cell(png(c))} for t, q, a, c in [
        ("human_test", "What is the peak?", "52", "red"), ("augmented_test", "Which year?", "2019", "blue"),
        ("human_test", "How many bars?", "3", "green"), ("augmented_test", "Lowest value?", "7", "red")]]
    write_parquet(tmp_path / "chartqa" / "data" / "test-00000-of-00001.parquet", CHARTQA, rows)
    torch.manual_seed(0)
    model_dir = MolminiModel(tiny_config().model, tokenizer).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "results"
    charts = synth_tiny_charts(tmp_path / "charts")
    assert main(["run", "--model", str(model_dir), "--benchmarks",
                 f"chartqa={tmp_path / 'chartqa'},synthetic={charts / 'test'}", "--baselines", "majority", "--out", str(out),
                 "--lmms-eval-layout"]) == 0
    entries = json.loads((out / "results.json").read_text())["results"]
    for entry in entries:
        folder = out / "lmms_eval" / sanitized_model_name(entry["model"]["name"])
        (results_file,) = folder.glob("*_results.json")
        written = json.loads(results_file.read_text())
        # each task's higher_is_better names the metric its results row holds (the synthetic one too)
        assert sorted(written["higher_is_better"]) == sorted(written["results"])
        for name, row in written["results"].items():
            (metric,) = written["higher_is_better"][name]
            assert f"{metric},none" in row and written["higher_is_better"][name][metric] is True
        if entry["benchmark"] != "chartqa":
            continue
        task = written["results"]["chartqa"]
        assert task["relaxed_overall,none"] == entry["score"]
        assert task["relaxed_human_split,none"] == entry["per_subset"]["human"]["score"]
        assert task["relaxed_augmented_split,none"] == entry["per_subset"]["augmented"]["score"]
        (samples_file,) = folder.glob("*_samples_chartqa.jsonl")
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        assert [s["doc_id"] for s in samples] == [0, 1, 2, 3]
        assert sum(s["relaxed_overall"] for s in samples) / 4 == entry["score"]
        assert [s["target"] for s in samples] == ["52", "2019", "3", "7"]
