"""The streaming datasets training reads records with: `ShardStream` (one shard set, split by process and
DataLoader worker, a seeded shuffle buffer, exact resume through `StreamPosition`) and `MixtureStream`
(several sets at fixed weights). Records come through shard_reader.py's validated reader.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from molmini.data.reader import (MAX_CONSECUTIVE_SKIPS, BadRecords, ShardReader, Skip, SkipReport, find_shards,
                                 missing_shard_skips, no_usable_record)
from molmini.data.records import Record, RecordError

log = logging.getLogger(__name__)


class ShardStream(torch.utils.data.IterableDataset):
    """Records from webdataset shards, split by node (rank) and by DataLoader worker, through a seeded
    shuffle buffer, each passed through `transform`.

    Records come through `ShardReader`; one that cannot be read or used (corrupt image, bad json, truncated
    tar member, a transform's RecordError such as a conversation over max_length) is logged by key, counted
    once by reason and skipped; every yielded sample carries its worker's running counts in `skipped` so the
    trainer can report them. `endless` cycles over the shards forever, reshuffling each epoch; a pass with
    no readable record, or `max_consecutive_skips` bad records in a row, stops it with UnusableDataError.
    """

    def __init__(self, shards: list[str], transform, shuffle_buffer: int = 0, seed: int = 0,
                 endless: bool = False, rank: int = 0, world_size: int = 1,
                 resume: "StreamPosition | None" = None, max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPS):
        super().__init__()
        if len(shards) < world_size:
            raise ValueError(f"{len(shards)} shards cannot be split over {world_size} processes; write at least "
                             "one shard per process (a smaller shard size gives more shards)")
        self.shards, self.transform = list(shards), transform
        self.shuffle_buffer, self.seed, self.endless = shuffle_buffer, seed, endless
        self.rank, self.world_size = rank, world_size
        self.resume = resume
        self.max_consecutive_skips = max_consecutive_skips

    def rank_shards(self) -> list[str]:
        """The shards this process reads (its workers split them further)."""
        return self.shards[self.rank::self.world_size]

    def _my_shards(self) -> tuple[list[str], int]:
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.resume is not None:
            # The loader takes samples from its workers in turn, starting with worker 0; the interrupted run
            # would next have taken one from worker `next_worker`, so worker slots are rotated to match.
            self.resume.check(self, workers)
            wid = (wid + self.resume.next_worker) % workers
        mine = self.rank_shards()[wid::workers]
        if not mine:
            raise ValueError(f"DataLoader worker {wid} of {workers} on process {self.rank} got no shard: "
                             f"{len(self.shards)} shards for {self.world_size} processes; use fewer workers "
                             "(data.num_workers) or more shards")
        return mine, wid

    def _entries(self, shards: list[str], rng: random.Random) -> Iterator[tuple[int, Record | Skip]]:
        """(pass number, record or skip) for every member group of `shards`, pass after pass when endless."""
        reader = ShardReader(shards)  # keys unique over this worker's shards, on every pass alike
        epoch = 0
        while True:
            order = list(shards)
            rng.shuffle(order)
            records, reasons, last = 0, BadRecords(on_skip=lambda skip: None), ""
            for url in order:
                for entry in reader.entries(url):
                    if isinstance(entry, Skip):
                        reasons.add(entry)
                        last = entry.message
                    else:
                        records += 1
                    yield epoch, entry
            if not records:  # an endless stream would spin over these shards forever
                raise no_usable_record("no readable record", sorted(order), reasons, last)
            if not self.endless:
                return
            epoch += 1

    def _shuffled(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buf: list[dict] = []
        for s in samples:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            i = rng.randrange(len(buf))
            buf[i], s = s, buf[i]
            yield s
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict]:
        shards, wid = self._my_shards()
        start = self.resume.start(self.rank, wid) if self.resume is not None else 0
        for position, out in self.samples(shards, wid, start):
            out["position"] = (self.rank, wid, position)
            yield out

    def samples(self, shards: list[str], wid: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(raw position, transformed sample) for worker `wid` reading `shards`, from raw position `start`
        on. The positions count every member group read, skipped ones included, so they survive a restart.

        Each sample's `skipped` is a SkipReport (rank, worker, bad records so far, {reason: count}); a bad
        record is counted on the first pass only, so an endless stream (or one resumed, whose fast-forward
        counts nothing) reports each once. `max_consecutive_skips` bad records in a row raise UnusableDataError."""
        rng = random.Random(f"{self.seed}-{self.rank}-{wid}")
        bad = BadRecords()
        if self.rank == 0 and wid == 0 and start == 0:
            # The shards the manifest lists that are not on disk, counted by one worker of one process (the
            # others would count them again); a resumed run has them in its saved counts already.
            for skip in missing_shard_skips(self.shards):
                bad.add(skip)
        in_a_row = 0
        for position, (epoch, entry) in enumerate(self._shuffled(self._entries(shards, rng), rng)):
            if position < start:
                continue  # already consumed (and counted) before the restart: fast-forward, no decoding
            if isinstance(entry, Record):
                try:
                    # Randomness of the transform depends on the position only, so a resumed stream repeats it.
                    sample_rng = random.Random(f"{self.seed}-{self.rank}-{wid}-{position}")
                    out = self.transform(entry, sample_rng)
                except RecordError as e:
                    message = str(e) if repr(entry.key) in str(e) else f"record {entry.key!r}: {e}"
                    entry = Skip(entry.key, e.reason, message)
                else:
                    in_a_row = 0
                    out["skipped"] = SkipReport(self.rank, wid, bad.total, bad.by_reason)
                    yield position, out
                    continue
            if epoch == 0:
                bad.add(entry)
            in_a_row += 1
            if in_a_row >= self.max_consecutive_skips:
                raise no_usable_record(f"the last {in_a_row} records read were all skipped (data.max_length, the "
                                       "images and the json are checked per record)", shards, bad, entry.message)


def mixture_sources(entries: list[dict[str, Any]]) -> list[tuple[list[str], float]]:
    """(shards, weight) for each ``{dir, weight}`` entry of a config's ``data.mixture``."""
    sources = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"dir", "weight"}:
            raise ValueError(f"data.mixture[{i}] must be {{dir: FOLDER, weight: NUMBER}}, got {entry!r}")
        weight = entry["weight"]
        # NaN passes `weight < 0`, and one inf weight makes every other set's share NaN: both refused here.
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"data.mixture[{i}].weight (the entry for {entry['dir']!r}) must be a finite, "
                             f"non-negative number, got {weight!r}")
        sources.append((find_shards(entry["dir"]), float(weight)))
    return sources


