"""synth on Ray: one task per shard renders its records and writes its tar into the output's temporary
folder; the driver writes the manifest from what the tasks send back. Record i is drawn from its own rng
(synth/common.py), and shard n holds records [n * shard_size, (n + 1) * shard_size), as the local
engine's ShardWriter fills it, so every shard's bytes, and the manifest but for its `created` time, are
the local engine's. The temporary folder is beside --out, so on a cluster it must be a path every node
can write (a shared file system)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_pipelines.ray_engine import cluster_cpus, ordered
from data_pipelines.shards import SHARD_PATTERN, write_manifest, write_shard
from data_pipelines.synth.common import SHARD_ENGINES, record_for_index


def _render_shard(module: str, seed: int, split: str, image_px: int, params: dict[str, Any], start: int, stop: int,
                  path: str) -> dict[str, Any]:
    """The task: records [start, stop) of a generator, written as the shard at `path`."""
    return write_shard(path, [record_for_index(module, seed, split, i, image_px, params) for i in range(start, stop)])


def synth_shards(folder: str | os.PathLike, module: str, *, header: dict[str, Any], num_images: int, image_px: int,
                 shard_size: int, params: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Render `num_images` records of generator `module` into shards in `folder` (an empty temporary
    folder) and write their manifest, with `header` (generator, version, seed, split, params). Returns it."""
    import ray

    task = ray.remote(_render_shard)
    seed, split = header["seed"], header["split"]
    jobs = ((n, task.remote(module, seed, split, image_px, params, start, min(start + shard_size, num_images),
                            str(Path(folder) / (SHARD_PATTERN % n))))
            for n, start in enumerate(range(0, num_images, shard_size)))
    shards, by_task, by_source = [], Counter(), Counter()
    with tqdm(total=num_images, desc="synth on Ray", unit="img", disable=not progress) as bar:
        for _, entry in ordered(jobs, window=2 * cluster_cpus()):
            shards.append(entry)
            by_task.update(entry["counts_by_task"])
            by_source.update(entry["counts_by_source"])
            bar.update(entry["num_samples"])
    return write_manifest(folder, header, shards, by_task, by_source)


SHARD_ENGINES["ray"] = synth_shards  # data_pipelines/synth/common.py's plugin registry
