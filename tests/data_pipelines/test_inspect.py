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


def test_draw_boxes_outlines_the_recorded_text_boxes_and_nothing_else(tmp_path):
    import numpy as np

    from data_pipelines.synth.charts import synthesize
    synthesize(tmp_path / "charts", 2, seed=1, image_px=128, shard_size=2, progress=False)
    plain, boxed = tmp_path / "plain.png", tmp_path / "boxed.png"
    for out, extra in ((plain, []), (boxed, ["--draw-boxes"])):
        assert main(["inspect", "--input", str(tmp_path / "charts"), "--out", str(out), "--num", "1",
                     "--tile-px", "128", *extra]) == 0
    a = np.asarray(Image.open(plain).convert("RGB")).astype(int)[8:136, 8:136]
    b = np.asarray(Image.open(boxed).convert("RGB")).astype(int)[8:136, 8:136]
    changed = np.argwhere((a != b).any(-1))
    assert len(changed)
    red = (b[..., 0] > 200) & (b[..., 1] < 60) | (b[..., 0] > 200) & (b[..., 1] > 100) & (b[..., 2] < 60)
    assert red[tuple(changed.T)].mean() > 0.95  # what changed is the outlines
