"""convert on Ray. A source whose files are independent (parquet or arrow files of the_cauldron,
PixMo-Docs, ChartQA kept one record per row) is read one file per Ray task, each building its rows'
records. Otherwise the driver reads the rows and groups them by image as the local engine does (parsing a
LLaVA JSON, grouping ChartQA's rows: cheap next to the images), and batches of units go to Ray tasks,
which read and decode their images and build their records (where a conversion spends its time). Either
way the driver takes the results back in row order, gives out the record keys and counts the rows.

Keys: a source's build asks the conversion's KeyMaker for its key (a base such as ``llava-000123``, made
unique with a '-2' suffix when taken). In a task the build gets a `RecordedKeys`, which answers with the
base and writes down that it was asked; the driver then claims those bases from the one KeyMaker in row
order, so every key, suffixes included, is the one the local engine gives."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator

from data_pipelines.ray_engine import cluster_cpus, ordered
from data_pipelines.report import ConversionStats
from data_pipelines.sources.rows import UNIT_BUILDERS, BadRow, KeyMaker, SourceRow, counted, key_base
from molmini.data.records import Record

UNITS_PER_TASK = 64  # enough work per task (tens of ms of image decoding) to dwarf Ray's per-task cost


class RecordedKeys:
    """The KeyMaker a build gets in a task: the key's base, with a note of each one asked for."""

    def __init__(self) -> None:
        self.bases: list[str] = []

    def __call__(self, *parts: Any) -> str:
        return self.claim(key_base(*parts))

    def claim(self, base: str) -> str:
        self.bases.append(base)
        return base


def _build_units(blobs: list[bytes]) -> list[tuple[list[str], Record | BadRow]]:
    """The task: each pickled build's (key bases asked for, record or why there is none)."""
    from ray import cloudpickle

    results = []
    for blob in blobs:
        keys = RecordedKeys()
        try:
            built = cloudpickle.loads(blob)(keys)
        except BadRow as e:
            built = e
        results.append((keys.bases, built))
    return results


def _build_part(part: Callable[[], Iterable[SourceRow]]) -> list[tuple[tuple[str, int], list[str], Record | BadRow]]:
    """The task for a piece of a source (one table file): read its rows and build each; per unit its
    (name, row count), the key bases its build asked for, and its record or why there is none."""
    results = []
    for name, build, count in part():
        keys = RecordedKeys()
        try:
            built = build(keys)
        except BadRow as e:
            built = e
        results.append(((name, count), keys.bases, built))
    return results


def built_on_ray(rows: Iterable[SourceRow], stats: ConversionStats, units_per_task: int = UNITS_PER_TASK,
                 parts: list[Callable[[], Iterable[SourceRow]]] | None = None) -> Iterator[Record]:
    """The records of `rows` (sources/rows.guarded_records's contract), built in Ray tasks. With `parts`
    (the same rows, cut into pieces a task can read alone: a table's files) and more than one of them,
    each piece is read and built by a task of its own, so the files are read in parallel too; otherwise
    the driver reads the rows and tasks build batches of them."""
    import ray
    from ray import cloudpickle

    if parts is not None and len(parts) > 1:
        part_task = ray.remote(_build_part)
        results = ordered(((None, part_task.remote(part)) for part in parts), window=2 * cluster_cpus())
        units = ((unit, bases, built) for _, built_units in results for unit, bases, built in built_units)
        yield from _in_row_order(units, stats)
        return
    task = ray.remote(_build_units)

    def jobs() -> Iterator[tuple[list[tuple[str, int]], Any]]:
        units, blobs = [], []
        for name, build, count in rows:
            units.append((name, count))
            # Pickled now: a source's build may close over loop variables that the next row changes.
            blobs.append(cloudpickle.dumps(build))
            if len(blobs) == units_per_task:
                yield units, task.remote(blobs)
                units, blobs = [], []
        if blobs:
            yield units, task.remote(blobs)

    batches = ordered(jobs(), window=2 * cluster_cpus())
    yield from _in_row_order(((unit, bases, built) for units, results in batches
                              for unit, (bases, built) in zip(units, results)), stats)


def _in_row_order(units: Iterable[tuple[tuple[str, int], list[str], Record | BadRow]],
                  stats: ConversionStats) -> Iterator[Record]:
    """Each built unit, in row order: its keys claimed from the conversion's one KeyMaker (the record
    renamed where a suffix was due), its rows and record counted; the records."""
    keys = KeyMaker()
    for (name, count), bases, built in units:
        key = None
        for base in bases:
            key = keys.claim(base)
        if isinstance(built, Record) and key is not None and key != built.key:
            built = dataclasses.replace(built, key=key)
        if (record := counted(stats, name, count, built)) is not None:
            yield record


UNIT_BUILDERS["ray"] = built_on_ray  # data_pipelines/sources/rows.py's plugin registry
