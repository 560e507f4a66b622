"""The Ray engine of the data commands (``--engine ray``): synth, convert and curate spread over the cores
of a Ray cluster (one machine, or many), giving the same bytes and the same kept records as the local
engine. Ray is an optional dependency (``pip install "molmini[ray]"``): nothing else in data_pipelines
imports this package, and this module imports ray only inside its functions.

What stays with the driver, as in the local engine: the output rule (atomic_output_dir), the manifest,
the order of records and everything that depends on it (record keys, the first of each duplicate, the
report's examples). What the workers do: rendering (synth, which also writes its shard from the task),
reading and decoding images (convert), reading shards and judging records (curate). `synth.py`,
`convert.py` and `curate.py` hold each command's part.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator

from molmini.errors import USER_ERRORS

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
INSTALL_HINT = 'pip install "molmini[ray]"'


class RayNotInstalledError(ValueError):
    """--engine ray where Ray is not installed: a setting the user can fix, so one `error: ...` line."""


def connect(address: str | None = None) -> None:
    """Connect to the Ray cluster at `address` (or RAY_ADDRESS), or start one on this machine when neither
    is given. Already connected (a test's fixture, a notebook): nothing to do. A cluster started here has no
    dashboard and sends no usage statistics (unless RAY_USAGE_STATS_ENABLED says otherwise), and its
    workers import this checkout's data_pipelines, the one the driver runs."""
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalledError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}") from e
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, runtime_env=local_runtime_env(), log_to_driver=True)


@contextlib.contextmanager
def group_by_settings() -> Iterator[None]:
    """Ray Data set for this engine's group-bys while the block runs (then as it was): a sort shuffle, in
    tasks (the default hash shuffle first starts actors: seconds, on a small machine, for a few thousand
    rows), and no INFO logs (each dataset's plan and progress, pages per group-by, drowning the command's
    own lines; `-v` shows them)."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    context, logger = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
    strategy, level = context.shuffle_strategy, logger.level
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        context.shuffle_strategy, logger.level = strategy, level


def local_runtime_env() -> dict[str, Any]:
    """What the workers of a cluster started on this machine need to import the driver's own checkout
    (it may be a clone run from its folder, not an installed package)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {"env_vars": {"PYTHONPATH": path}}


def ordered(jobs: Iterable[tuple[Any, Any]], window: int) -> Iterator[tuple[Any, Any]]:
    """(info, result) for each (info, task ref) of `jobs`, in their order, with at most `window` tasks
    submitted and not yet fetched: `jobs` is consumed lazily, so a long job never queues (or holds in the
    object store) more than that. A task that failed on a user error (a bad input file) re-raises that
    error, so that the command line prints it as its one `error: ...` line; anything else (a worker that
    died) raises as Ray says."""
    pending: deque = deque()
    for job in jobs:
        pending.append(job)
        if len(pending) >= window:
            info, ref = pending.popleft()
            yield info, fetch(ref)
    while pending:
        info, ref = pending.popleft()
        yield info, fetch(ref)


def fetch(ref: Any) -> Any:
    """`ray.get(ref)`, with a user error from inside the task raised as itself (see `ordered`)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, USER_ERRORS):
            raise e.cause from None
        raise


def cluster_cpus() -> int:
    """The cluster's CPUs: how many tasks run at once, and so how many to keep in flight."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
