"""What every synthetic generator shares: answer formatting, the refusal string, QA -> messages, and the
driver that renders records in parallel processes into shards, deterministically for a given seed.

A generator is a module with ``GENERATOR_NAME``, ``GENERATOR_VERSION``, ``KEY_PREFIX``, ``NOUN`` and
``make_record(rng, key, image_px, **params) -> Record``. Record ``i`` is drawn from its own
``random.Random(f"{seed}-{split}-{i}")``, so the output does not depend on how many processes render it.
"""
from __future__ import annotations

import functools
import importlib
import logging
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from data_pipelines.outputs import atomic_output_dir, command_identity, engine_plugin
from data_pipelines.shards import MANIFEST_NAME, ShardWriter, read_manifest
from molmini.data.records import IMAGE_MARKER, Record
from molmini.progress import progress_bar

log = logging.getLogger(__name__)

# The one answer to a question the image cannot answer (asked so that a model learns to say so).
REFUSAL = "unanswerable"


def fmt_number(x: float, decimals: int = 2) -> str:
    """ChartQA's answer format: a plain number, no units, no thousands separators, no trailing zeros."""
    x = round(float(x), decimals)
    if x == int(x):
        return str(int(x))
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def qa_messages(qas: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """Messages for (type, question, answer) triples; the image belongs to the first user turn."""
    messages = []
    for i, (_, question, answer) in enumerate(qas):
        messages.append({"role": "user", "content": (IMAGE_MARKER if i == 0 else "") + question})
        messages.append({"role": "assistant", "content": answer})
    return messages


def record_for_index(module: str, seed: int, split: str, index: int, image_px: int,
                     params: dict[str, Any] | None = None) -> Record:
    """Record `index` of a generator module: its own rng makes it independent of who renders it, and when."""
    gen = importlib.import_module(module)
    # The split is part of the seed so that a train and a val set made with the same seed differ.
    rng = random.Random(f"{seed}-{split}-{index}")
    return gen.make_record(rng, key=f"{gen.KEY_PREFIX}-{split}-{index:08d}", image_px=image_px, **(params or {}))


def _render_range(job: tuple[str, int, str, int, dict[str, Any], int, int]) -> list[Record]:
    """Worker entry point (top level, so that it pickles under spawn)."""
    module, seed, split, image_px, params, start, stop = job
    return [record_for_index(module, seed, split, i, image_px, params) for i in range(start, stop)]


def render_records(module: str, seed: int, split: str, num_images: int, image_px: int, workers: int,
                   params: dict[str, Any] | None = None) -> Iterator[list[Record]]:
    """Chunks of records in index order, rendered by `workers` processes."""
    chunk = max(1, min(32, num_images // (4 * workers)))  # small enough to keep every worker busy
    jobs = [(module, seed, split, image_px, dict(params or {}), start, min(start + chunk, num_images))
            for start in range(0, num_images, chunk)]
    if workers <= 1:
        yield from map(_render_range, jobs)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap(_render_range, jobs)  # imap keeps job order, so records arrive in index order


def _reusable(out_dir: str | os.PathLike, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's manifest if it describes exactly the dataset we would generate, else None."""
    try:
        manifest = read_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return None
    if any(manifest.get(k) != v for k, v in expected.items()):
        return None
    # Shards are not re-hashed here (that would read the whole set); verify_manifest does that.
    shards_present = all((Path(out_dir) / s["name"]).is_file() for s in manifest.get("shards", []))
    return manifest if shards_present else None


# Engines other than the local one render shards through a plugin that registers itself here when imported
# (data_pipelines/ray_engine/synth.py), loaded by name so that this module never imports it (the engine
# depends on the generators, not the reverse).
SYNTH_ENGINE_MODULES = {"ray": "data_pipelines.ray_engine.synth"}
SHARD_ENGINES: dict[str, Callable[..., dict[str, Any]]] = {}


class FolderInUseError(FileExistsError):
    """A synthesis output folder that holds files this generator did not write with these settings."""


def _own_set(out_dir: Path, generator: str) -> bool:
    """Whether `out_dir` holds nothing but a complete set this generator wrote (with other settings)."""
    try:
        manifest = read_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return False
    listed = {MANIFEST_NAME} | {s["name"] for s in manifest.get("shards", [])}
    return manifest.get("generator") == generator and {p.name for p in out_dir.iterdir()} <= listed


def synthesize_with(module: str, out_dir: str | os.PathLike, num_images: int, seed: int, split: str = "train",
                    image_px: int = 128, workers: int = 1, shard_size: int = 1000, progress: bool = True,
                    params: dict[str, Any] | None = None, replace_own: bool = True,
                    overwrite: bool = False, engine: str = "local", ray_address: str | None = None) -> dict[str, Any]:
    """Write `num_images` records of generator `module` as shards in `out_dir`; returns the manifest.

    The output depends only on (seed, split, num_images, image_px, params), not on `workers`. A folder
    whose manifest already describes that dataset is reused as it is. Otherwise the set is written only
    into a folder that is missing or empty or (with `replace_own`) holds nothing but a set this generator
    wrote with other settings; any other folder raises FolderInUseError and is left untouched, so
    synthesis never deletes data it did not make. With `overwrite` (the command line's --overwrite) a shard
    set another command wrote is moved aside instead (data_pipelines.outputs.atomic_output_dir). The shards
    are written beside the folder and moved in once complete. `params` (the generator's options) are recorded in the manifest.
    `engine` "ray" renders one shard per Ray task (on the cluster at `ray_address`, or RAY_ADDRESS, or one
    started here; data_pipelines/ray_engine/synth.py), into the same bytes.
    """
    if num_images < 0 or image_px < 32 or workers < 1 or shard_size < 1:
        raise ValueError(f"need num_images >= 0, image_px >= 32, workers >= 1 and shard_size >= 1; got "
                         f"{num_images}, {image_px}, {workers}, {shard_size}")
    gen = importlib.import_module(module)
    params = dict(params or {})
    manifest_params = {"image_px": image_px, **params}
    expected = {"generator": gen.GENERATOR_NAME, "generator_version": gen.GENERATOR_VERSION, "seed": seed,
                "split": split, "num_samples": num_images, "params": manifest_params}
    what = gen.NOUN  # "chart": the messages say "4000 chart images"
    manifest = _reusable(out_dir, expected)
    if manifest is not None:
        say(f"reusing {num_images} {what} images in {out_dir} (its manifest matches seed, split and params)",
            progress)
        return manifest
    folder = Path(out_dir)
    identity = {**command_identity({"generator": gen.GENERATOR_NAME, "seed": seed, "split": split,
                                    "params": manifest_params}), "num_samples": num_images}
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        if replace_own and _own_set(folder, gen.GENERATOR_NAME):
            identity = command_identity(read_manifest(folder))  # this generator's own set: replaced
        else:
            raise FolderInUseError(
                f"{out_dir} already holds files that the {gen.GENERATOR_NAME} generator did not write with "
                f"these settings (seed {seed}, split {split}, {num_images} images, params {manifest_params}); "
                "synthesis writes only into an empty or missing folder and has left it untouched. Choose "
                "another --out, or pass --overwrite to move its shard set aside (nothing is deleted)")
        say(f"{out_dir} holds a {gen.GENERATOR_NAME} set with other settings; replacing it", progress)
    started = time.perf_counter()
    if engine != "local":
        from data_pipelines.ray_engine import connect
        synth_shards = engine_plugin(SHARD_ENGINES, engine, SYNTH_ENGINE_MODULES)

        connect(ray_address)
        started = time.perf_counter()  # the cluster's start-up is not rendering time
        header = {"generator": gen.GENERATOR_NAME, "generator_version": gen.GENERATOR_VERSION, "seed": seed,
                  "split": split, "params": manifest_params}
        with atomic_output_dir(out_dir, identity, overwrite=overwrite,
                               empty_reason=lambda: f"--num is {num_images}") as tmp:
            manifest = synth_shards(tmp, module, header=header, num_images=num_images, image_px=image_px,
                                    shard_size=shard_size, params=params, progress=progress)
        seconds = time.perf_counter() - started
        say(f"wrote {num_images} {what} images to {out_dir} on Ray in {seconds:.1f} s "
            f"({num_images / max(seconds, 1e-9):.0f} images/s)", progress)
        return manifest
    if engine != "local":
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    with atomic_output_dir(out_dir, identity, overwrite=overwrite,
                           empty_reason=lambda: f"--num is {num_images}") as tmp, \
            ShardWriter(tmp, generator=gen.GENERATOR_NAME, generator_version=gen.GENERATOR_VERSION, seed=seed,
                        split=split, params=manifest_params, maxcount=shard_size) as writer, \
            progress_bar(total=num_images, desc=f"synth {gen.KEY_PREFIX} -> {out_dir}", unit="img",
                         enabled=progress) as bar:
        for records in render_records(module, seed, split, num_images, image_px, workers, params):
            for record in records:
                writer.write(record)
            bar.update(len(records))
    seconds = time.perf_counter() - started
    say(f"wrote {num_images} {what} images to {out_dir} in {seconds:.1f} s "
        f"({num_images / max(seconds, 1e-9):.0f} images/s)", progress)
    return writer.manifest


def say(message: str, progress: bool) -> None:
    """Print next to the progress bar when there is one; otherwise only log."""
    if progress:
        print(message, file=sys.stderr)
    else:
        log.info(message)


# ---- PIL rendering helpers (tables, documents) ----------------------------------------------------------

FONT_FILES = {  # (family, bold, italic) -> file in matplotlib's bundled fonts
    ("sans", False, False): "DejaVuSans.ttf", ("sans", True, False): "DejaVuSans-Bold.ttf",
    ("sans", False, True): "DejaVuSans-Oblique.ttf", ("serif", False, False): "DejaVuSerif.ttf",
    ("serif", True, False): "DejaVuSerif-Bold.ttf", ("serif", False, True): "DejaVuSerif-Italic.ttf",
    ("mono", False, False): "DejaVuSansMono.ttf", ("mono", True, False): "DejaVuSansMono-Bold.ttf",
    ("mono", False, True): "DejaVuSansMono-Oblique.ttf",
}
FONT_FAMILIES = ("sans", "serif", "mono")


@functools.lru_cache(maxsize=256)
def pil_font(family: str, size: int, bold: bool = False, italic: bool = False):
    """A TrueType font that ships with matplotlib (DejaVu), so every machine renders the same pixels."""
    import matplotlib
    from PIL import ImageFont
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONT_FILES[family, bold, italic]
    return ImageFont.truetype(str(path), size)


def encode_image(image, rng: random.Random | None = None, noise: bool = False,
                 text_boxes: list[dict[str, Any]] | None = None) -> tuple[bytes, str]:
    """(bytes, extension) of an RGB image; with `noise`, a scan's defects drawn from rng: a slight skew,
    blur and JPEG artefacts (then the image is a JPEG). `text_boxes` (synth/text_boxes.py), when given, are
    turned in place with the skew, so they stay on their text."""
    import io

    from PIL import Image, ImageFilter
    ext = "png"
    quality = None
    if noise and rng is not None:
        if rng.random() < 0.5:
            degrees = rng.uniform(-2.0, 2.0)
            image = image.rotate(degrees, resample=Image.BILINEAR, expand=False, fillcolor="white")
            if text_boxes is not None:
                from data_pipelines.synth.text_boxes import rotated
                text_boxes[:] = rotated(text_boxes, degrees, image.width, image.height)
        if rng.random() < 0.4:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
        if rng.random() < 0.6:
            ext, quality = "jpg", rng.randint(35, 75)
    out = io.BytesIO()
    if ext == "jpg":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="PNG", compress_level=3)
    return out.getvalue(), ext
