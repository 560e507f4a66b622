"""The record schema, and the streaming dataset that reads it back from webdataset shards.

One record is one image and a conversation about it. In a shard it is two members that share a key:
``KEY.png`` (or ``KEY.jpg``) holding the encoded image, and ``KEY.json`` holding
``{"messages": [...], "source": str, "task": str, "meta": {...}}``. ``messages`` alternate
``{"role": "user", ...}`` and ``{"role": "assistant", ...}``; the image belongs to the first user turn
(an ``<image>`` marker there says where, otherwise it is implied at the start).
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
ROLES = ("user", "assistant")


class RecordError(ValueError):
    """A record that does not follow the schema."""


@dataclass
class Record:
    key: str
    image: bytes
    messages: list[dict[str, str]]
    source: str = ""
    task: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    image_ext: str = "png"

    def __post_init__(self) -> None:
        validate_messages(self.messages, where=self.key)
        if self.image_ext not in IMAGE_EXTENSIONS:
            raise RecordError(f"record {self.key!r}: image extension {self.image_ext!r} is not one of "
                              f"{IMAGE_EXTENSIONS}")
        if "." in self.key:
            raise RecordError(f"record key {self.key!r} contains '.', which webdataset reads as the start "
                              "of an extension; use '_' or '-' instead")

    def to_sample(self) -> dict[str, Any]:
        """The webdataset sample (member extension -> bytes) for this record."""
        body = {"messages": self.messages, "source": self.source, "task": self.task, "meta": self.meta}
        return {"__key__": self.key, self.image_ext: self.image,
                "json": json.dumps(body, ensure_ascii=False).encode("utf-8")}

    @classmethod
    def from_sample(cls, sample: dict[str, Any]) -> "Record":
        key = sample.get("__key__", "?")
        exts = [e for e in IMAGE_EXTENSIONS if e in sample]
        if not exts:
            raise RecordError(f"sample {key!r} has no image member (expected one of {IMAGE_EXTENSIONS}); "
                              f"members: {sorted(k for k in sample if not k.startswith('__'))}")
        if "json" not in sample:
            raise RecordError(f"sample {key!r} has no .json member")
        raw = sample["json"]
        try:
            body = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RecordError(f"sample {key!r}: its .json member is not valid JSON ({e})") from e
        if "messages" not in body:
            raise RecordError(f"sample {key!r}: its .json member has no 'messages' list")
        return cls(key=key, image=sample[exts[0]], messages=body["messages"], source=body.get("source", ""),
                   task=body.get("task", ""), meta=body.get("meta", {}), image_ext=exts[0])

    def load_image(self) -> Image.Image:
        """Decode the image to RGB; a corrupt image raises RecordError naming the record."""
        try:
            img = Image.open(io.BytesIO(self.image))
            img.load()
        except Exception as e:  # PIL raises several unrelated types for bad bytes
            raise RecordError(f"record {self.key!r}: image cannot be decoded ({type(e).__name__}: {e})") from e
        return img.convert("RGB")

    def qa_pairs(self) -> list[tuple[str, str]]:
        """(question, answer) for each user/assistant exchange, the image marker removed."""
        m = self.messages
        return [(strip_image_marker(m[i]["content"]), m[i + 1]["content"]) for i in range(0, len(m) - 1, 2)]


def strip_image_marker(text: str) -> str:
    return text.replace(IMAGE_MARKER, "").strip()


def validate_messages(messages: Any, where: str = "record") -> None:
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: 'messages' must be a non-empty list of {{role, content}} dicts")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) < {"role", "content"}:
            raise RecordError(f"{where}: message {i} must be a dict with 'role' and 'content', got {msg!r}")
        want = ROLES[i % 2]
        if msg["role"] != want:
            raise RecordError(f"{where}: message {i} has role {msg['role']!r} where {want!r} was expected "
                              "(turns alternate user, assistant, starting with user)")
        if not isinstance(msg["content"], str):
            raise RecordError(f"{where}: message {i} content must be a string")
    if len(messages) % 2:
        raise RecordError(f"{where}: the conversation ends on a user turn with no assistant answer")


# ---- streaming ------------------------------------------------------------------------------------------

def find_shards(folder: str | os.PathLike) -> list[str]:
    """The sorted `*.tar` shards of a folder, or an error naming the folder and how to fill it."""
    folder = Path(folder)
    shards = sorted(str(p) for p in folder.glob("*.tar")) if folder.is_dir() else []
    if not shards:
        state = "has no .tar shards" if folder.is_dir() else "does not exist"
        raise FileNotFoundError(f"data folder {str(folder)!r} {state}. Create shards with "
                                f"`python -m data_pipelines synth charts --out {folder}` or point the config's "
                                "data.train_dir / data.test_dir at a folder of webdataset .tar shards")
    return shards


def manifest_counts(shards: list[str]) -> dict[str, int]:
    """Samples per shard as the manifest.json beside the shards lists them (none where there is none)."""
    counts: dict[str, int] = {}
    for folder in {Path(s).parent for s in shards}:
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            for entry in manifest.get("shards", []):
                counts[str(folder / entry["name"])] = int(entry["num_samples"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no manifest (or not one we can read): nothing to check against
    return {s: counts[s] for s in shards if s in counts}


class ShardStream(torch.utils.data.IterableDataset):
    """Records from webdataset shards, split by node (rank) and by DataLoader worker, through a seeded
    shuffle buffer, each passed through `transform`.

    A record that cannot be read (corrupt image, bad json, truncated tar member) is logged by key,
    counted and skipped; every yielded sample carries its worker's running count in `skipped` so the
    trainer can report the total. `endless` cycles over the shards forever, reshuffling each epoch.
    """

    def __init__(self, shards: list[str], transform, shuffle_buffer: int = 0, seed: int = 0,
                 endless: bool = False, rank: int = 0, world_size: int = 1,
                 resume: "StreamPosition | None" = None):
        super().__init__()
        if len(shards) < world_size:
            raise ValueError(f"{len(shards)} shards cannot be split over {world_size} processes; write at least "
                             "one shard per process (a smaller shard size gives more shards)")
        self.shards, self.transform = list(shards), transform
        self.shuffle_buffer, self.seed, self.endless = shuffle_buffer, seed, endless
        self.rank, self.world_size = rank, world_size
        self.resume = resume
        self.expected_counts = manifest_counts(self.shards)

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

    def _raw_samples(self, shards: list[str], rng: random.Random, errors: list[str]) -> Iterator[dict]:
        import webdataset as wds

        failures = [0]  # in the shard being read

        def handler(exn: Exception) -> bool:
            errors.append((f"{type(exn).__name__}: {exn}", 1))
            failures[0] += 1
            return True  # keep going with the next member or shard

        while True:
            order = list(shards)
            rng.shuffle(order)
            for url in order:
                count, failures[0] = 0, 0
                for sample in wds.tarfile_to_samples(handler=handler)(iter([{"url": url}])):
                    count += 1
                    yield sample
                # A tar cut exactly at a member boundary reads without error, only shorter: its manifest says so.
                missing = self.expected_counts.get(url, 0) - count - failures[0]
                if missing > 0:
                    errors.append((f"{Path(url).name}: read {count} of the {self.expected_counts[url]} samples its "
                                   f"manifest lists; the shard is truncated (regenerate it)", missing))
            if not self.endless:
                return

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
        on. The positions count every member group read, skipped ones included, so they survive a restart."""
        rng = random.Random(f"{self.seed}-{self.rank}-{wid}")
        errors: list[str] = []
        skipped = 0
        for position, sample in enumerate(self._shuffled(self._raw_samples(shards, rng, errors), rng)):
            if position < start:
                errors.clear()  # already consumed (and counted) before the restart: fast-forward, no decoding
                continue
            while errors:  # failures inside the tar reader (truncated members, bad headers, short shards)
                message, count = errors.pop()
                skipped += count
                log.warning("skipped %d unreadable shard member(s) (%s)", count, message)
            try:
                # Randomness of the transform depends on the position only, so a resumed stream repeats it.
                sample_rng = random.Random(f"{self.seed}-{self.rank}-{wid}-{position}")
                out = self.transform(Record.from_sample(sample), sample_rng)
            except RecordError as e:
                skipped += 1
                log.warning("skipped record: %s", e)
                continue
            out["skipped"] = (self.rank, wid, skipped)
            yield position, out
        while errors:
            message, count = errors.pop()
            log.warning("skipped %d unreadable shard member(s) (%s)", count, message)


