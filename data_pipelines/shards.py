"""Writing `Record`s into webdataset shards, with a manifest that says what a shard folder holds.

A shard folder holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``manifest.json``. The manifest is
written last and atomically, so a folder that has one is a complete set; a folder with shards but no
manifest is what an interrupted run leaves behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from molmini.data.reader import find_shards
from molmini.data.records import Record
from molmini.progress import progress_bar

MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"
SHARD_GLOB = "shard-*.tar"
# A fixed member mtime makes a shard's bytes depend only on its records, so sha256s are reproducible.
TAR_MTIME = 0.0
CREATE_HINT = "run `python -m data_pipelines synth charts --out {folder}` to create shards there"


class ManifestError(ValueError):
    """A shard folder whose manifest is unreadable or does not match its shards."""


class TarMembers:
    """Writes samples ({"__key__": KEY, EXT: bytes, ...}) as tar members KEY.EXT, byte for byte as
    webdataset's `TarWriter(encoder=False, mtime=TAR_MTIME)` does (its member order, mode, owner and fixed
    time; tested by reading the shards back with webdataset). Written with the standard library, so the data
    commands never import webdataset and, through it, torch."""

    def __init__(self, fileobj):
        self._tar = tarfile.open(fileobj=fileobj, mode="w|")

    def write(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            if isinstance(data, str):
                data = data.encode("utf-8")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o0444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


class ShardWriter:
    """Write Records into numbered tar shards in `out_dir`; `close()` then writes ``manifest.json``.

    A new shard starts when the current one holds `maxcount` records or the next record would take it
    past `maxsize` bytes (a single larger record still gets a shard of its own). Opening a writer removes
    the folder's old shards and manifest (only those files), so stale shards from an earlier, larger run
    cannot mix in. As a context manager, an exception closes the shards without writing a manifest,
    which leaves the folder marked incomplete. `late_params`, when given, is called at close and its dict
    joins the manifest's params: for what is known only once every record is written (a converter's
    counts of skipped rows).
    """

    def __init__(self, out_dir: str | os.PathLike, *, generator: str, generator_version: str = "",
                 seed: int = 0, split: str = "train", params: dict[str, Any] | None = None,
                 maxcount: int = 1000, maxsize: float = 1e9,
                 late_params: Callable[[], dict[str, Any]] | None = None) -> None:
        if maxcount < 1 or maxsize <= 0:
            raise ValueError(f"maxcount ({maxcount}) and maxsize ({maxsize}) must be positive")
        self.out_dir = Path(out_dir)
        self.header = {"generator": generator, "generator_version": str(generator_version), "seed": seed,
                       "split": split, "params": dict(params or {})}
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.late_params = late_params
        self.manifest: dict[str, Any] | None = None  # set by close()

        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_shards(self.out_dir)
        self._shards: list[dict[str, Any]] = []
        self._file = None
        self._tar: TarMembers | None = None
        self._count = 0  # records in the open shard
        self._bytes = 0  # its size so far
        self._keys: set[str] = set()
        self._by_task: Counter[str] = Counter()
        self._by_source: Counter[str] = Counter()

    def write(self, record: Record) -> None:
        if self.manifest is not None:
            raise RuntimeError(f"shard writer for {self.out_dir} is already closed")
        if not isinstance(record, Record):
            raise TypeError(f"ShardWriter.write takes a Record, got {type(record).__name__}")
        if record.key in self._keys:
            # webdataset groups members by key, so a repeated key would silently merge two records.
            raise ValueError(f"duplicate record key {record.key!r} in {self.out_dir}")
        sample = record.to_sample()
        size = sample_bytes(sample)
        if self._tar is None or self._count >= self.maxcount or (self._count and self._bytes + size > self.maxsize):
            self._start_shard()
        self._tar.write(sample)
        self._count += 1
        self._bytes += size
        self._keys.add(record.key)
        self._by_task[record.task] += 1
        self._by_source[record.source] += 1

    def close(self) -> dict[str, Any]:
        """Finish the last shard and write the manifest (atomically, last). Returns the manifest."""
        if self.manifest is not None:
            return self.manifest
        self._finish_shard()
        header = dict(self.header)
        if self.late_params is not None:
            header["params"] = {**header["params"], **self.late_params()}
        self.manifest = write_manifest(self.out_dir, header, self._shards, self._by_task, self._by_source)
        return self.manifest

    def abort(self) -> None:
        """Close the open shard without writing a manifest (the folder stays marked incomplete)."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self._tar = self._file = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _start_shard(self) -> None:
        self._finish_shard()
        name = SHARD_PATTERN % len(self._shards)
        self._file = open(self.out_dir / name, "wb")
        self._tar = TarMembers(self._file)
        self._shards.append({"name": name, "num_samples": 0, "sha256": ""})
        self._count = self._bytes = 0

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        self.abort()
        entry = self._shards[-1]
        entry["num_samples"] = self._count
        entry["sha256"] = file_sha256(self.out_dir / entry["name"])


