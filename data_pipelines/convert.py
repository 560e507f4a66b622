"""Converters from public dataset formats into `Record`s, and the function that writes them into shards.

Each converter is a generator of Records that reads its input lazily (a parquet file batch by batch). A row
it cannot use (missing image file, undecodable image, empty or malformed conversation) is logged by name,
counted in `stats` (a `ConversionStats`) and skipped. Images keep their original bytes when they are PNG or
JPEG; other formats are re-encoded as PNG. Keys are built from the source's ids or row numbers, with every
character other than letters, digits, '_' and '-' replaced by '_' (webdataset reads '.' as an extension).

Where a source repeats an image over several rows (LLaVA conversations about one COCO image, ChartQA's
one question per row), the rows are merged into one record by default, so that all questions about an
image form one conversation (Molmo's multi-annotation) and exact-duplicate curation keeps them.

A row with several images becomes one record holding them all; a LLaVA entry without an image (LLaVA-665k
mixes in ~40k text-only conversations) becomes a text-only record. `stats` counts both.

Every converter is one driver over its source's rows (`sources/rows.guarded_records`: count, build, skip by
reason); the source families are `sources/llava.py` (local JSON/JSONL with an image folder) and
`sources/tables.py` (Hugging Face parquet/arrow).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

from molmini.progress import progress_bar

from data_pipelines.report import ConversionStats
from data_pipelines.outputs import atomic_output_dir, command_identity
from data_pipelines.shards import ShardWriter
from molmini.data.records import Record

from .sources.llava import convert_captions, convert_llava
from .sources.rows import checked_image_bytes
from .sources.tables import convert_cauldron, convert_chartqa, convert_pixmo_docs

__all__ = ["CONVERTERS", "ConversionStats", "checked_image_bytes", "convert", "convert_captions", "convert_cauldron",
           "convert_chartqa", "convert_llava", "convert_pixmo_docs", "write_shards"]

CONVERTER_VERSION = "1"
CONVERTERS: dict[str, Callable[..., Iterator[Record]]] = {
    "llava": convert_llava, "cauldron": convert_cauldron, "pixmo-docs": convert_pixmo_docs,
    "chartqa": convert_chartqa, "captions": convert_captions}


def write_shards(records: Iterable[Record], out_dir: str | os.PathLike, *, generator: str,
                 stats: ConversionStats | None = None, params: dict[str, Any] | None = None,
                 split: str = "train", shard_size: int = 1000, progress: bool = True, overwrite: bool = False,
                 empty_reason: Callable[[], str] | None = None,
                 max_skipped_fraction: float | None = None) -> dict[str, Any]:
    """Write `records` into shards in `out_dir`; the manifest counts them by source and task, and its
    params hold `params` plus the conversion stats. Returns the manifest. The shards replace those in
    `out_dir` only once all are written, and only when there is at least one record and `out_dir` holds
    no set that another command line wrote (without `overwrite`; data_pipelines.outputs.atomic_output_dir):
    an error leaves `out_dir` as it was, and so does a conversion that skipped more than
    `max_skipped_fraction` of its rows (`stats`)."""
    # The stats are complete only once every record is written, so the writer asks for them at close.
    late = (lambda: {"conversion": stats.as_dict()}) if stats is not None else None
    identity = command_identity({"generator": generator, "seed": 0, "split": split, "params": params or {}})
    if empty_reason is None and stats is not None:
        empty_reason = stats.describe
    with atomic_output_dir(out_dir, identity, overwrite=overwrite, empty_reason=empty_reason) as tmp, \
            ShardWriter(tmp, generator=generator, generator_version=CONVERTER_VERSION, split=split,
                        params=params, maxcount=shard_size, late_params=late) as writer:
        for record in progress_bar(records, desc=f"{generator} -> {out_dir}", unit="rec", enabled=progress):
            writer.write(record)
        if stats is not None and max_skipped_fraction is not None and stats.records:  # none: EmptyResultError
            stats.check_skipped(max_skipped_fraction)
    return writer.manifest


def convert(kind: str, input_path: str | os.PathLike, out_dir: str | os.PathLike, *,
            images_dir: str | os.PathLike | None = None, split: str = "train", shard_size: int = 1000,
            progress: bool = True, overwrite: bool = False, max_skipped_fraction: float | None = None,
            engine: str = "local", ray_address: str | None = None,
            **options: Any) -> tuple[dict[str, Any], ConversionStats]:
    """Convert `input_path` with the converter named `kind` (see CONVERTERS) into shards in `out_dir`.
    `options` go to the converter (source, task, prompt, group_by_image). Returns (manifest, stats).
    `engine` "ray": the rows' images are read and decoded in Ray tasks (on the cluster at `ray_address`,
    RAY_ADDRESS or one started here), giving the same records and keys (ray_engine/convert.py)."""
    if kind not in CONVERTERS:
        raise ValueError(f"unknown converter {kind!r}; choose one of {sorted(CONVERTERS)}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from data_pipelines.ray_engine import connect
        connect(ray_address)
    stats = ConversionStats()
    records = CONVERTERS[kind](input_path, images_dir, stats=stats, engine=engine, **options)
    params = {"input": str(input_path), "images": None if images_dir is None else str(images_dir), **options}
    manifest = write_shards(records, out_dir, generator=f"convert-{kind}", stats=stats, params=params,
                            split=split, shard_size=shard_size, progress=progress, overwrite=overwrite,
                            max_skipped_fraction=max_skipped_fraction)
    return manifest, stats
