"""The one validated record reader every consumer of shards goes through (stream, eval, curate, inspect,
tokenizer text): shard folders and their manifests, tar members grouped by key into checked Records
(molmini/data/records.py's schema), and whatever cannot become one a `Skip`, counted once by reason in a
`BadRecords`. Input that can give no record at all raises `UnusableDataError`, whose one-line message
names the shards and the fix. No torch here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from molmini.data.records import Record, RecordError, UnusableDataError

log = logging.getLogger(__name__)


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


def _manifest_listing(shards: list[str]) -> dict[str, int]:
    """Samples per shard as the manifest.json beside the shards lists them: every shard it lists, on disk
    or not (nothing for a folder without a manifest we can read)."""
    counts: dict[str, int] = {}
    for folder in {Path(s).parent for s in shards}:
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            for entry in manifest.get("shards", []):
                counts[str(folder / entry["name"])] = int(entry["num_samples"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no manifest (or not one we can read): nothing to check against
    return counts


def manifest_counts(shards: list[str]) -> dict[str, int]:
    """Samples per shard of `shards` as their manifest lists them (none where there is none)."""
    counts = _manifest_listing(shards)
    return {s: counts[s] for s in shards if s in counts}


def missing_shards(shards: list[str]) -> dict[str, int]:
    """The shards that the manifest beside `shards` lists but that are not on disk, with the samples it
    lists for each: `find_shards` finds only the files there, so without this a lost shard's samples would
    be neither read nor counted."""
    listed = set(shards)
    return {path: n for path, n in sorted(_manifest_listing(shards).items())
            if path not in listed and not Path(path).exists()}


def missing_shard_skips(shards: list[str]) -> list["Skip"]:
    """A `missing_shard` Skip for each shard of `missing_shards(shards)`, standing for all its samples."""
    return [Skip(f"{path}#missing_shard", "missing_shard", f"{Path(path).name}: listed in {Path(path).parent}/"
                 f"manifest.json with {n} samples but not there; restore the shard or regenerate the folder",
                 count=n) for path, n in missing_shards(shards).items()]


# ---- the record reader: every consumer of shards reads them through here ---------------------------------

MAX_CONSECUTIVE_SKIPS = 1000  # bad records in a row before a stream gives up (a fault, not bad luck)
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


@dataclass
class Skip:
    """Something read from a shard that gives no record, counted under `reason`. `where` identifies it the
    same way on every read (``SHARD#N`` for the N-th member group of a shard, or a record key), so a second
    pass over the same shards does not count it again; `count` is how many records it stands for (a shard
    cut short stands for every sample its manifest lists beyond those read)."""
    where: str
    reason: str
    message: str
    count: int = 1


class BadRecords:
    """The bad records met while reading a shard set: each counted once, under its reason, however often it
    is read; `on_skip(skip)` hears of each the first time (default: its message is logged as a warning)."""

    def __init__(self, on_skip: Callable[[Skip], None] | None = None) -> None:
        self.on_skip = on_skip or (lambda skip: log.warning("skipped: %s", skip.message))
        self._seen: set[str] = set()
        self._counts: Counter[str] = Counter()

    def add(self, skip: Skip) -> bool:
        """Count `skip` unless it was counted before; True if it is new."""
        if skip.where in self._seen:
            return False
        self._seen.add(skip.where)
        self._counts[skip.reason] += skip.count
        self.on_skip(skip)
        return True

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def describe(self) -> str:
        """``"3 invalid_json, 1 truncated_member"`` (or ``"none"``)."""
        return ", ".join(f"{n} {reason}" for reason, n in self.by_reason.items()) or "none"


def add_counts(*counts: dict[str, int]) -> dict[str, int]:
    """Counts by reason added up, sorted by reason."""
    return dict(sorted(sum((Counter(c) for c in counts), Counter()).items()))


class SkipReport(NamedTuple):
    """A stream worker's running count of the bad records it has read, as it rides with each sample from the
    stream through the loader's batches to the training loop's SkipCounter (train/meters.py)."""
    rank: int
    worker: int
    total: int
    by_reason: dict[str, int]

    @classmethod
    def merge(cls, rank: int, worker: int, reports: Iterable["SkipReport | dict[str, int]"]) -> "SkipReport":
        """One report for `worker` of `rank` from several (a mixture's sets, each with its own counts)."""
        by_reason = add_counts(*(r.by_reason if isinstance(r, SkipReport) else r for r in reports))
        return cls(rank, worker, sum(by_reason.values()), by_reason)


_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def base_plus_ext(member_name: str) -> tuple[str | None, str | None]:
    """Split a tar member name into (key, extension) exactly as webdataset's `base_plus_ext` does: the key
    ends at the first '.' of the file name (tested against webdataset's own)."""
    match = _KEY_EXT.match(member_name)
    return (match.group(1), match.group(2)) if match else (None, None)


def _open_shard(url: str):
    """A local shard is opened directly; any other URL (http, pipe:, s3 via pipe:) through webdataset's
    `gopen`, which is imported only then (webdataset imports torch)."""
    if "://" in url or url.startswith("pipe:"):
        import webdataset as wds
        return wds.gopen(url, "rb")
    return open(url.removeprefix("file:"), "rb")


def _member_groups(url: str) -> Iterator[tuple[str, dict[str, bytes], int] | RecordError]:
    """(key, {extension: bytes}, repeats) for each run of adjacent tar members sharing a key (split as
    webdataset splits names: the key ends at the first '.' of the file name); `repeats` > 1 when a member
    name occurs that many times in the run (records written twice in a row under one key). A shard that
    cannot be opened, or is cut inside a member, ends with a RecordError."""
    name = Path(url).name
    try:
        stream = _open_shard(url)
        tar = tarfile.open(fileobj=stream, mode="r|*")
    except _TAR_ERRORS as e:
        yield RecordError(f"{name} is not a readable tar ({type(e).__name__}: {e}); regenerate it or move it out "
                          "of the shard folder", "unreadable_shard")
        return
    key, group, seen = None, {}, Counter()
    with stream, tar:
        try:
            for member in tar:
                base, ext = base_plus_ext(member.name)
                if not member.isfile() or base is None:
                    continue
                data = tar.extractfile(member).read()
                if base != key:
                    if key is not None:
                        yield key, group, max(seen.values())
                    key, group, seen = base, {}, Counter()
                ext = ext.lower()
                seen[ext] += 1
                group[ext] = data
        except _TAR_ERRORS as e:
            # A group whose members were all read before the cut is whole: keep it; the cut one is lost.
            if key is not None and _whole(key, group):
                yield key, group, max(seen.values())
            yield RecordError(f"{name}: cut short inside a member after {key!r} ({type(e).__name__}: {e}); "
                              "regenerate the shard", "truncated_member")
            return
    if key is not None:
        yield key, group, max(seen.values())


def _whole(key: str, group: dict[str, bytes]) -> bool:
    """Whether a member group read before a cut holds every member its record needs (its json, and the
    images the json counts)."""
    try:
        Record.from_sample({"__key__": key, **group})
    except RecordError as e:
        return e.reason != "missing_member"
    return True


class ShardReader:
    """The one validated record reader. Each member group of a shard becomes a `Record` (its json checked
    for type and shape by `Record.from_sample`) or a `Skip` saying why not: an unreadable or cut tar, a
    missing member, bad json, a key already read from this reader's shards (keys must be unique in a shard
    set: the first keeps it), and, after the shard, the samples its manifest lists that were never read.
    The shards the manifest lists that are not on disk at all are `missing_shard_skips`' to count."""

    def __init__(self, shards: list[str]):
        self.expected = manifest_counts(shards)
        self._first: dict[str, str] = {}  # record key -> where it was first read

    def entries(self, url: str) -> Iterator[Record | Skip]:
        for _, entry in self.located(url):
            yield entry

    def located(self, url: str) -> Iterator[tuple[str, Record | Skip]]:
        """`entries`, each with where it was read (``SHARD#N``): what an engine that reads shards in
        parallel needs to apply the unique-key rule across them afterwards (`first_read`)."""
        name = Path(url).name
        groups = failed = 0
        for n, item in enumerate(_member_groups(url)):
            where = f"{url}#{n}"
            if isinstance(item, RecordError):
                failed += 1
                yield where, Skip(where, item.reason, str(item))
                continue
            key, members, repeats = item
            groups += repeats
            if repeats > 1:
                yield where, Skip(where, "duplicate_member", f"{name}: member group {key!r} holds {repeats} copies "
                                  "of a member (records written in a row under one key); regenerate the shard with "
                                  "unique keys", count=repeats)
                continue
            try:
                record = Record.from_sample({"__key__": key, **members})
            except RecordError as e:
                yield where, Skip(where, e.reason, f"{name}: {e}")
                continue
            skip = self.first_read(key, where)
            yield where, (record if skip is None else skip)
        # A tar cut exactly at a member boundary reads without error, only shorter: its manifest says so.
        missing = self.expected.get(url, 0) - groups - failed
        if missing > 0:
            yield f"{url}#missing", Skip(f"{url}#missing", "truncated_shard", f"{name}: read {groups} of the "
                                         f"{self.expected[url]} samples its manifest lists; the shard is truncated "
                                         "(regenerate it)", count=missing)

    def first_read(self, key: str, where: str) -> Skip | None:
        """None when `key` is read for the first time here (or is read again where it was first read);
        otherwise the duplicate_key Skip of the record read at `where`."""
        first = self._first.setdefault(key, where)
        if first == where:
            return None
        return Skip(where, "duplicate_key", f"{Path(where.rpartition('#')[0]).name}: record key {key!r} was already "
                    f"read from {Path(first.rpartition('#')[0]).name}; keys must be unique in a shard set, so this "
                    "one is skipped (write the shards with unique keys)")


def read_records(shards: list[str], bad: BadRecords | None = None) -> Iterator[Record]:
    """Every usable record of `shards` in order (no shuffling, no splitting); everything else is counted in
    `bad` (by reason, each once) and skipped."""
    bad = bad if bad is not None else BadRecords()
    reader = ShardReader(shards)
    for url in shards:
        for entry in reader.entries(url):
            if isinstance(entry, Skip):
                bad.add(entry)
            else:
                yield entry
    for skip in missing_shard_skips(shards):  # the shards the manifest lists that are not there
        bad.add(skip)


def iter_records(shards: list[str], on_error: Callable[[str], None] | None = None) -> Iterator[Record]:
    """`read_records`, with each bad record's message passed to `on_error` (default: logged)."""
    return read_records(shards, BadRecords(on_skip=(lambda skip: on_error(skip.message)) if on_error else None))


def no_usable_record(what: str, shards: list[str], bad: BadRecords, last: str = "") -> UnusableDataError:
    """The error for a read that found nothing usable: which shards, how many bad records of which kind, and
    the last problem met, whose message says how to fix it."""
    names = ", ".join(Path(s).name for s in shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
    folders = ", ".join(sorted({str(Path(s).parent) for s in shards}))
    return UnusableDataError(f"{what} in {folders} ({names}): {bad.total} bad ({bad.describe()})"
                             + (f"; the last: {last}" if last else "")
                             + ". Fix or regenerate the shards, or point the config at other data")