def sample_bytes(sample: dict[str, Any]) -> int:
    """What a sample adds to a tar: each member a 512-byte header plus its data padded to 512 bytes."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("__"))


def write_shard(path: str | os.PathLike, records: list[Record], maxsize: float = 1e9) -> dict[str, Any]:
    """Write `records` as one shard at `path`, byte for byte as a ShardWriter writes that shard; returns its
    manifest entry with the records' counts by task and source (what a parallel engine's task sends back
    for the manifest). A shard that would pass `maxsize` bytes is an error here: a ShardWriter would split
    it, and the shards after it would then start at other records."""
    path = Path(path)
    by_task: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    size = 0
    with open(path, "wb") as f:
        tar = TarMembers(f)
        for record in records:
            sample = record.to_sample()
            size += sample_bytes(sample)
            if size > maxsize and by_task:
                raise ValueError(f"shard {path.name} would pass {maxsize:.0f} bytes with {len(records)} records; "
                                 "pass a smaller --shard-size")
            tar.write(sample)
            by_task[record.task] += 1
            by_source[record.source] += 1
        tar.close()
    return {"name": path.name, "num_samples": len(records), "sha256": file_sha256(path),
            "counts_by_task": dict(by_task), "counts_by_source": dict(by_source)}


def write_manifest(out_dir: str | os.PathLike, header: dict[str, Any], shards: list[dict[str, Any]],
                   by_task: dict[str, int], by_source: dict[str, int]) -> dict[str, Any]:
    """Write a shard folder's manifest (atomically; last, after every shard) and return it. `header`:
    generator, generator_version, seed, split and params; `shards`: name, num_samples and sha256 of each.
    The one place its layout is written, for the ShardWriter and for the engines that write shards in
    parallel, so both give the same file (but for `created`, the time it was written)."""
    manifest = {**header, "num_samples": sum(s["num_samples"] for s in shards),
                "counts_by_task": dict(sorted(by_task.items())), "counts_by_source": dict(sorted(by_source.items())),
                "shards": [{k: s[k] for k in ("name", "num_samples", "sha256")} for s in shards],
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_json_atomic(Path(out_dir) / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete shard folder."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {folder}: it is not a complete shard folder (an interrupted run leaves "
            f"shards without a manifest); {CREATE_HINT.format(folder=folder)}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); remove the folder's shards and regenerate") from e


def list_shards(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the shard files in `folder` (the one lookup readers use too, with its errors)."""
    return find_shards(folder)


def verify_manifest(folder: str | os.PathLike, progress: bool | None = None) -> dict[str, Any]:
    """Recompute every shard's sha256 and sample count; raise ManifestError naming each mismatch.

    Returns the manifest when everything matches. `progress`: a bar per shard (default: on a terminal).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    listed = set()
    for entry in progress_bar(manifest.get("shards", []), enabled=progress, desc=f"verify {folder}", unit="shard"):
        path = folder / entry["name"]
        listed.add(entry["name"])
        if not path.is_file():
            problems.append(f"{entry['name']}: listed in the manifest but missing")
            continue
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 is {digest}, manifest says {entry['sha256']}")
        try:
            count = count_tar_samples(path)
        except (tarfile.TarError, OSError, EOFError) as e:  # cut inside a member, or not a tar at all
            problems.append(f"{entry['name']}: unreadable as a tar ({type(e).__name__}: {e}); regenerate it")
            continue
        if count < entry["num_samples"]:
            problems.append(f"{entry['name']}: holds {count} samples, manifest says {entry['num_samples']} "
                            "(truncated; regenerate it)")
        elif count != entry["num_samples"]:
            problems.append(f"{entry['name']}: holds {count} samples, manifest says {entry['num_samples']}")
    total = sum(entry["num_samples"] for entry in manifest.get("shards", []))
    if total != manifest.get("num_samples"):
        problems.append(f"shard counts add up to {total}, manifest num_samples is {manifest.get('num_samples')}")
    unlisted = sorted(p.name for p in folder.glob(SHARD_GLOB) if p.name not in listed)
    if unlisted:
        problems.append(f"shards not in the manifest: {', '.join(unlisted)}")
    if problems:
        raise ManifestError(f"shard folder {folder} does not match its manifest:\n  " + "\n  ".join(problems))
    return manifest


def remove_shards(folder: str | os.PathLike) -> None:
    """Delete a folder's manifest and shard files (nothing else)."""
    folder = Path(folder)
    # The manifest goes first, so that an interruption never leaves a manifest over a partial set.
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    for path in folder.glob(SHARD_GLOB):
        path.unlink()


def count_tar_samples(path: str | os.PathLike) -> int:
    """Samples in a tar shard, grouping members by key the way webdataset does (consecutive, same key)."""
    count, previous = 0, None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            key = f"{directory}/{base.split('.', 1)[0]}"
            if key != previous:
                count, previous = count + 1, key
    return count


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the complete new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a manifest is meant to be read by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
