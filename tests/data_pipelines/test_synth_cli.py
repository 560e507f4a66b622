"""The synth command line for every generator: manifest with generator name, version and params."""
import pytest

from data_pipelines.__main__ import main
from data_pipelines.shards import read_manifest, verify_manifest
from molmini.data.reader import find_shards, iter_records


@pytest.mark.parametrize("generator,extra,want", [
    ("charts", ["--variety", "full"], ("synth-charts", {"image_px": 96, "variety": "full"})),
    ("charts", ["--renderer", "direct"], ("synth-charts", {"image_px": 96, "renderer": "direct"})),
    ("tables", ["--noise"], ("synth-tables", {"image_px": 96, "noise": True})),
    ("documents", ["--no-noise"], ("synth-documents", {"image_px": 96, "noise": False})),
])
def test_synth_command_writes_a_verified_manifest(tmp_path, generator, extra, want):
    out = tmp_path / generator
    assert main(["synth", generator, "--out", str(out), "--num", "3", "--seed", "4", "--image-px", "96",
                 "--shard-size", "2", *extra]) == 0
    manifest = verify_manifest(out)
    assert (manifest["generator"], manifest["params"]) == want
    assert manifest["generator_version"] == "2" and manifest["num_samples"] == 3 and len(manifest["shards"]) == 2
    records = list(iter_records(find_shards(out)))
    assert [r.key for r in records] == [f"{generator}-train-{i:08d}" for i in range(3)]
    assert all(r.meta["transcript"] and len(r.meta["qa_types"]) == len(r.qa_pairs()) for r in records)
    assert all(r.meta["text_boxes"] for r in records)  # what each drew where


def test_full_variety_defaults_to_larger_images(tmp_path):
    assert main(["synth", "charts", "--out", str(tmp_path), "--num", "1", "--variety", "full"]) == 0
    assert read_manifest(tmp_path)["params"]["image_px"] == 384