class MixtureStream(torch.utils.data.IterableDataset):
    """A weighted mixture of shard sets: each sample comes from set i with probability weight_i / sum(weights).

    Every set is read as an endless `ShardStream` (its own shuffle, split by process and DataLoader worker,
    so each set needs at least processes x workers shards). Which set the sample at mixture position p
    comes from is a pure function of (seed, rank, worker, p), so the mixture is deterministic and resumes
    exactly: feed a `StreamPosition` the `position` of each consumed sample, as for a ShardStream; a
    position here is (rank, worker, mixture position, set index, position in that set).

        MixtureStream([(find_shards("data/charts"), 0.5), (find_shards("data/docs"), 0.3), ...], transform)
    """

    def __init__(self, sources: list[tuple[list[str], float]], transform, shuffle_buffer: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, resume: "StreamPosition | None" = None):
        super().__init__()
        weights = [w for _, w in sources]
        if not sources or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("a mixture needs at least one shard set and finite, non-negative weights with a "
                             f"positive sum; got weights {weights}")
        self.weights = [float(w) for _, w in sources]
        # Each set gets its own seed, so that two sets with the same files still shuffle differently.
        self.streams = [ShardStream(list(shards), transform, shuffle_buffer, f"{seed}/{i}", endless=True, rank=rank,
                                    world_size=world_size) for i, (shards, _) in enumerate(sources)]
        self.seed, self.rank, self.world_size, self.resume = seed, rank, world_size, resume
        total = sum(self.weights)
        self._cumulative = [sum(self.weights[:i + 1]) / total for i in range(len(self.weights))]

    def rank_shards(self) -> list[str]:
        """The shards this process reads, over all sets."""
        return [s for stream in self.streams for s in stream.rank_shards()]

    def choose(self, wid: int, position: int) -> int:
        """The set the sample at this mixture position comes from (a function of the position alone)."""
        u = random.Random(f"{self.seed}-mix-{self.rank}-{wid}-{position}").random()
        return next((i for i, c in enumerate(self._cumulative) if u < c), len(self._cumulative) - 1)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.resume is not None:
            self.resume.check(self, workers)
            wid = (wid + self.resume.next_worker) % workers  # see ShardStream._my_shards
        iterators = []
        for i, stream in enumerate(self.streams):
            mine = stream.rank_shards()[wid::workers]
            if not mine:
                raise ValueError(f"mixture set {i} has {len(stream.shards)} shards, too few for {self.world_size} "
                                 f"processes x {workers} DataLoader workers; write more, smaller shards")
            start = self.resume.start(self.rank, wid, i) if self.resume is not None else 0
            iterators.append(stream.samples(mine, wid, start))
        position = self.resume.start(self.rank, wid) if self.resume is not None else 0
        skipped: list[SkipReport | dict[str, int]] = [{} for _ in iterators]
        while True:
            i = self.choose(wid, position)
            inner, out = next(iterators[i])
            skipped[i] = out["skipped"]
            out["skipped"] = SkipReport.merge(self.rank, wid, skipped)
            out["position"] = (self.rank, wid, position, i, inner)
            yield out
            position += 1


