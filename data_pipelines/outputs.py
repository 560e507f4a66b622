"""The one rule for every data command's --out (synth, convert, curate; docs/data.md "The commands"): a folder
holding a shard set that this same command line did not write is refused unless --overwrite, which moves that
set aside; a result with no record replaces nothing; the output is written into a temporary folder beside
--out and swapped in at the end, manifest last; and a temporary folder that a killed run left is removed by
the next run once its writer is gone. Also how a lower module reaches an engine above it (engine_plugin)."""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import socket
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from data_pipelines.shards import MANIFEST_NAME, SHARD_GLOB, read_manifest, remove_shards

log = logging.getLogger(__name__)


def engine_plugin(registry: dict[str, Callable], engine: str, modules: dict[str, str]) -> Callable:
    """`registry[engine]`, importing the engine's plugin module `modules[engine]` (which fills the registry
    when imported) the first time: how a lower module reaches an engine above it without importing it."""
    if engine not in registry:
        if engine not in modules:
            raise ValueError(f"engine must be 'local' or one of {sorted(modules)}, got {engine!r}")
        importlib.import_module(modules[engine])
    return registry[engine]


class OutputInUseError(FileExistsError):
    """An --out folder that holds a shard set another command line wrote (the user's data, as far as this
    command knows): refused unless the user passes --overwrite, which moves that set aside."""


class EmptyResultError(ValueError):
    """A command whose result holds no record: it replaces nothing and exits non-zero."""


WRITER_FILE = ".molmini-writer.json"  # in a temporary output folder: who writes it (pid, host)
TEMP_INFIX = ".tmp-"                  # .OUT.tmp-XXXX beside OUT


def command_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What says which command line wrote a shard set: its generator, seed, split and params (less the
    counts a converter adds at the end, which are results, not settings)."""
    params = {k: v for k, v in (manifest.get("params") or {}).items() if k != "conversion"}
    return {"generator": manifest.get("generator"), "seed": manifest.get("seed"), "split": manifest.get("split"),
            "params": params}


def written_by(held: dict[str, Any] | None, identity: dict[str, Any] | None) -> bool:
    """Whether the manifest `held` is the output of the command line `identity` (a `command_identity`, to
    which a generator may add `num_samples`: how many records it was asked for)."""
    if held is None or identity is None:
        return False
    view = {**command_identity(held), "num_samples": held.get("num_samples")}
    return all(view.get(k) == v for k, v in identity.items())


def holds_shard_set(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a manifest or any shard (a complete set or what a cut run left)."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / MANIFEST_NAME).exists() or any(folder.glob(SHARD_GLOB)))


def check_output_folder(out_dir: str | os.PathLike, identity: dict[str, Any] | None, overwrite: bool = False) -> bool:
    """The one rule for every data command's --out (synth, convert, curate): a folder that holds a shard
    set which this same command line did not write (another generator, input or setting; a set without a
    readable manifest) is refused, unless `overwrite`; then True is returned: `atomic_output_dir` moves
    that set aside at the end. A missing or shard-free folder, or this command line's own earlier output,
    is fine (False)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} is a file; pass a folder with --out")
    if not holds_shard_set(out):
        return False
    try:
        held = read_manifest(out)
    except (FileNotFoundError, ValueError):
        held = None
    if written_by(held, identity):
        return False
    if overwrite:
        return True
    source = (held or {}).get("params", {}).get("input") if isinstance((held or {}).get("params"), dict) else None
    what = (f"a set written by {held.get('generator')!r}{f' from {source}' if source else ''} with other settings"
            if held is not None else "shards without a readable manifest")
    raise OutputInUseError(f"--out {out} already holds {what}, which this command did not write; it is left "
                           f"as it is. Choose another --out, or pass --overwrite to move that set aside to "
                           f"{out.name}.replaced-TIMESTAMP beside it (nothing is deleted)")


def _writer_alive(info: dict[str, Any]) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine's writer (a shared file system): not ours to judge
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders that an earlier, killed run of a data command left beside `out_dir`
    (``.OUT.tmp-XXXX``): only those that hold this module's writer file naming a process of this host that
    is no longer alive. Returns what it removed."""
    out = Path(out_dir)
    removed = []
    if not out.parent.is_dir():
        return removed
    for tmp in out.parent.glob(f".{out.name}{TEMP_INFIX}*"):
        try:
            info = json.loads((tmp / WRITER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not one of ours (or not readable): leave it
        if isinstance(info, dict) and not _writer_alive(info):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def move_set_aside(out: Path) -> Path | None:
    """Move `out`'s manifest and shards (nothing else) into a new folder OUT.replaced-TIMESTAMP beside it."""
    if not holds_shard_set(out):
        return None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        aside, n = out.with_name(f"{out.name}.replaced-{stamp}-{n}"), n + 1
    aside.mkdir()
    for path in sorted(out.glob(SHARD_GLOB)) + [out / MANIFEST_NAME]:
        if path.exists():
            os.replace(path, aside / path.name)
    return aside


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, identity: dict[str, Any] | None = None, overwrite: bool = False,
                      empty_reason: Callable[[], str] | None = None) -> Iterator[Path]:
    """A new, empty folder beside `out_dir` for a command to write its output into.

    Before anything is written, `check_output_folder` applies the one output rule (`identity`: this
    command line's `command_identity`; `overwrite`: the user's --overwrite), and temporary folders left by
    killed runs are removed. When the block ends without an error, the output replaces `out_dir`'s manifest
    and shards (its other files stay; with `overwrite`, a set another command wrote is first moved aside).
    An output with no record replaces nothing: EmptyResultError, with `empty_reason()` saying why. On any
    error the temporary folder is deleted and `out_dir` is left exactly as it was. Beside `out_dir` rather
    than in /tmp, so that moving the files in is a rename on one file system."""
    out = Path(out_dir)
    move_aside = check_output_folder(out, identity, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{TEMP_INFIX}"))
    try:
        (tmp / WRITER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        yield tmp
        (tmp / WRITER_FILE).unlink()
        manifest = read_manifest(tmp) if (tmp / MANIFEST_NAME).exists() else None
        if manifest is not None and manifest.get("num_samples", 0) == 0:
            why = empty_reason() if empty_reason is not None else ""
            raise EmptyResultError(f"no record to write to {out}{': ' + why if why else ''}; {out} was left as it "
                                   "was (a result with no record never replaces anything)")
        out.mkdir(exist_ok=True)
        if move_aside:
            log.warning("moved the set that was in %s aside to %s", out, move_set_aside(out))
        remove_shards(out)
        # The manifest moves last: until it is in place the folder reads as incomplete, never as a mix.
        for path in sorted(tmp.iterdir(), key=lambda p: (p.name == MANIFEST_NAME, p.name)):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
