"""The shard writer: round trip through webdataset and tarfile, manifest contents, verification, errors."""
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset
from PIL import Image

from data_pipelines.shards import MANIFEST_NAME, ManifestError, ShardWriter, list_shards, read_manifest, verify_manifest
from molmini.data.records import Record


def png_bytes(colour=(200, 30, 30), size=8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def make_record(i: int, task: str = "chart_qa", source: str = "test") -> Record:
    return Record(key=f"rec-{i:04d}", image=png_bytes((i * 40 % 256, 10, 20)),
                  messages=[{"role": "user", "content": f"<image>What is {i}?"},
                            {"role": "assistant", "content": str(i)},
                            {"role": "user", "content": "Ünïcode too?"}, {"role": "assistant", "content": "Yes"}],
                  source=source, task=task, meta={"index": i, "nested": {"values": [i, i + 1]}})


def write_records(folder, records, **kw):
    params = {"generator": "test-gen", "generator_version": "7", "seed": 3, "split": "val", "params": {"a": 1}}
    params.update(kw)
    with ShardWriter(folder, **params) as writer:
        for record in records:
            writer.write(record)
    return writer.manifest


def test_round_trip_through_webdataset_and_tarfile(tmp_path):
    records = [make_record(i) for i in range(5)]
    write_records(tmp_path, records, maxcount=2)
    shards = list_shards(tmp_path)
    assert [Path(s).name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]

    dataset = webdataset.WebDataset(shards, shardshuffle=False)
    read_back = [Record.from_sample(sample) for sample in dataset]
    assert len(read_back) == len(records)
    for got, want in zip(read_back, records):
        assert (got.key, got.image, got.messages, got.source, got.task, got.meta, got.image_ext) == \
               (want.key, want.image, want.messages, want.source, want.task, want.meta, want.image_ext)

    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        assert names == ["rec-0000.json", "rec-0000.png", "rec-0001.json", "rec-0001.png"]
        body = json.loads(tar.extractfile("rec-0001.json").read())
        assert body["messages"] == records[1].messages and body["meta"] == records[1].meta
        assert tar.extractfile("rec-0001.png").read() == records[1].image


def test_manifest_counts_and_sha256_match_shards(tmp_path):
    records = [make_record(i, task="caption" if i % 3 == 0 else "chart_qa", source=f"src{i % 2}")
               for i in range(7)]
    returned = write_records(tmp_path, records, maxcount=3)
    manifest = read_manifest(tmp_path)
    assert manifest == returned
    assert {k: manifest[k] for k in ("generator", "generator_version", "seed", "split", "params")} == \
           {"generator": "test-gen", "generator_version": "7", "seed": 3, "split": "val", "params": {"a": 1}}
    assert manifest["num_samples"] == 7
    assert manifest["counts_by_task"] == {"caption": 3, "chart_qa": 4}
    assert manifest["counts_by_source"] == {"src0": 4, "src1": 3}
    assert [s["num_samples"] for s in manifest["shards"]] == [3, 3, 1]
    for shard in manifest["shards"]:
        assert shard["sha256"] == hashlib.sha256((tmp_path / shard["name"]).read_bytes()).hexdigest()
    assert "created" in manifest
    assert verify_manifest(tmp_path) == manifest


def test_verify_manifest_names_a_modified_shard(tmp_path):
    write_records(tmp_path, [make_record(i) for i in range(4)], maxcount=2)
    shard = tmp_path / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's data
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="shard-000001.tar") as info:
        verify_manifest(tmp_path)
    assert "shard-000000.tar" not in str(info.value)


def test_verify_manifest_names_missing_and_unlisted_shards(tmp_path):
    write_records(tmp_path, [make_record(i) for i in range(4)], maxcount=2)
    (tmp_path / "shard-000000.tar").rename(tmp_path / "shard-000009.tar")
    with pytest.raises(ManifestError, match="shard-000000.tar.*missing(.|\n)*shard-000009.tar"):
        verify_manifest(tmp_path)


def test_maxsize_starts_a_new_shard(tmp_path):
    # Each test record is two tar members of one 512-byte header and one 512-byte data block: 2048 bytes.
    manifest = write_records(tmp_path, [make_record(i) for i in range(6)], maxcount=100, maxsize=5000)
    assert [s["num_samples"] for s in manifest["shards"]] == [2, 2, 2]


def test_same_records_give_identical_shards(tmp_path):
    a = write_records(tmp_path / "a", [make_record(i) for i in range(3)])
    b = write_records(tmp_path / "b", [make_record(i) for i in range(3)])
    assert a["shards"] == b["shards"]


def test_list_shards_on_empty_or_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data_pipelines synth charts") as info:
        list_shards(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_shards(tmp_path / "nowhere")


def test_read_manifest_without_manifest_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_manifest(tmp_path)
    assert str(tmp_path) in str(info.value) and MANIFEST_NAME in str(info.value)


def test_a_failed_run_leaves_no_manifest(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, generator="g") as writer:
            writer.write(make_record(0))
            raise RuntimeError("generator crashed")
    assert list_shards(tmp_path) and not (tmp_path / MANIFEST_NAME).exists()


def test_a_new_writer_replaces_old_shards_and_manifest(tmp_path):
    write_records(tmp_path, [make_record(i) for i in range(5)], maxcount=1)
    (tmp_path / "notes.txt").write_text("kept")
    manifest = write_records(tmp_path, [make_record(i) for i in range(2)], maxcount=1)
    assert [Path(s).name for s in list_shards(tmp_path)] == [s["name"] for s in manifest["shards"]]
    assert len(manifest["shards"]) == 2 and (tmp_path / "notes.txt").read_text() == "kept"
    verify_manifest(tmp_path)


def test_duplicate_keys_and_non_records_are_refused(tmp_path):
    with ShardWriter(tmp_path, generator="g") as writer:
        writer.write(make_record(1))
        with pytest.raises(ValueError, match="duplicate"):
            writer.write(make_record(1))
        with pytest.raises(TypeError):
            writer.write(make_record(2).to_sample())
    assert read_manifest(tmp_path)["num_samples"] == 1


def test_late_params_join_the_manifest_at_close(tmp_path):
    counted = {"n": 0}
    with ShardWriter(tmp_path, generator="g", params={"a": 1}, late_params=lambda: {"seen": counted["n"]}) as w:
        for i in range(3):
            w.write(make_record(i))
            counted["n"] += 1
    assert read_manifest(tmp_path)["params"] == {"a": 1, "seen": 3}


def test_shards_are_byte_identical_to_webdataset_tarwriter_output(tmp_path):
    from data_pipelines.shards import TAR_MTIME
    records = [make_record(i) for i in range(5)]
    write_records(tmp_path / "ours", records, maxcount=100)
    theirs = io.BytesIO()
    writer = webdataset.TarWriter(theirs, encoder=False, mtime=TAR_MTIME)
    for record in records:
        writer.write(record.to_sample())
    writer.close()
    (shard,) = list_shards(tmp_path / "ours")
    assert Path(shard).read_bytes() == theirs.getvalue()


def test_member_names_split_into_key_and_extension_as_webdataset_splits_them():
    from molmini.data.reader import base_plus_ext
    names = ["a.png", "a.b.json", "dir/x.y.z", "dir.v2/rec-1.png", "noext", ".hidden", "k.", "sub/dir/", "x..json"]
    for name in names:
        assert base_plus_ext(name) == webdataset.tariterators.base_plus_ext(name), name
