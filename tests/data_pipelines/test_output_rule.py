"""The one rule for a data command's --out (docs/data.md): a set another command line wrote is refused
unless --overwrite moves it aside, a result with no record replaces nothing, and a killed run's temporary
folder is cleaned up by the next. Each test is one case of the reliability issue that lost user data."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from data_pipelines.__main__ import main as pipelines
from data_pipelines.convert import write_shards
from data_pipelines.outputs import TEMP_INFIX, WRITER_FILE, remove_stale_temporaries
from data_pipelines.shards import verify_manifest
from tests.helpers import make_records
from tests.helpers.file_hashes import folder_hashes


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def user_shards(tmp_path):
    """A shard set the user has (their test set, say), with a note beside it."""
    folder = tmp_path / "my_set"
    write_shards(make_records(4), folder, generator="convert-llava", params={"input": "theirs.json"},
                 shard_size=2, progress=False)
    (folder / "NOTES.md").write_text("keep me\n")
    return folder


def llava_file(tmp_path, entries, name="rows.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def good_entries(tmp_path, n=3):
    (tmp_path / "a.png").write_bytes(make_records(1)[0].image)
    return [{"id": str(i), "image": "a.png", "conversations": [{"from": "human", "value": f"<image>Q{i}?"},
                                                               {"from": "gpt", "value": "A."}]} for i in range(n)]


# ---- 1. and 4. a result with no record replaces nothing -------------------------------------------------

@pytest.mark.parametrize("entries", [[], "all_missing"], ids=["empty_list", "every_image_missing"])
def test_a_conversion_with_no_record_exits_non_zero_and_keeps_the_output(entries, user_shards, tmp_path, capsys):
    if entries == "all_missing":
        entries = [{"id": str(i), "image": f"gone{i}.png",
                    "conversations": [{"from": "human", "value": "<image>Q?"}, {"from": "gpt", "value": "A"}]}
                   for i in range(3)]
    before = folder_hashes(user_shards)
    # --overwrite too: even a user who allowed replacing the set does not lose it to an empty result.
    code = pipelines(["convert", "llava", "--input", str(llava_file(tmp_path, entries)), "--out", str(user_shards),
                      "--overwrite"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "no record" in line and "left as it was" in line
    if entries:
        assert "3 missing_image_file" in line and "--images" in line  # the reason counts and the fix
    assert folder_hashes(user_shards) == before
    assert not list(tmp_path.glob("my_set.replaced-*")) and not list(tmp_path.glob(".my_set*"))


# ---- 2. curate of something that is not a shard set ------------------------------------------------------

def test_curate_of_a_folder_without_shards_exits_non_zero_and_keeps_the_output(user_shards, tmp_path, capsys):
    not_shards = tmp_path / "photos"
    not_shards.mkdir()
    (not_shards / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    before = folder_hashes(user_shards)
    code = pipelines(["curate", "--input", str(not_shards), "--out", str(user_shards), "--overwrite"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(not_shards) in line
    assert folder_hashes(user_shards) == before


def test_curate_that_keeps_nothing_says_which_filters_dropped_what(tmp_path, capsys):
    src = tmp_path / "in"
    write_shards(make_records(3), src, generator="g", progress=False)
    code = pipelines(["curate", "--input", str(src), "--out", str(tmp_path / "out"), "--min-image-side", "100000"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "kept 0 of 3" in line and "3 min_image_size" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- 3. an --out that holds another command line's set ---------------------------------------------------

@pytest.mark.parametrize("command", ["curate", "convert", "synth"])
def test_an_out_holding_another_commands_set_is_refused_without_overwrite(command, user_shards, tmp_path, capsys):
    src = tmp_path / "src"
    write_shards(make_records(3), src, generator="g", progress=False)
    args = {"curate": ["curate", "--input", str(src)],
            "convert": ["convert", "llava", "--input", str(llava_file(tmp_path, good_entries(tmp_path)))],
            "synth": ["synth", "charts", "--num", "2", "--image-px", "32"]}[command]
    before = folder_hashes(user_shards)
    code = pipelines([*args, "--out", str(user_shards)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(user_shards) in line and "--overwrite" in line
    assert folder_hashes(user_shards) == before


def test_overwrite_moves_the_old_set_aside_and_keeps_the_other_files(user_shards, tmp_path):
    src = tmp_path / "src"
    write_shards(make_records(3), src, generator="g", progress=False)
    old = {n: h for n, h in folder_hashes(user_shards).items() if n != "NOTES.md"}
    assert pipelines(["curate", "--input", str(src), "--out", str(user_shards), "--overwrite"]) == 0
    assert verify_manifest(user_shards)["generator"] == "curate"
    assert (user_shards / "NOTES.md").read_text() == "keep me\n"
    aside, = tmp_path.glob("my_set.replaced-*")
    assert folder_hashes(aside) == old and verify_manifest(aside)["num_samples"] == 4


def test_the_same_command_line_may_replace_its_own_output(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_shards(make_records(3), src, generator="g", progress=False)
    assert pipelines(["curate", "--input", str(src), "--out", str(out)]) == 0
    first = verify_manifest(out)
    # a rerun of the same curation replaces its own set without --overwrite, and moves nothing aside
    assert pipelines(["curate", "--input", str(src), "--out", str(out)]) == 0
    assert verify_manifest(out)["shards"] == first["shards"] and not list(tmp_path.glob("out.replaced-*"))
    write_shards(make_records(2), src, generator="g", progress=False)  # other settings of the input...
    # ... but the same command line: still its own output
    assert pipelines(["curate", "--input", str(src), "--out", str(out)]) == 0


def test_synth_with_other_settings_into_its_own_set_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "charts"
    assert pipelines(["synth", "charts", "--out", str(out), "--num", "2", "--image-px", "32"]) == 0
    assert pipelines(["synth", "charts", "--out", str(out), "--num", "2", "--image-px", "32"]) == 0  # reused
    capsys.readouterr()
    before = folder_hashes(out)
    assert pipelines(["synth", "charts", "--out", str(out), "--num", "3", "--image-px", "32"]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err) and folder_hashes(out) == before
    assert pipelines(["synth", "charts", "--out", str(out), "--num", "3", "--image-px", "32", "--overwrite"]) == 0
    assert verify_manifest(out)["num_samples"] == 3
    aside, = tmp_path.glob("charts.replaced-*")
    assert folder_hashes(aside) == before


# ---- 5. inspect never overwrites a file ---------------------------------------------------------------------

def test_inspect_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    src = tmp_path / "src"
    write_shards(make_records(2), src, generator="g", progress=False)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"my holiday")
    assert pipelines(["inspect", "--input", str(src), "--out", str(photo)]) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert photo.read_bytes() == b"my holiday"
    assert pipelines(["inspect", "--input", str(src), "--out", str(photo), "--overwrite"]) == 0
    assert photo.read_bytes() != b"my holiday"


# ---- 6. a killed run's temporary folder -------------------------------------------------------------------------

def test_a_killed_writers_temporary_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    stale = tmp_path / f".out{TEMP_INFIX}dead"
    stale.mkdir()
    (stale / "shard-000000.tar").write_bytes(b"x" * 1000)
    (stale / WRITER_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    alive = tmp_path / f".out{TEMP_INFIX}alive"  # a writer still running (this very process)
    alive.mkdir()
    (alive / WRITER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    foreign = tmp_path / f".out{TEMP_INFIX}foreign"  # no writer file: not ours, left alone
    foreign.mkdir()
    write_shards(make_records(2), out, generator="g", progress=False)
    assert not stale.exists() and alive.exists() and foreign.exists()
    assert remove_stale_temporaries(out) == []


def test_a_run_killed_mid_write_leaves_a_folder_the_next_run_removes(tmp_path):
    """The real thing: a convert killed with SIGKILL while writing, then a rerun."""
    entries = good_entries(tmp_path, n=2)
    rows = llava_file(tmp_path, entries)
    script = ("import sys, time\n"
              "import data_pipelines.convert as c\n"
              "real = c.ShardWriter.write\n"
              "def slow(self, record):\n"
              "    real(self, record); print('written', flush=True); time.sleep(60)\n"
              "c.ShardWriter.write = slow\n"
              "from data_pipelines.__main__ import main\n"
              f"main(['convert', 'llava', '--input', {str(rows)!r}, '--out', {str(tmp_path / 'out')!r}])\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.stdout.readline().strip() == "written"
    proc.kill()
    proc.wait()
    left = list(tmp_path.glob(f".out{TEMP_INFIX}*"))
    assert len(left) == 1 and not (tmp_path / "out").exists()
    assert pipelines(["convert", "llava", "--input", str(rows), "--out", str(tmp_path / "out")]) == 0
    assert not list(tmp_path.glob(f".out{TEMP_INFIX}*")) and verify_manifest(tmp_path / "out")["num_samples"] == 1


# ---- a conversion that skipped most of its input (the wrong --images folder) ----------------------------------

def test_a_conversion_that_skips_most_rows_fails_unless_the_user_accepts_it(tmp_path, capsys):
    entries = good_entries(tmp_path, n=1) + [
        {"id": f"m{i}", "image": f"elsewhere/{i}.png",
         "conversations": [{"from": "human", "value": "<image>Q?"}, {"from": "gpt", "value": "A"}]} for i in range(3)]
    rows = llava_file(tmp_path, entries)
    out = tmp_path / "out"
    assert pipelines(["convert", "llava", "--input", str(rows), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "skipped 3 of 4 rows" in line and "3 missing_image_file" in line and "--images" in line
    assert "--max-skipped-fraction" in line and not out.exists()
    assert pipelines(["convert", "llava", "--input", str(rows), "--out", str(out), "--max-skipped-fraction", "1"]) == 0
    assert verify_manifest(out)["num_samples"] == 1
    with pytest.raises(SystemExit):  # argparse's own usage error for a bad value
        pipelines(["convert", "llava", "--input", str(rows), "--out", str(out), "--max-skipped-fraction", "nan"])
    assert "from 0 to 1" in capsys.readouterr().err


# ---- 16. 18. 20. bad arguments and rows: counted, or one error line ----------------------------------------

def test_llava_rows_that_are_not_objects_are_counted_as_bad_rows(tmp_path, capsys):
    rows = llava_file(tmp_path, [5, "x", None, *good_entries(tmp_path, n=1)])
    assert pipelines(["convert", "llava", "--input", str(rows), "--out", str(tmp_path / "out"),
                      "--max-skipped-fraction", "1"]) == 0
    conversion = verify_manifest(tmp_path / "out")["params"]["conversion"]
    assert conversion["skipped"] == {"invalid_row": 3} and conversion["records"] == 1


@pytest.mark.parametrize("option", ["--cols", "--num", "--tile-px"])
def test_inspect_with_a_zero_size_is_one_error_line(option, tmp_path, capsys):
    src = tmp_path / "src"
    write_shards(make_records(2), src, generator="g", progress=False)
    assert pipelines(["inspect", "--input", str(src), "--out", str(tmp_path / "s.png"), option, "0"]) == 2
    assert option in one_error_line(capsys.readouterr().err)


def test_curate_onto_its_own_input_is_one_error_line(tmp_path, capsys):
    src = tmp_path / "src"
    write_shards(make_records(2), src, generator="g", progress=False)
    before = folder_hashes(src)
    assert pipelines(["curate", "--input", str(src), "--out", str(src)]) == 2
    assert "--out must differ from --input" in one_error_line(capsys.readouterr().err)
    assert folder_hashes(src) == before


# ---- the property: a data command pointed at a user's data never changes it ------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_no_data_command_changes_user_data_its_out_points_at(seed, tmp_path, capsys):
    """Seeded: random commands (synth, convert, curate, inspect), each with --out at one of a user's things
    (their shard set, a folder of their files, a file), without --overwrite. Each ends with status 0 and
    its counts or status 2 and one `error:` line; the user's things are byte for byte as they were."""
    import random
    rng = random.Random(seed)
    src = tmp_path / "src"
    write_shards(make_records(3), src, generator="g", progress=False)
    rows = llava_file(tmp_path, good_entries(tmp_path) + [7, {"id": "z"}])
    user = tmp_path / "user"
    user.mkdir()
    write_shards(make_records(4), user / "set", generator="convert-llava", params={"input": "x"}, progress=False)
    (user / "files").mkdir()
    (user / "files" / "thesis.txt").write_text("years of work\n")
    (user / "files" / "shard-000000.tar").write_bytes(b"not a tar, but theirs")
    (user / "photo.png").write_bytes(make_records(1)[0].image)
    targets = [user / "set", user / "files", user / "photo.png"]
    empty = llava_file(tmp_path, [], "e.json")
    commands = [["synth", "charts", "--num", "2", "--image-px", "32"], ["synth", "words", "--num", "0"],
                ["convert", "llava", "--input", str(rows)], ["convert", "llava", "--input", str(empty)],
                ["curate", "--input", str(src)], ["curate", "--input", str(user / "files")],
                ["inspect", "--input", str(src)], ["inspect", "--input", str(src), "--cols", "0"]]
    before = folder_hashes(user)
    for _ in range(8):
        command, target = rng.choice(commands), rng.choice(targets)
        code = pipelines([*command, "--out", str(target)])
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, (command, target, err)
        if code == 2:
            one_error_line(err)
        assert folder_hashes(user) == before, (command, target)
    assert not list(tmp_path.glob(f".*{TEMP_INFIX}*")) and not list(user.glob("*.replaced-*"))
