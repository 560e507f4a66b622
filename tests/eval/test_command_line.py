"""`python -m eval`'s own checks of its options: each bad value is one `error:` line naming the option, exit
status 2, before any model loads or any shard is read."""
from __future__ import annotations

import pytest

from data_pipelines.shards import ShardWriter
from eval.__main__ import main
from tests.helpers import make_records


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--limit", "-1")])
def test_run_refuses_out_of_range_options_in_the_one_error_form(tmp_path, capsys, option, value):
    code = main(["run", "--baselines", "majority", "--benchmarks", f"synthetic={tmp_path}", "--out",
                 str(tmp_path / "out"), option, value])
    assert code == 2
    line = error_line(capsys)
    assert option in line and value in line


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--max-new-tokens", "0"), ("--limit", "-1")])
def test_heldout_refuses_out_of_range_options_before_loading_the_model(tmp_path, capsys, option, value):
    code = main(["heldout", "--model", "not/loaded", "--test-dir", str(tmp_path), "--train-dir", str(tmp_path),
                 option, value])
    assert code == 2 and option in error_line(capsys)


@pytest.mark.parametrize("command", ["heldout", "run"])
def test_an_out_that_is_a_file_is_one_error_line(tiny_model, tmp_path, capsys, command):
    """A real checkpoint and real shards, so that only --out is wrong (it gave NotADirectoryError)."""
    with ShardWriter(tmp_path / "shards", generator="test", maxcount=4) as writer:
        for record in make_records(4):
            writer.write(record)
    model, shards = tiny_model.save_pretrained(tmp_path / "checkpoint"), str(tmp_path / "shards")
    taken = tmp_path / "results.txt"
    taken.write_text("someone's notes\n")
    args = {"heldout": ["heldout", "--model", str(model), "--test-dir", shards, "--train-dir", shards],
            "run": ["run", "--model", str(model), "--benchmarks", f"synthetic={shards}"]}[command]
    assert main(args + ["--out", str(taken)]) == 2
    line = error_line(capsys)
    assert str(taken) in line and "is a file" in line
    assert taken.read_text() == "someone's notes\n"
