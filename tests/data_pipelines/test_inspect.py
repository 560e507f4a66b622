"""The contact sheet a person looks at."""
from __future__ import annotations

from PIL import Image

from data_pipelines.__main__ import main
from data_pipelines.inspect import LINE_HEIGHT
from data_pipelines.shards import ShardWriter
from tests.helpers import make_records


def sheet_of(tmp_path, name, records):
    with ShardWriter(tmp_path / name, generator="test") as w:
        for r in records:
            w.write(r)
    out = tmp_path / f"{name}.png"
    assert main(["inspect", "--input", str(tmp_path / name), "--out", str(out), "--num", "4", "--cols", "2",
                 "--tile-px", "64"]) == 0
    return Image.open(out).convert("RGB")


def test_contact_sheet_shows_the_requested_records_and_reports_unreadable_ones(tmp_path):
    records = make_records(7)
    clean = sheet_of(tmp_path, "clean", records[:1] + records[2:])
    records[1].image = b"not an image"
    with_bad = sheet_of(tmp_path, "bad", records)
    assert clean.width == with_bad.width == 2 * (64 + 16)  # two columns of 64 px tiles
    assert clean.height > 2 * (64 + 16)  # two rows of tiles with their questions under them
    # the same four readable records, plus one line naming the unreadable one
    assert with_bad.height == clean.height + LINE_HEIGHT + 8
    assert with_bad.crop((0, 0, clean.width, clean.height)).tobytes() == clean.tobytes()
