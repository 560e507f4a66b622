"""The weighted mixture of shard sets: proportions, determinism, splitting, exact resume."""
from __future__ import annotations

import itertools

import pytest
import torch

from data_pipelines.shards import ShardWriter
from molmini.data.reader import find_shards
from molmini.data.stream import MixtureStream, StreamPosition
from tests.helpers import check_exact_resume, make_records


def write_set(folder, seed, n=24, per_shard=3):
    with ShardWriter(folder, generator="test", maxcount=per_shard) as w:
        for r in make_records(n, seed=seed):
            w.write(r)
    return find_shards(folder)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return [write_set(root / f"s{i}", seed=i) for i in range(3)]


def key_only(record, rng):
    return {"key": f"{record.key}:{rng.randint(0, 999)}"}


def set_of(key: str) -> int:
    return int(key[1])  # make_records keys are r{seed}-{index}


def test_realised_proportions_match_the_weights(sets):
    weights = [0.5, 0.3, 0.2]
    stream = iter(MixtureStream(list(zip(sets, weights)), key_only, shuffle_buffer=4, seed=0))
    keys = [next(stream)["key"] for _ in range(3000)]
    counts = [sum(set_of(k) == i for k in keys) for i in range(3)]
    for count, weight in zip(counts, weights):
        assert abs(count / 3000 - weight) < 0.035, counts  # ~4 standard deviations
    # each set is read endlessly in its own shuffled order: all its records appear
    assert {k.split(":")[0] for k in keys if set_of(k) == 2} == {r.key for r in make_records(24, seed=2)}


def test_same_seed_same_sequence_and_zero_weight_never_drawn(sets):
    def take(seed, weights=(1, 1, 1), n=60):
        return [s["key"] for s in itertools.islice(MixtureStream(list(zip(sets, weights)), key_only, 4, seed), n)]
    assert take(0) == take(0) and take(0) != take(1)
    assert not any(set_of(k) == 1 for k in take(0, weights=(1, 0, 2)))


def test_processes_read_disjoint_shards_of_every_set(sets):
    seen = []
    for rank in range(2):
        stream = MixtureStream([(sets[0], 1), (sets[1], 1)], key_only, seed=0, rank=rank, world_size=2)
        seen.append({s["key"].split(":")[0] for s in itertools.islice(stream, 200)})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 48  # 24 records in each of two sets


@pytest.mark.parametrize("workers,batch_size,stop_after", [(0, None, 11), (2, None, 9), (2, 4, 5)])
def test_resumed_mixture_continues_exactly(sets, workers, batch_size, stop_after):
    check_exact_resume(lambda resume: MixtureStream([(sets[0], 0.6), (sets[1], 0.4)], key_only, shuffle_buffer=5,
                                                    seed=7, resume=resume),
                       seed=7, workers=workers, batch_size=batch_size, stop_after=stop_after, more=8)


def test_bad_weights_and_too_few_shards_are_clear_errors(sets, tmp_path):
    with pytest.raises(ValueError, match="weights"):
        MixtureStream([(sets[0], 0), (sets[1], 0)], key_only)
    one_shard = write_set(tmp_path / "one", seed=5, n=3, per_shard=3)
    stream = MixtureStream([(sets[0], 1), (one_shard, 1)], key_only, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    with pytest.raises(ValueError, match="mixture set 1 has 1 shards"):  # worker 1 gets none of set 1
        list(itertools.islice(loader, 4))


def test_config_mixture_entries_become_sources(sets, tmp_path):
    from pathlib import Path

    from molmini.config import load_config
    from molmini.data.stream import mixture_sources
    folders = [str(Path(s[0]).parent) for s in sets[:2]]
    cfg = load_config(None, [f"data.mixture=[{{dir: {folders[0]}, weight: 0.7}}, {{dir: {folders[1]}, weight: 3}}]"])
    assert load_config(None, []).data.mixture == []
    sources = mixture_sources(cfg.data.mixture)
    assert [(shards, w) for shards, w in sources] == [(sets[0], 0.7), (sets[1], 3.0)]
    with pytest.raises(ValueError, match=r"data.mixture\[0\].weight"):
        mixture_sources([{"dir": folders[0], "weight": -1}])
    for weight in (float("nan"), float("inf")):  # NaN passes `weight < 0`; inf makes the other shares NaN
        with pytest.raises(ValueError, match=r"data.mixture\[1\].weight \(the entry for .*finite"):
            mixture_sources([{"dir": folders[0], "weight": 1}, {"dir": folders[1], "weight": weight}])
        with pytest.raises(ValueError, match="finite"):
            MixtureStream([(sets[0], 1), (sets[1], weight)], key_only)
    with pytest.raises(ValueError, match=r"data.mixture\[0\] must be"):
        mixture_sources([{"path": folders[0], "weight": 1}])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mixture_sources([{"dir": str(tmp_path / "nowhere"), "weight": 1}])


def test_training_on_a_mixture_resumes_exactly(sets, tmp_path):
    """train() on data.mixture: both sets are read, and a run resumed from its step-2 checkpoint logs the
    same losses for steps 3-4 as the uninterrupted run."""
    import json

    from molmini.train.loop import train
    from tests.helpers import tiny_config

    folders = [str(__import__("pathlib").Path(s[0]).parent) for s in sets[:2]]

    def cfg(name):
        return tiny_config(f"data.mixture=[{{dir: {folders[0]}, weight: 0.7}}, {{dir: {folders[1]}, weight: 0.3}}]",
                           f"data.test_dir={folders[0]}", "data.synth=null", "data.num_workers=1",
                           "data.shuffle_buffer=4", "train.max_steps=4", "train.batch_size=4", "train.log_every=1",
                           "train.trackers=[]", "train.checkpoint_every=2", "train.keep_checkpoints=3",
                           f"train.output_dir={tmp_path}", f"train.run_name={name}")

    full = train(cfg("full"), tmp_path / "full")
    assert sorted({s.split("/")[-2] for s in full["shards_by_rank"][0]}) == sorted(p.split("/")[-1] for p in folders)
    log = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    # a second run from the full run's step-2 state, in a copy of its folder
    import shutil
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-4", ignore_errors=True)
    assert (tmp_path / "resumed" / "checkpoints" / "step-2").is_dir()
    train(cfg("resumed"), tmp_path / "resumed", resume="auto")
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # steps 1-2 kept from before the resume, 3-4 rerun
    assert [r["loss"] for r in resumed if r["step"] > 2] == [r["loss"] for r in log if r["step"] > 2]
    assert json.loads((tmp_path / "resumed" / "train_summary.json").read_text())["resumed_from_step"] == 2