@dataclass
class StreamPosition:
    """How far a ShardStream read, to continue exactly there after a restart: for each (rank, worker) the
    next raw position in its shuffled sequence, and which worker the loader would have asked next.

    Feed it the `position` of every sample the trainer consumed (`update`), save `to_dict()` with the
    training state, and pass `StreamPosition.from_dict(...)` as the new stream's `resume`. The stream must
    be built the same way (shards, seed, shuffle buffer, processes and workers); `check` says if not."""
    workers: int
    world_size: int
    seed: int
    next_positions: dict[str, int] = field(default_factory=dict)  # "rank/worker"[/set] -> next position
    consumed: int = 0  # samples (or batches) taken from each process's loader

    @property
    def next_worker(self) -> int:
        return self.consumed % self.workers

    def update(self, positions: list[tuple[int, ...]]) -> None:
        """`positions`: (rank, worker, position) from a ShardStream, or (rank, worker, position, set, position
        in the set) from a MixtureStream."""
        for rank, wid, pos, *inner in positions:
            self._advance(f"{rank}/{wid}", pos)
            if inner:
                self._advance(f"{rank}/{wid}/{inner[0]}", inner[1])
        self.consumed += 1

    def _advance(self, key: str, pos: int) -> None:
        self.next_positions[key] = max(self.next_positions.get(key, 0), pos + 1)

    def start(self, rank: int, wid: int, source: int | None = None) -> int:
        return self.next_positions.get(f"{rank}/{wid}" + ("" if source is None else f"/{source}"), 0)

    def check(self, stream: "ShardStream | MixtureStream", workers: int) -> None:
        want = (self.workers, self.world_size, self.seed)
        have = (max(workers, 1), stream.world_size, stream.seed)
        if want != have:
            raise ValueError(f"cannot resume the data stream exactly: it was read with (workers, processes, seed) "
                             f"= {want} and is now built with {have}; resume with the same settings")

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "world_size": self.world_size, "seed": self.seed,
                "next_positions": dict(self.next_positions), "consumed": self.consumed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamPosition":
        return cls(**d)
