"""The one record reader (molmini/data/reader.py): shards in, checked records out in order; every bad member
group counted once by reason however often it is read; a worker's counts travel as one SkipReport."""
from __future__ import annotations

import pytest

from molmini.data.reader import BadRecords, SkipReport, add_counts, find_shards, read_records
from tests.data.test_bad_records import members, write_tar
from tests.helpers import make_records


def test_records_come_back_in_shard_order_and_bad_groups_are_counted_once(tmp_path):
    good = make_records(5, seed=7)
    entries = members(good[0]) + [("broken.json", b"{oops"), ("broken.png", b"x")] + members(good[1])
    first = write_tar(tmp_path / "a-000.tar", entries)
    second = write_tar(tmp_path / "a-001.tar", [m for r in good[2:] for m in members(r)] + members(good[0]))
    assert find_shards(tmp_path) == [first, second]
    bad = BadRecords(on_skip=lambda skip: None)
    keys = [r.key for r in read_records([first, second], bad)]
    assert keys == [r.key for r in good]  # the repeat of good[0] in the second shard is not read twice
    assert bad.by_reason == {"duplicate_key": 1, "invalid_json": 1}
    list(read_records([first, second], bad))  # a second pass over the same shards counts nothing new
    assert bad.total == 2


def test_an_empty_or_missing_folder_says_how_to_fill_it(tmp_path):
    for folder in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(FileNotFoundError, match="python -m data_pipelines synth charts"):
            find_shards(folder)


def test_skip_reports_merge_by_reason_and_keep_their_worker():
    a = SkipReport(0, 1, 3, {"invalid_json": 2, "truncated_shard": 1})
    b = SkipReport(0, 1, 1, {"invalid_json": 1})
    merged = SkipReport.merge(0, 1, [a, b, {}])
    assert merged == SkipReport(0, 1, 4, {"invalid_json": 3, "truncated_shard": 1})
    assert (merged.rank, merged.worker, merged.total) == (0, 1, 4)
    assert merged.by_reason == add_counts(a.by_reason, b.by_reason)
    assert SkipReport.merge(1, 0, []) == SkipReport(1, 0, 0, {})