def mixture_sources(entries: list[dict[str, Any]]) -> list[tuple[list[str], float]]:
    """(shards, weight) for each ``{dir, weight}`` entry of a config's ``data.mixture``."""
    sources = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"dir", "weight"}:
            raise ValueError(f"data.mixture[{i}] must be {{dir: FOLDER, weight: NUMBER}}, got {entry!r}")
        weight = entry["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"data.mixture[{i}].weight must be a non-negative number, got {weight!r}")
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
        if not sources or any(w < 0 for _, w in sources) or sum(w for _, w in sources) <= 0:
            raise ValueError(f"a mixture needs at least one shard set and non-negative weights with a positive "
                             f"sum; got weights {[w for _, w in sources]}")
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
        skipped = [0] * len(iterators)
        while True:
            i = self.choose(wid, position)
            inner, out = next(iterators[i])
            skipped[i] = out["skipped"][2]
            out["skipped"] = (self.rank, wid, sum(skipped))
            out["position"] = (self.rank, wid, position, i, inner)
            out["source"] = i
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

    def update(self, positions: list[tuple[int, ...]], batches: int = 1) -> None:
        """`positions`: (rank, worker, position) from a ShardStream, or (rank, worker, position, set, position
        in the set) from a MixtureStream."""
        for rank, wid, pos, *inner in positions:
            self._advance(f"{rank}/{wid}", pos)
            if inner:
                self._advance(f"{rank}/{wid}/{inner[0]}", inner[1])
        self.consumed += batches

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


def iter_records(shards: list[str], on_error=None) -> Iterator[Record]:
    """Every readable record of `shards` in order (no shuffling, no splitting); an unreadable member or
    record, and a shard holding fewer samples than its manifest lists, is passed to `on_error(message)`
    (default: logged) and skipped."""
    import webdataset as wds

    def report(message: str) -> None:
        (on_error or log.warning)(message)

    failures = [0]

    def handler(exn: Exception) -> bool:
        report(f"unreadable shard member ({type(exn).__name__}: {exn})")
        failures[0] += 1
        return True

    expected = manifest_counts(shards)
    for url in shards:
        count, failures[0] = 0, 0
        for sample in wds.tarfile_to_samples(handler=handler)(iter([{"url": url}])):
            count += 1
            try:
                yield Record.from_sample(sample)
            except RecordError as e:
                report(str(e))
        if expected.get(url, 0) > count + failures[0]:
            report(f"{Path(url).name}: read {count} of the {expected[url]} samples its manifest lists; the shard "
                   "is truncated (regenerate it)")
