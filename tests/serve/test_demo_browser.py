"""`molmini demo` in a real browser: the Gradio page on a free 127.0.0.1 port over a tiny checkpoint, driven by
Playwright in Debian's chromium. An uploaded chart gets the answer `molmini generate` prints; a broken file gets
a message in the page. MOLMINI_DOCS_SCREENSHOTS=1 also saves the page to docs/images/demo_page.png."""
from __future__ import annotations

import os
import shutil
import socket

import pytest

from tests.helpers import ROOT, tiny_config, trained_checkpoint

pytest.importorskip("gradio", reason="the demo needs gradio: pip install \"molmini[demo]\"")
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: apt-get install chromium")]
QUESTION = "What colour are the bars?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    return trained_checkpoint(tiny_config("model.image.max_crops=4").model, tokenizer,
                              tmp_path_factory.mktemp("demo") / "checkpoint")


@pytest.fixture(scope="module")
def demo_url(checkpoint):
    from molmini.serve.demo import launch
    from molmini.serve.requests import Limits
    port = free_port()
    demo = launch(str(checkpoint), port=port, device="cpu", block=False, limits=Limits(max_new_tokens=64))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def ask(page, path, question: str) -> tuple[str, str]:
    """Upload `path`, ask `question`; (the answer box, the message line) once the page says it is done."""
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    message = page.locator("#message")
    page.wait_for_function("() => /answered|error/.test(document.querySelector('#message').innerText)",
                           timeout=60_000)
    return page.locator("#answer textarea").input_value(), message.inner_text()


def test_an_uploaded_chart_gets_generates_answer_and_a_broken_file_a_message(demo_url, browser, checkpoint,
                                                                            tmp_path, capsys):
    from molmini.cli import main
    from molmini.serve.demo import examples
    chart, question = examples()[0]["image"], examples()[0]["question"]  # a held-out synthetic chart
    assert main(["generate", "--model", str(checkpoint), "--image", chart, "--prompt", question,
                 "--max-new-tokens", "32", "--device", "cpu"]) == 0
    expected = capsys.readouterr().out.strip()

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(demo_url)
    answer, message = ask(page, chart, question)
    assert answer == expected and answer
    assert message.startswith("answered in") and "image tokens" in message
    assert "image tokens" in page.locator("#layout").inner_text()
    assert "no reading head" in page.locator("#reading").inner_text()
    page.screenshot(path=str(tmp_path / "demo_page.png"), full_page=True)
    if os.environ.get("MOLMINI_DOCS_SCREENSHOTS") == "1":
        page.screenshot(path=str(ROOT / "docs" / "images" / "demo_page.png"), full_page=True)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this file was cut short")
    page.goto(demo_url)  # a fresh page: no earlier upload or answer on it
    answer, message = ask(page, broken, QUESTION)
    assert message.startswith("error: broken.png is not an image PIL can read") and answer == ""
    page.close()
