"""Synthetic chart QA: bar, line and pie charts rendered from sampled data, with exactly computed answers.

Each image becomes one `Record` whose conversation asks every question type that applies to its chart
kind, in a seeded random order. ``meta["chart"]`` keeps the data the chart was drawn from, and
``meta["transcript"]`` its text content in reading order, ``meta["text_boxes"]`` each text it drew and
where (synth/text_boxes.py; the tower's reading loss is built from it).
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: no display, and the fastest raster backend

from data_pipelines.synth import common  # noqa: E402
# What a basic chart is and its Axes renderer (chart_spec.py), importable from here as the generator's API.
from data_pipelines.synth.chart_spec import (CHAR_WIDTH, CHART_KINDS, FIG_INCHES, LABEL_THEMES,  # noqa: E402,F401
                                             MAX_VALUE, MIN_VALUE, ORDERED_THEMES, PALETTE, QUESTION_TYPES,
                                             QUESTION_TYPES_BY_KIND, TICK_PT, TITLE_PT, TITLES, VALUE_PT, ChartSpec,
                                             make_questions, render_chart, render_chart_and_text,
                                             sample_chart)
from data_pipelines.synth.common import qa_messages  # noqa: E402
from molmini.data.records import Record  # noqa: E402

log = logging.getLogger(__name__)

GENERATOR_NAME = "synth-charts"
GENERATOR_VERSION = "2"  # 2: meta["text_boxes"], what each chart drew where
KEY_PREFIX = "charts"
NOUN = "chart"
VARIETIES = ("basic", "full")
RENDERERS = ("axes", "direct")
SOURCE = "synth-charts"
TASK = "chart_qa"


def make_chart_record(rng: random.Random, key: str, image_px: int = 128, renderer: str = "axes") -> Record:
    """One chart image and all its question/answer pairs, drawn from `rng`. `renderer` "direct" draws bar
    and line charts about four times faster without an Axes (see fast_charts.py)."""
    spec = sample_chart(rng)
    qas = make_questions(rng, spec)
    meta = {"qa_types": [qtype for qtype, _, _ in qas], "chart": asdict(spec), "transcript": spec.transcript()}
    if renderer == "axes":
        image, meta["text_boxes"] = render_chart_and_text(spec, image_px)
    elif renderer == "direct":
        from data_pipelines.synth.fast_charts import render_chart_direct_and_text
        image, meta["text_boxes"] = render_chart_direct_and_text(spec, image_px)
    else:
        raise ValueError(f"chart renderer {renderer!r} is unknown; use one of {RENDERERS}")
    return Record(key=key, image=image, messages=qa_messages(qas), source=SOURCE, task=TASK, meta=meta)


def make_record(rng: random.Random, key: str, image_px: int = 128, variety: str = "basic",
                renderer: str = "axes") -> Record:
    """The generator entry point (see synth/common.py): the basic mix or the full variety."""
    if variety == "basic":
        return make_chart_record(rng, key, image_px, renderer)
    if variety == "full":
        from data_pipelines.synth.varied_charts import make_varied_chart_record
        return make_varied_chart_record(rng, key, image_px)
    raise ValueError(f"chart variety {variety!r} is unknown; use one of {VARIETIES}")


def _params(variety: str, renderer: str) -> dict[str, str]:
    """Options that differ from the default run's; the defaults are not recorded, so that folders made
    before there was a choice are still reused."""
    if variety not in VARIETIES or renderer not in RENDERERS:
        raise ValueError(f"chart variety {variety!r} / renderer {renderer!r}: use a variety of {VARIETIES} and a "
                         f"renderer of {RENDERERS}")
    if variety != "basic" and renderer != "axes":
        raise ValueError(f"the {renderer!r} renderer draws the basic bar and line charts only, not variety {variety!r}")
    return {**({"variety": variety} if variety != "basic" else {}),
            **({"renderer": renderer} if renderer != "axes" else {})}


def record_for_index(seed: int, split: str, index: int, image_px: int, variety: str = "basic",
                     renderer: str = "axes") -> Record:
    """The record at `index`: its own rng makes it independent of which process renders it, and in what order."""
    return common.record_for_index(__name__, seed, split, index, image_px, _params(variety, renderer))


def synthesize(out_dir: str | os.PathLike, num_images: int, seed: int, split: str = "train", image_px: int = 128,
               workers: int = 1, shard_size: int = 1000, progress: bool = True,
               variety: str = "basic", renderer: str = "axes", replace_own: bool = True,
               overwrite: bool = False, engine: str = "local",
               ray_address: str | None = None) -> dict[str, Any]:
    """Write `num_images` chart records as shards in `out_dir`; returns the manifest.

    `variety` "basic" is the bar/line/pie mix of the default run (7 question types, learnable at 128 px);
    "full" adds horizontal, grouped and stacked bars, multi-series lines, donuts, scatter and area
    charts in varied styles with 13 question types (see synth/varied_charts.py). The output depends only
    on (seed, split, num_images, image_px, variety), not on `workers`. A folder whose manifest already
    describes that dataset is reused as it is; any other folder must be empty or missing, or (`replace_own`)
    hold only a chart set with other settings (see synth/common.py).
    `renderer` "direct" draws the basic bar and line charts without an Axes, about four times faster.
    """
    params = _params(variety, renderer)
    return common.synthesize_with(__name__, out_dir, num_images, seed, split=split, image_px=image_px,
                                  workers=workers, shard_size=shard_size, progress=progress, params=params,
                                  replace_own=replace_own, overwrite=overwrite,
                                  engine=engine, ray_address=ray_address)
