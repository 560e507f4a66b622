"""--engine ray gives what the local engine gives: synth's shards byte for byte (and its manifest but for
`created`), convert's records and keys, curate's kept records and report; a killed Ray job leaves --out as
it was. Skipped where Ray is not installed (pip install "molmini[ray]"). One Ray instance serves the
session: 2 CPUs, on 127.0.0.1 only, no dashboard, no usage statistics, its files in a temporary folder."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from data_pipelines.__main__ import main  # noqa: E402
from data_pipelines.convert import (ConversionStats, convert_captions, convert_cauldron, convert_chartqa,  # noqa: E402
                                    convert_llava)
from data_pipelines.shards import MANIFEST_NAME, ShardWriter  # noqa: E402
from molmini.data.reader import find_shards, iter_records  # noqa: E402
from tests.data_pipelines.test_convert import chartqa_parquet, llava_files  # noqa: E402,F401
from tests.data_pipelines.test_curate import blocky_image, eval_dir, record  # noqa: E402,F401

pytestmark = pytest.mark.slow  # a Ray instance takes ~5 s to start, and every test here uses it

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_cluster():
    from data_pipelines.ray_engine import local_runtime_env

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    context = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, _node_ip_address="127.0.0.1",
                       runtime_env=local_runtime_env(), log_to_driver=False)
    data = ray.data.DataContext.get_current()
    data.default_hash_shuffle_parallelism = 2
    data.max_hash_shuffle_aggregators = 2
    data.enable_progress_bars = False
    yield context
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def without_created(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest.pop("created")
    return manifest


def samples(folder: Path) -> list[dict]:
    return [r.to_sample() for r in iter_records(find_shards(folder))]


def test_synth_shards_are_the_local_engines_byte_for_byte(ray_cluster, tmp_path):
    args = ["synth", "charts", "--num", "7", "--shard-size", "3", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    assert main(args + ["--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    local, on_ray = sorted((tmp_path / "local").glob("shard-*.tar")), sorted((tmp_path / "ray").glob("shard-*.tar"))
    assert [p.name for p in on_ray] == [p.name for p in local] == ["shard-000000.tar", "shard-000001.tar",
                                                                   "shard-000002.tar"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(local, on_ray))
    assert without_created(tmp_path / "ray") == without_created(tmp_path / "local")


def test_convert_llava_gives_the_same_records_keys_and_counts(ray_cluster, llava_files, tmp_path):
    json_path, images, _ = llava_files
    # Two entries whose ids make the same key base: the second gets its '-2' as in the local engine.
    entries = json.loads(json_path.read_text())
    (images / "e.png").write_bytes((images / "d.png").read_bytes())
    entries.append({"id": "1_a", "image": "e.png", "conversations": entries[2]["conversations"]})
    json_path.write_text(json.dumps(entries))
    local_stats, ray_stats = ConversionStats(), ConversionStats()
    local = list(convert_llava(json_path, images, stats=local_stats))
    on_ray = list(convert_llava(json_path, images, stats=ray_stats, engine="ray"))
    assert "llava-1_a-2" in [r.key for r in local]
    assert [r.to_sample() for r in on_ray] == [r.to_sample() for r in local]
    assert ray_stats.as_dict() == local_stats.as_dict()

    out = {}
    for engine in ("local", "ray"):
        out[engine] = tmp_path / f"out-{engine}"
        assert main(["convert", "llava", "--input", str(json_path), "--images", str(images), "--out",
                     str(out[engine]), "--shard-size", "2", "--engine", engine]) == 0
    assert samples(out["ray"]) == samples(out["local"])
    assert without_created(out["ray"]) == without_created(out["local"])


def test_convert_chartqa_merges_rows_by_image_as_the_local_engine(ray_cluster, chartqa_parquet):
    path, _, _ = chartqa_parquet
    for group in (True, False):
        local_stats, ray_stats = ConversionStats(), ConversionStats()
        local = [r.to_sample() for r in convert_chartqa(path, stats=local_stats, group_by_image=group)]
        on_ray = [r.to_sample() for r in convert_chartqa(path, stats=ray_stats, group_by_image=group, engine="ray")]
        assert on_ray == local and ray_stats.as_dict() == local_stats.as_dict()


def test_convert_captions_keys_a_missing_images_row_as_the_local_engine(ray_cluster, tmp_path):
    """A row whose image is missing still takes its key (its build asks for it before reading the image),
    so the next row of that image gets '-2' in both engines."""
    from tests.data_pipelines.test_convert import image_bytes

    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "cat.png").write_bytes(image_bytes("PNG"))
    lines = [json.dumps({"image": "pics/cat.jpg", "caption": "A cat."}),  # missing: key taken, row skipped
             json.dumps({"image": "pics/cat.png", "caption": "A cat."}), "{not json",
             json.dumps({"image": "pics/cat.png", "caption": "The cat again."})]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    local_stats, ray_stats = ConversionStats(), ConversionStats()
    local = [r.to_sample() for r in convert_captions(jsonl, stats=local_stats)]
    on_ray = [r.to_sample() for r in convert_captions(jsonl, stats=ray_stats, engine="ray")]
    assert [s["__key__"] for s in local] == ["captions-pics_cat-2", "captions-pics_cat-3"]
    assert on_ray == local and ray_stats.as_dict() == local_stats.as_dict()


def test_convert_reads_parquet_files_in_parallel_with_the_local_engines_keys(ray_cluster, tmp_path):
    """One task per file; two files with one stem (in two folders) give the same keys, '-2' and all."""
    from tests.data_pipelines.test_convert import CAULDRON_SCHEMA, hf_image, image_bytes, write_parquet

    texts = [{"user": "Which box?", "assistant": "The red one.", "source": "ai2d"}]
    for n, folder in enumerate(["a", "b", "c"]):
        (tmp_path / "in" / folder).mkdir(parents=True)
        rows = {"images": [[hf_image(image_bytes("PNG", (n * 60, 0, 0)))], [hf_image(b"garbage")], []],
                "texts": [texts, texts, texts]}
        write_parquet(tmp_path / "in" / folder / "train-00000-of-00001.parquet", rows, CAULDRON_SCHEMA)
    local_stats, ray_stats = ConversionStats(), ConversionStats()
    local = [r.to_sample() for r in convert_cauldron(tmp_path / "in", stats=local_stats)]
    on_ray = [r.to_sample() for r in convert_cauldron(tmp_path / "in", stats=ray_stats, engine="ray")]
    assert [s["__key__"] for s in local] == ["cauldron-train-00000-of-00001-0000000",
                                             "cauldron-train-00000-of-00001-0000000-2",
                                             "cauldron-train-00000-of-00001-0000000-3"]
    assert on_ray == local and ray_stats.as_dict() == local_stats.as_dict()


def planted_set(folder: Path) -> None:
    """Shards with exact and near duplicates (some across shards, a chain of near copies), overlaps with
    the evaluation set's images and QA pairs, a trimmed record, text-only records, a key repeated in a
    later shard and records the quality filters drop."""
    dup, near = blocky_image(30), blocky_image(31)
    records = [record("keep-0", seed=40), record("exact-a", image=dup), record("near-a", image=near),
               record("leak-image", image=blocky_image(100, fmt="JPEG", quality=85)),
               record("exact-b", image=dup, qas=[("Other?", "Yes.")]),
               record("trimmed", seed=41, qas=[("What is the title?", "Sales 2020"), ("Min?", "3")]),
               record("leak-qa", seed=42, qas=[("Max?", "45")]),
               record("near-b", image=blocky_image(31, fmt="JPEG", quality=70)),
               record("tiny", size=(8, 8)), record("loop", seed=43, qas=[("Q?", "no no no no no")]),
               record("near-c", image=blocky_image(31, size=(96, 96))), record("exact-c", image=dup),
               record("broken", image=b"\x89PNG\r\n\x1a\ntruncated"), record("keep-1", seed=44)]
    text_only = [record("text-0", seed=0), record("text-1", seed=0)]
    for r in text_only:  # text-only records carry no <image> marker (records.check_image_markers)
        r.image = None
        r.messages = [{**m, "content": m["content"].replace("<image>", "")} for m in r.messages]
    records[3:3] = text_only
    records.append(record("keep-0", seed=45))  # a key an earlier shard holds: unreadable, duplicate_key
    with ShardWriter(folder, generator="test", maxcount=4) as writer:
        for r in records[:-1]:
            writer.write(r)
    with ShardWriter(folder / "more", generator="test") as writer:
        writer.write(records[-1])
    (folder / "more" / "shard-000000.tar").rename(folder / "shard-000999.tar")  # a shard the manifest omits
    shutil.rmtree(folder / "more")
    (folder / "shard-000500.tar").write_bytes(b"not a tar at all")  # unreadable_shard


def test_curate_drops_the_same_records_and_writes_the_same_report(ray_cluster, tmp_path, eval_dir):
    source = tmp_path / "train"
    planted_set(source)
    out = {}
    for engine in ("local", "ray"):
        out[engine] = tmp_path / f"curated-{engine}"
        assert main(["curate", "--input", str(source), "--out", str(out[engine]), "--eval", str(eval_dir),
                     "--near-dup-threshold", "20", "--examples", "2", "--shard-size", "3", "--engine", engine]) == 0
    local_report = json.loads((out["local"] / "curation_report.json").read_text())
    assert json.loads((out["ray"] / "curation_report.json").read_text()) == local_report
    assert (out["ray"] / "curation_report.md").read_text() == (out["local"] / "curation_report.md").read_text()
    assert samples(out["ray"]) == samples(out["local"])
    assert without_created(out["ray"]) == without_created(out["local"])
    for a, b in zip(sorted(out["local"].glob("shard-*.tar")), sorted(out["ray"].glob("shard-*.tar"))):
        assert a.read_bytes() == b.read_bytes()
    # The planted cases are all there, so the equality above means something.
    dropped = {f["name"]: f["dropped"] for f in local_report["filters"]}
    assert dropped["exact_duplicates"] == 2 and dropped["near_duplicates"] == 2
    assert dropped["eval_image_overlap"] == 1 and dropped["eval_qa_overlap"] == 1
    assert local_report["unreadable_by_reason"] == {"duplicate_key": 1, "unreadable_shard": 1}


def test_a_killed_ray_job_leaves_out_as_it_was(ray_cluster, tmp_path):
    out = tmp_path / "charts"
    assert main(["synth", "charts", "--num", "4", "--shard-size", "2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "data_pipelines", "synth", "charts", "--num", "400", "--shard-size", "5",
               "--out", str(out), "--overwrite", "--engine", "ray", "--ray-address", address]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".charts.tmp-*/shard-*.tar")) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.1)
    assert job.poll() is None, "the job ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_engine_ray_without_ray_is_one_error_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    assert main(["synth", "charts", "--num", "2", "--out", str(tmp_path / "x"), "--engine", "ray"]) == 2
    assert 'pip install "molmini[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_near_duplicate_groups_resolve_as_the_local_index_keeps_first(ray_cluster):
    """Chains of near copies (B near A, C near B but not A: C stays when B goes) and pairs that share
    several bands: the group-by's resolution names what HammingIndex.find names, record for record."""
    import random

    from data_pipelines.dedup import HammingIndex
    from data_pipelines.ray_engine import group_by_settings
    from data_pipelines.ray_engine.curate import _near_duplicates

    rng, hashes = random.Random(0), []
    for _ in range(40):
        value = rng.getrandbits(256)
        for _ in range(rng.randint(1, 5)):  # a chain: each link a few bits from the one before
            hashes.append(value)
            for _ in range(rng.randint(3, 12)):
                value ^= 1 << rng.randrange(256)
    rng.shuffle(hashes)
    index, expected = HammingIndex(16), {}
    for order, value in enumerate(hashes):
        match = index.find(value)
        if match:
            expected[order] = (f"k{order}", f"perceptual hash {match[1]} bits from {match[0]}")
        else:
            index.add(value, f"k{order}")
    assert len(expected) > 20 and len(expected) < len(hashes) - 40  # chains left some links standing
    rows = [{"order": n, "key": f"k{n}", "sha256": "", "phash": f"{v:x}"} for n, v in enumerate(hashes)]
    with group_by_settings():
        found = _near_duplicates(ray.data.from_items(rows, override_num_blocks=4), 16)
    assert {order: (key, why) for order, key, why in found} == expected
