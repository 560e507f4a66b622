"""report.html from `python -m eval run` then `python -m eval report`, over tiny held-out charts with a tiny
checkpoint and the majority baseline: what the page holds, then the page in a real browser (Playwright in
Debian's chromium, opened from disk): filtered to wrong answers, the rows counted and every image loaded.
MOLMINI_DOCS_SCREENSHOTS=1 also saves the page to docs/images/report_page.png."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from eval.__main__ import main as evaluation
from tests.helpers import ROOT, synth_tiny_charts, trained_checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tokenizer, model_config, tmp_path_factory):
    """A report folder over a molmini run (checkpoint and train_log.jsonl) and the majority baseline."""
    root = tmp_path_factory.mktemp("report")
    charts = synth_tiny_charts(root / "charts")
    run = root / "tiny-run"
    checkpoint = trained_checkpoint(model_config, tokenizer, run / "checkpoint")
    (run / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in (1, 2, 3)))
    assert evaluation(["run", "--model", str(checkpoint), "--baselines", "majority", "--benchmarks",
                       f"synthetic={charts / 'test'}", "--out", str(root / "results"), "--batch-size", "8"]) == 0
    assert evaluation(["report", str(root / "results"), "--out", str(root / "out"), "--no-published"]) == 0
    rows = [json.loads(line) for path in sorted((root / "results" / "predictions").glob("*.jsonl"))
            for line in path.read_text().splitlines()]
    return root / "out", rows


def test_the_page_is_one_file_with_scores_bars_confusion_and_every_prediction(report):
    out, rows = report
    page = (out / "report.html").read_text()
    assert "<script src" not in page and "<link" not in page and "http" not in page.split("<body>")[1]
    assert "id='scores'" in page and "tiny-run" in page and "majority (benchmark golds)" in page
    assert "score per question type" in page and "class='bar majority'" in page
    assert "Confusion tables" in page and "gold \\ predicted" in page  # colours: a categorical type
    data = json.loads(page.split('id="data">')[1].split("</script>")[0].replace("\\u003c", "<"))
    assert set(data["models"]) == {"tiny-run", "majority (benchmark golds)"}
    assert len(data["items"]) == len({r["item_id"] for r in rows}) and all(len(i["p"]) == 2 for i in data["items"])
    assert all(i["img"] in data["thumbs"] and (out / data["full"][i["img"]]).is_file() for i in data["items"])
    assert "Training curves: <a href='curves_" in page
    curves = page.split("Training curves: <a href='")[1].split("'")[0]
    assert (out / curves).is_file()


@pytest.mark.slow
def test_in_a_browser_the_wrong_answers_filter_counts_rows_and_every_image_loads(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="browser tests need playwright: pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install chromium")
    out, rows = report
    scores: dict[str, list[float]] = {}
    for row in rows:
        scores.setdefault(row["item_id"], []).append(row["score"])
    wrong = sum(any(s < 1 for s in item) for item in scores.values())
    assert 0 < wrong <= len(scores)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto((out / "report.html").as_uri())
        assert page.locator("#count").inner_text() == f"{len(scores)} items"
        page.locator("#wrong").check()
        assert page.locator("#count").inner_text() == f"{wrong} items"
        shown = page.locator("#gallery tbody tr")
        assert shown.count() == min(wrong, 50)
        page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every((i) => i.complete)")
        widths = page.eval_on_selector_all("#gallery img", "images => images.map((i) => i.naturalWidth)")
        assert len(widths) == shown.count() and all(w > 0 for w in widths)
        assert page.locator("#gallery thead th").all_inner_texts()[-2:] == ["tiny-run", "majority (benchmark golds)"]
        page.select_option("#judge", "majority (benchmark golds)")  # wrong for the baseline only
        majority_wrong = sum(r["score"] < 1 for r in rows if r["model"].startswith("majority"))
        assert page.locator("#count").inner_text() == f"{majority_wrong} items"
        full = page.locator("#gallery a").first.get_attribute("href")
        assert (out / full).is_file()
        page.screenshot(path=str(tmp_path / "report_page.png"))
        if os.environ.get("MOLMINI_DOCS_SCREENSHOTS") == "1":
            page.screenshot(path=str(ROOT / "docs" / "images" / "report_page.png"))
        browser.close()


@pytest.mark.slow
def test_a_2500_item_report_shows_a_page_of_50_rows(tmp_path):
    """ChartQA's size: the page holds every item but builds one page of rows; a benchmark no longer at its
    recorded path leaves the rows without thumbnails (and the report is still written)."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="browser tests need playwright: pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install chromium")
    results = tmp_path / "results"
    (results / "predictions").mkdir(parents=True)
    model = {"name": "m", "kind": "molmini", "num_parameters": 1, "cache_key": "k", "training_cost": None}
    rows = [{"model": "m", "cache_key": "k", "benchmark": "chartqa", "item_id": str(i), "subset": "human",
             "prompt": f"question {i}?", "golds": ["1"], "metric": "relaxed_accuracy", "prediction": str(i % 3),
             "normalised_prediction": str(i % 3), "score": float(i % 3 == 1)} for i in range(2500)]
    (results / "predictions" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"benchmark": "chartqa", "path": str(tmp_path / "gone"), "metric": "relaxed_accuracy",
                "prompt_template": "lmms_eval_chartqa", "prompt": "{question}", "max_new_tokens": 16}
    entry = {"model": model, "benchmark": "chartqa", "n": 2500, "limit": 0, "score": 0.33, "settings": settings,
             "per_subset": {"human": {"n": 2500, "score": 0.33}}, "predictions": "predictions/m.jsonl"}
    (results / "results.json").write_text(json.dumps({"results": [entry]}))
    assert evaluation(["report", str(results), "--out", str(tmp_path / "out"), "--no-published"]) == 0
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((tmp_path / "out" / "report.html").as_uri())
        assert page.locator("#count").inner_text() == "2500 items" and page.locator("#page").inner_text() == \
            "page 1 of 50"
        assert page.locator("#gallery tbody tr").count() == 50
        page.locator("#wrong").check()
        assert page.locator("#count").inner_text() == f"{sum(r['score'] < 1 for r in rows)} items"
        page.locator("#next").click()
        assert page.locator("#page").inner_text() == "page 2 of 34"
        browser.close()
