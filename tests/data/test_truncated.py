"""A shard cut short exactly at a member boundary reads as a valid, shorter tar: the manifest reveals it."""
from __future__ import annotations

import tarfile

import pytest

from data_pipelines.shards import ManifestError, ShardWriter, verify_manifest
from molmini.data.reader import find_shards
from molmini.data.stream import ShardStream
from tests.helpers import make_records


def write(folder):
    records = make_records(8)
    with ShardWriter(folder, generator="test", maxcount=4) as w:
        for r in records:
            w.write(r)
    return records


def cut_after_records(shard, keep: int) -> None:
    """Truncate the tar right before the first member of record number `keep` (a member boundary)."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    offset = members[2 * keep].offset  # two members (json, png) per record
    data = shard.read_bytes()
    shard.write_bytes(data[:offset])


def test_verify_manifest_names_a_shard_cut_at_a_member_boundary(tmp_path):
    write(tmp_path)
    cut_after_records(tmp_path / "shard-000001.tar", keep=2)
    with tarfile.open(tmp_path / "shard-000001.tar") as tar:  # still a readable tar, just shorter
        assert len(tar.getmembers()) == 4
    with pytest.raises(ManifestError) as info:
        verify_manifest(tmp_path)
    message = str(info.value)
    assert "shard-000001.tar: holds 2 samples, manifest says 4 (truncated" in message
    assert "shard-000001.tar: sha256" in message and "shard-000000.tar" not in message


def test_verify_manifest_reports_a_shard_cut_inside_a_member(tmp_path):
    write(tmp_path)
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:700])  # inside the first member's data
    with pytest.raises(ManifestError, match="shard-000000.tar"):
        verify_manifest(tmp_path)


def test_stream_reports_the_missing_samples_by_shard_name(tmp_path, caplog):
    records = write(tmp_path)
    cut_after_records(tmp_path / "shard-000001.tar", keep=3)

    def transform(record, rng):
        return {"key": record.key}

    with caplog.at_level("WARNING"):
        out = list(ShardStream(find_shards(tmp_path), transform))
    assert sorted(s["key"] for s in out) == sorted(r.key for r in records[:7])
    assert "shard-000001.tar: read 3 of the 4 samples its manifest lists" in caplog.text
    assert "shard-000000.tar" not in caplog.text


def test_stream_counts_the_missing_samples_as_skipped(tmp_path):
    import itertools
    write(tmp_path)
    cut_after_records(tmp_path / "shard-000000.tar", keep=1)

    def transform(record, rng):
        return {"key": record.key}

    # Endless: the first sample of the second pass comes after both shards of the first were read.
    out = list(itertools.islice(ShardStream(find_shards(tmp_path), transform, endless=True), 6))
    assert [s["skipped"][2] for s in out][:5] in ([0] * 5, [0] * 4 + [3], [0] + [3] * 4)
    assert out[5]["skipped"][2] == 3  # 4 listed - 1 read, counted once


def test_iter_records_reports_a_short_shard(tmp_path):
    from molmini.data.reader import iter_records
    records = write(tmp_path)
    cut_after_records(tmp_path / "shard-000000.tar", keep=2)
    errors = []
    got = [r.key for r in iter_records(find_shards(tmp_path), on_error=errors.append)]
    assert got == [r.key for r in records[:2] + records[4:]]
    assert errors == ["shard-000000.tar: read 2 of the 4 samples its manifest lists; the shard is truncated "
                      "(regenerate it)"]
