"""The data commands' two engines on this machine: local against Ray, in records per second, for synth,
convert (LLaVA JSON with an image folder, and ChartQA parquet) and curate, with Ray's start-up timed apart.

    python bench/data_engine.py                 # 400 charts, shards of 25; a Ray instance on this machine
    python bench/data_engine.py --num 2000 --ray-address auto

Each stage runs the same job through both engines and checks that they agree (the same shards' bytes for
synth, the same records for convert and curate), so a figure is never a faster wrong answer. The local
synth runs with --workers equal to the cores Ray gets, so both use the same cores.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipelines.shards import ShardWriter  # noqa: E402


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def shard_bytes(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.glob("shard-*.tar"))]


def samples(folder: Path) -> list[dict]:
    from molmini.data.reader import find_shards, iter_records
    return [r.to_sample() for r in iter_records(find_shards(folder))]


def sources_from(charts: Path, work: Path) -> tuple[Path, Path, Path]:
    """A LLaVA JSON with an image folder and a ChartQA parquet folder of 4 files, both from the synthetic
    charts (two rows per chart in the parquet, as ChartQA asks several questions of a chart)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from molmini.data.reader import find_shards, iter_records

    records = list(iter_records(find_shards(charts)))
    images = work / "images"
    images.mkdir(parents=True)
    entries, rows = [], {"image": [], "query": [], "label": [], "human_or_machine": []}
    for n, record in enumerate(records):
        name = f"{n:06d}.{record.image_ext}"
        (images / name).write_bytes(record.image)
        conversations = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                         for m in record.messages]
        entries.append({"id": record.key, "image": name, "conversations": conversations})
        for question, answer in record.qa_pairs()[:2]:
            rows["image"].append({"bytes": record.image, "path": None})
            rows["query"].append(question.replace("<image>", ""))
            rows["label"].append([answer])
            rows["human_or_machine"].append(0)
    llava = work / "llava.json"
    llava.write_text(json.dumps(entries))
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("query", pa.string()), ("label", pa.list_(pa.string())), ("human_or_machine", pa.int64())])
    parquet = work / "chartqa"
    parquet.mkdir()
    table, files = pa.table(rows, schema=schema), 4
    step = -(-len(table) // files)
    for n in range(files):
        pq.write_table(table.slice(n * step, step), parquet / f"train-{n:05d}-of-{files:05d}.parquet")
    return llava, images, parquet


def with_duplicates(charts: Path, out: Path) -> int:
    """The charts plus an exact copy of every tenth and a JPEG copy of every tenth: a set curation trims."""
    import dataclasses

    from PIL import Image

    from molmini.data.reader import find_shards, iter_records

    records = list(iter_records(find_shards(charts)))
    extra = []
    for n, record in enumerate(records[::10]):
        extra.append(dataclasses.replace(record, key=f"copy-{n}"))
        jpeg = io.BytesIO()
        Image.open(io.BytesIO(record.image)).convert("RGB").save(jpeg, format="JPEG", quality=80)
        extra.append(dataclasses.replace(record, key=f"jpeg-{n}", image=jpeg.getvalue(), image_ext="jpg"))
    with ShardWriter(out, generator="bench", maxcount=25) as writer:
        for record in records + extra:
            writer.write(record)
    return len(records) + len(extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=400, help="chart images to synthesise (default: 400)")
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--ray-address", default=None, help="an existing cluster (default: one started here)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from data_pipelines.convert import convert
    from data_pipelines.curate import curate, standard_filters
    from data_pipelines.synth import charts
    from molmini.data.reader import BadRecords, find_shards, read_records

    figures: dict[str, object] = {"command": " ".join(["python", *sys.argv]),
                                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
                                             f"{platform.release()}, Python {platform.python_version()}",
                                  "date": time.strftime("%Y-%m-%d"), "load_at_start": os.getloadavg()[0],
                                  "num": args.num}
    _, import_s = timed(lambda: __import__("ray"))
    import ray

    from data_pipelines.ray_engine import cluster_cpus, connect
    _, init_s = timed(lambda: connect(args.ray_address))
    cpus = cluster_cpus()
    figures.update({"ray_version": ray.__version__, "ray_cpus": cpus, "import_ray_s": round(import_s, 2),
                    "ray_init_s": round(init_s, 2)})
    print(f"ray {ray.__version__}: import {import_s:.2f} s, start-up {init_s:.2f} s, {cpus} CPUs", flush=True)

    def report(stage: str, records: int, local_s: float, ray_s: float) -> None:
        figures[stage] = {"records": records, "local_per_s": round(records / local_s, 1),
                          "ray_per_s": round(records / ray_s, 1), "local_s": round(local_s, 2),
                          "ray_s": round(ray_s, 2)}
        print(f"{stage:24s} {records:6d} records  local {records / local_s:8.1f}/s  ray {records / ray_s:8.1f}/s",
              flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-data-engine-") as tmp:
        work = Path(tmp)
        common = dict(num_images=args.num, seed=0, shard_size=args.shard_size, progress=False)
        _, local_s = timed(lambda: charts.synthesize(work / "synth-local", workers=cpus, **common))
        _, ray_s = timed(lambda: charts.synthesize(work / "synth-ray", engine="ray", **common))
        assert shard_bytes(work / "synth-local") == shard_bytes(work / "synth-ray")
        report("synth charts", args.num, local_s, ray_s)

        llava, images, parquet = sources_from(work / "synth-local", work / "sources")
        for kind, path, extra in (("llava", llava, {"images_dir": images}), ("chartqa", parquet, {}),
                                  ("chartqa", parquet, {"group_by_image": False})):
            outs, seconds = {}, {}
            label = f"convert {kind}" + (" per row" if extra.get("group_by_image") is False else "")
            for engine in ("local", "ray"):
                outs[engine] = work / f"{label}-{engine}".replace(" ", "-")
                (manifest, _), seconds[engine] = timed(lambda: convert(kind, path, outs[engine], progress=False,
                                                                       engine=engine, **extra))
            assert samples(outs["local"]) == samples(outs["ray"])
            report(label, manifest["num_samples"], seconds["local"], seconds["ray"])

        source = work / "curate-input"
        total = with_duplicates(work / "synth-local", source)
        filters = lambda: standard_filters(skip=["eval_qa_overlap"])  # noqa: E731
        local_kept, local_s = timed(lambda: [r.key for r in curate(read_records(find_shards(source)),
                                                                   filters())[0]])
        from data_pipelines.ray_engine.curate import curate_on_ray
        ray_kept, ray_s = timed(lambda: [r.key for r in curate_on_ray(find_shards(source), filters(),
                                                                      BadRecords())[0]])
        assert local_kept == ray_kept, "the engines kept different records"
        report("curate", total, local_s, ray_s)
        figures["curate"]["kept"] = len(local_kept)
    figures["load_at_end"] = os.getloadavg()[0]
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
