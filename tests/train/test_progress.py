"""Progress bars of the long commands: drawn on stderr on a terminal by the main process only, log lines
printed above them, and stdout (the tables and result lines scripts read) the same with or without them."""
from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from data_pipelines.shards import verify_manifest
from eval.__main__ import main as evaluation
from molmini.progress import bars_enabled, logs_around_bars, progress_bar
from tests.helpers import synth_tiny_charts


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def charts(tmp_path_factory):
    return synth_tiny_charts(tmp_path_factory.mktemp("charts"), train_shard_size=8)


def as_terminal(monkeypatch) -> FakeTerminal:
    """stderr as a terminal, on the main process. Called in the test itself: pytest's capture sets sys.stderr
    again between a fixture and the test."""
    monkeypatch.delenv("RANK", raising=False)
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_bars_are_drawn_on_a_terminal_by_the_main_process_only(monkeypatch):
    as_terminal(monkeypatch)
    assert bars_enabled()
    monkeypatch.setenv("RANK", "1")
    assert not bars_enabled()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe
    assert not bars_enabled()


def test_manifest_verification_counts_shards_on_stderr(charts, capsys, monkeypatch):
    terminal = as_terminal(monkeypatch)
    manifest = verify_manifest(charts / "train")
    assert len(manifest["shards"]) == 4 and "verify" in terminal.getvalue() and "4/4" in terminal.getvalue()
    assert capsys.readouterr().out == ""
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    verify_manifest(charts / "train", progress=False)
    assert quiet.getvalue() == ""


def test_a_log_line_during_a_bar_prints_whole_above_it(monkeypatch):
    terminal = as_terminal(monkeypatch)
    root = logging.getLogger()
    handler = logging.StreamHandler(terminal)
    root.addHandler(handler)
    try:
        with logs_around_bars(), progress_bar(range(3), desc="work") as bar:
            for i in bar:
                if i == 1:
                    logging.getLogger("molmini.test").warning("shard 1 was skipped")
    finally:
        root.removeHandler(handler)
    lines = terminal.getvalue().replace("\r", "\n").splitlines()
    assert "shard 1 was skipped" in lines  # on a line of its own, not inside a bar's redraw


def test_eval_heldout_draws_a_bar_and_prints_the_same_table(charts, tiny_model, tmp_path, capsys,
                                                            monkeypatch):
    terminal = as_terminal(monkeypatch)
    tiny_model.save_pretrained(tmp_path / "checkpoint")
    args = ["heldout", "--model", str(tmp_path / "checkpoint"), "--test-dir", str(charts / "test"),
            "--train-dir", str(charts / "train"), "--batch-size", "4", "--limit", "10"]
    assert evaluation(args) == 0
    with_bar = capsys.readouterr().out
    assert "held-out" in terminal.getvalue() and "10/10" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert evaluation(args) == 0
    assert capsys.readouterr().out == with_bar and "overall" in with_bar


def test_eval_run_draws_a_bar_per_benchmark_and_prints_the_same_lines(charts, tmp_path, capsys,
                                                                      monkeypatch):
    terminal = as_terminal(monkeypatch)
    def run(out) -> str:
        assert evaluation(["run", "--baselines", "majority", "--benchmarks", f"synthetic={charts / 'test'}",
                           "--out", str(out)]) == 0
        return capsys.readouterr().out.replace(str(out), "OUT")
    with_bar = run(tmp_path / "a")
    n = json.loads((tmp_path / "a" / "results.json").read_text())["results"][0]["n"]
    assert "on synthetic" in terminal.getvalue() and f" {n}item " in terminal.getvalue()  # every item counted
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert run(tmp_path / "b") == with_bar and "answered now" in with_bar


def test_tokenizer_progress_changes_only_what_is_shown():
    from molmini.data.tokenizer import train_bpe_tokenizer
    from tests.helpers import corpus
    shown, hidden = (train_bpe_tokenizer(corpus(), vocab_size=300, progress=p) for p in (True, False))
    assert shown.get_vocab() == hidden.get_vocab()


def test_without_a_console_handler_logging_is_left_as_it_is():
    before = list(logging.getLogger().handlers)  # pytest's capture handlers, none on stderr itself
    with logs_around_bars():
        assert logging.getLogger().handlers == before


def test_off_a_terminal_progress_is_a_few_plain_lines(monkeypatch):
    """A log file gets no carriage-return frames: one line per 10% of the total and one at the end."""
    monkeypatch.delenv("RANK", raising=False)
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    with progress_bar(total=1000, desc="synth", unit="img") as bar:
        for _ in range(1000):
            bar.update(1)
        bar.set_postfix(loss="0.123")
    for _ in progress_bar(range(37), desc="verify"):
        pass
    text = log_file.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    synth, verify = [line for line in lines if line.startswith("synth")], [line for line in lines if "verify" in line]
    assert len(synth) == 10 and synth[0].startswith("synth: 100/1000 img (10%)") and "loss=0.123" in synth[-1]
    assert 1 <= len(verify) <= 11 and verify[-1].startswith("verify: 37/37")
    assert len(lines) == len(synth) + len(verify)


def test_off_a_terminal_a_slow_job_without_a_total_prints_on_a_timer(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    with progress_bar(desc="train", every_s=0.0) as bar:  # every update is "slow": a line each
        bar.update(2)
        bar.update(3)
    assert log_file.getvalue().splitlines()[-1].startswith("train: 5 it")
    assert "\r" not in log_file.getvalue()


def test_progress_is_silent_when_disabled_or_off_the_main_process(monkeypatch):
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    for _ in progress_bar(range(20), enabled=False):
        pass
    monkeypatch.setenv("RANK", "1")
    for _ in progress_bar(range(20)):
        pass
    assert log_file.getvalue() == ""


def test_synthesis_into_a_log_file_writes_plain_lines(tmp_path, monkeypatch):
    from data_pipelines.synth.charts import synthesize
    monkeypatch.delenv("RANK", raising=False)
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    synthesize(tmp_path / "charts", 20, 0, image_px=32, shard_size=10, progress=True)
    text = log_file.getvalue()
    assert "\r" not in text and "20/20 img (100%)" in text and len(text.splitlines()) <= 12
