"""The streaming dataset: splitting by process and worker, shuffling, and skipping bad records."""
from __future__ import annotations

import io
import random

import pytest
import torch

from data_pipelines.shards import ShardWriter
from molmini.data.reader import find_shards, iter_records
from molmini.data.records import Record
from molmini.data.stream import ShardStream
from tests.helpers import check_exact_resume, make_records


def write_shards(folder, records, per_shard):
    with ShardWriter(folder, generator="test", maxcount=per_shard) as w:
        for r in records:
            w.write(r)
    return find_shards(folder)


def keys_transform(record: Record, rng: random.Random) -> dict:
    record.load_image()  # decode, as the training transform does
    return {"key": record.key}


def test_processes_and_workers_read_disjoint_shards_covering_all(tmp_path):
    records = make_records(24)
    shards = write_shards(tmp_path, records, per_shard=3)  # 8 shards
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, keys_transform, shuffle_buffer=5, seed=1, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        seen.append([s["key"] for s in loader])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(r.key for r in records)


def test_shuffle_is_seeded_and_reorders(tmp_path):
    records = make_records(30)
    shards = write_shards(tmp_path, records, per_shard=10)
    run = lambda seed: [s["key"] for s in ShardStream(shards, keys_transform, shuffle_buffer=8, seed=seed)]  # noqa: E731
    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0) != [r.key for r in records] and sorted(run(0)) == sorted(r.key for r in records)


def test_endless_mode_cycles(tmp_path):
    shards = write_shards(tmp_path, make_records(4), per_shard=4)
    stream = iter(ShardStream(shards, keys_transform, endless=True))
    assert len([next(stream) for _ in range(10)]) == 10


def test_too_few_shards_for_the_processes_is_a_clear_error(tmp_path):
    shards = write_shards(tmp_path, make_records(4), per_shard=4)
    with pytest.raises(ValueError, match="1 shards cannot be split over 2 processes"):
        ShardStream(shards, keys_transform, world_size=2)


def test_empty_folder_error_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*has no .tar shards"):
        find_shards(tmp_path)


def test_corrupt_image_is_counted_logged_and_skipped(tmp_path, caplog):
    records = make_records(6)
    records[2].image = records[2].image[:40]  # a truncated PNG
    shards = write_shards(tmp_path, records, per_shard=6)
    with caplog.at_level("WARNING"):
        out = list(ShardStream(shards, keys_transform))
    assert [s["key"] for s in out] == [r.key for i, r in enumerate(records) if i != 2]
    assert out[-1]["skipped"][2] == 1
    assert records[2].key in caplog.text and "cannot be decoded" in caplog.text


def test_truncated_tar_keeps_the_readable_records(tmp_path):
    records = make_records(8)
    shards = write_shards(tmp_path, records, per_shard=8)
    data = open(shards[0], "rb").read()
    # cut inside a member: the reader must report it (a cut exactly at a member boundary reads as a shorter
    # tar, which only the manifest's counts can reveal)
    open(shards[0], "wb").write(data[: len(data) // 2 + 700])
    errors = []
    got = [r.key for r in iter_records(shards, on_error=errors.append)]
    assert 0 < len(got) < 8 and got == [r.key for r in records[: len(got)]]
    assert errors, "the truncated member must be reported"


@pytest.mark.parametrize("workers,batch_size,stop_after", [(0, None, 7), (2, None, 9), (2, 4, 3), (2, 4, 4)])
def test_resumed_stream_continues_exactly_where_it_stopped(tmp_path, workers, batch_size, stop_after):
    shards = write_shards(tmp_path, make_records(40), per_shard=5)

    def transform(record, rng):  # a random choice per sample: it must repeat after a resume too
        return {"key": f"{record.key}:{rng.randint(0, 999)}"}

    check_exact_resume(lambda resume: ShardStream(shards, transform, shuffle_buffer=6, seed=3, endless=True,
                                                  resume=resume),
                       seed=3, workers=workers, batch_size=batch_size, stop_after=stop_after, more=6)


def test_resume_with_other_settings_is_refused(tmp_path):
    from molmini.data.stream import StreamPosition
    shards = write_shards(tmp_path, make_records(8), per_shard=4)
    state = StreamPosition(workers=2, world_size=1, seed=0)
    with pytest.raises(ValueError, match="resume with the same settings"):
        next(iter(ShardStream(shards, keys_transform, seed=0, resume=state)))
