"""Throughput of the synthetic generators and of the shard stream, on this machine.

    taskset -c 0 python bench/synth_throughput.py            # one core: images/s per core
    python bench/synth_throughput.py --num 100 --stream-workers 0 2

Rendering is timed in this process (pin it to one core with taskset for per-core figures); the plain
matplotlib loop (a new pyplot figure per chart, savefig to PNG, close) renders the same bar and line
charts as the generator (with fewer decorations), so the ratios are the gains from reusing one figure
(the default renderer) and from drawing figure-level artists without an Axes (`renderer="direct"`).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from data_pipelines.shards import ShardWriter  # noqa: E402
from data_pipelines.synth import charts, documents, tables, varied_charts  # noqa: E402
from data_pipelines.synth.fast_charts import render_chart_direct  # noqa: E402
from molmini.data.reader import find_shards  # noqa: E402
from molmini.data.stream import ShardStream


def specs_of(kind: str, n: int) -> list[charts.ChartSpec]:
    out, seed = [], 0
    while len(out) < n:
        spec = charts.sample_chart(random.Random(seed))
        seed += 1
        if spec.kind == kind:
            out.append(spec)
    return out


def rate(fn, items) -> float:
    fn(items[0])  # warm-up: font caches, first figure
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


def plain_matplotlib(spec: charts.ChartSpec, image_px: int = 128) -> bytes:
    """The naive loop: a new pyplot figure per chart, drawn the usual way, saved and closed."""
    fig, ax = plt.subplots(figsize=(charts.FIG_INCHES, charts.FIG_INCHES), dpi=image_px / charts.FIG_INCHES)
    x = range(len(spec.labels))
    if spec.kind == "bar":
        ax.bar(x, spec.values, color=[charts.PALETTE[c] for c in spec.colours])
    else:
        ax.plot(x, spec.values, color=charts.PALETTE[spec.colours[0]], marker="o", markersize=3.5)
    ax.set_xticks(list(x))
    ax.set_xticklabels(spec.labels, fontsize=charts.TICK_PT)
    ax.tick_params(labelsize=charts.TICK_PT)
    if spec.title:
        ax.set_title(spec.title, fontsize=charts.TITLE_PT)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def raw_tar_rate(folder: str, limit: int) -> float:
    """The ceiling: read the shards' members with tarfile and decode each PNG, nothing else."""
    import tarfile

    from PIL import Image
    started, n = time.perf_counter(), 0
    for shard in find_shards(folder):
        with tarfile.open(shard) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".png"):
                    Image.open(io.BytesIO(data)).convert("RGB").load()
                    n += 1
                    if n >= limit:
                        return n / (time.perf_counter() - started)
    return n / (time.perf_counter() - started)


def decode_only(record, rng):
    record.load_image()
    return {"key": record.key}


def stream_rate(folder: str, workers: int, limit: int, transform=decode_only) -> float:
    stream = ShardStream(find_shards(folder), transform, shuffle_buffer=100, seed=0)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    started, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
        if n >= limit:
            break
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200, help="images per generator row")
    ap.add_argument("--stream-records", type=int, default=2000, help="records written for the stream rows")
    ap.add_argument("--stream-workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    n = args.num
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, this process may use {affinity}; "
          f"python {platform.python_version()}, matplotlib {matplotlib.__version__}")
    rows = []
    for kind in ("bar", "line"):
        specs = specs_of(kind, n)
        plain = rate(plain_matplotlib, specs)
        axes = rate(lambda s: charts.render_chart(s, 128), specs)
        direct = rate(lambda s: render_chart_direct(s, 128), specs)
        rows.append((f"{kind} chart, 128 px, plain matplotlib loop", plain, ""))
        rows.append((f"{kind} chart, 128 px, reused figure + Axes", axes, f"{axes / plain:.1f}x the plain loop"))
        rows.append((f"{kind} chart, 128 px, direct artists", direct, f"{direct / plain:.1f}x the plain loop"))
    for kind in ("bar", "line"):
        rngs = [random.Random(i) for i in range(n)]
        rows.append((f"{kind} chart, 384 px (full variety)",
                     rate(lambda r: varied_charts.make_varied_chart_record(r, "k", 384, kind=kind), rngs), ""))
    rngs = [random.Random(i) for i in range(n)]
    rows.append(("full-variety chart mix, 384 px", rate(lambda r: varied_charts.make_varied_chart_record(r, "k"), rngs), ""))
    rngs = [random.Random(i) for i in range(n)]
    rows.append(("table, 448 px", rate(lambda r: tables.make_record(r, "k", 448), rngs), ""))
    rngs = [random.Random(i) for i in range(n)]
    rows.append(("document, 512 px (with scan noise)", rate(lambda r: documents.make_record(r, "k", 512), rngs), ""))
    # The 128 px rows time rendering to PNG; the others whole records (data, questions, image).
    print(f"\n{'generator (one process)':<52}{'images/s':>10}  note")
    for name, value, note in rows:
        print(f"{name:<52}{value:>10.1f}  {note}")

    with tempfile.TemporaryDirectory() as tmp:
        with ShardWriter(tmp, generator="bench", maxcount=max(1, args.stream_records // 8)) as writer:
            for i in range(args.stream_records):
                writer.write(charts.record_for_index(0, "bench", i, 128))
        # What training reads: the record through the processor of the default run (global view at 128 px,
        # 16 px patches, 2x2 pooling windows, chat turns tokenized, labels), as molmini.train.loop does it.
        from molmini.data.formatter import training_transform
        from molmini.data.processor import MolminiProcessor, ProcessorConfig
        from molmini.data.tokenizer import iter_shard_texts, train_bpe_tokenizer
        tokenizer = train_bpe_tokenizer(iter_shard_texts(find_shards(tmp)), vocab_size=1024)
        processor = MolminiProcessor(tokenizer, ProcessorConfig(image_size=128, patch_size=16, pool=2,
                                                                image_mean=(0.48, 0.46, 0.41), image_std=(0.27, 0.26, 0.28)))
        full = training_transform(processor)
        print(f"\n{'128 px charts from 8 shards (one core per process)':<52}{'samples/s':>10}")
        print(f"{'ceiling: tarfile read + PNG decode, no stream':<52}{raw_tar_rate(tmp, args.stream_records):>10.1f}")
        for workers in args.stream_workers:
            print(f"{f'ShardStream, decode only, workers = {workers}':<52}"
                  f"{stream_rate(tmp, workers, args.stream_records):>10.1f}")
        for workers in args.stream_workers:
            print(f"{f'ShardStream + processor (crops, tokens), workers = {workers}':<52}"
                  f"{stream_rate(tmp, workers, args.stream_records, full):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
