"""Publishing: push_to_hub and from_pretrained(hub id) through the real huggingface_hub client, against a
hub server on localhost (tests/helpers/hub_server.py: the HTTP endpoints the client calls)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from molmini.hub.publish import push_folder, write_model_card
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records
from tests.helpers.hub_server import LocalHub

EVAL = {"benchmark": "synthetic-charts", "overall": {"n": 10, "relaxed_accuracy": 0.5, "exact_match": 0.4,
                                                     "majority_baseline": 0.2},
        "per_type": {"count": {"n": 10, "relaxed_accuracy": 0.5, "majority_baseline": 0.2}}}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with LocalHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
        yield server


def test_push_then_load_by_hub_id_gives_identical_logits(tiny_model, hub, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "ckpt", eval_results=EVAL, training={"steps": 3})
    loaded_from_folder = MolminiModel.from_pretrained(folder)
    url = loaded_from_folder.push_to_hub("alice/chart-model")
    assert url.startswith(hub.url) and "alice/chart-model" in url
    files = hub.repos["alice/chart-model"]["files"]
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json", "README.md"} <= set(files)
    # the model card of the folder it was loaded from travels with it, evaluation table included
    assert hub.model_cards[-1]["library_name"] == "molmini"
    assert hub.model_cards[-1]["model-index"][0]["results"][0]["metrics"][0]["value"] == 50.0
    assert b"synthetic-charts" in files["README.md"]

    from_hub = MolminiModel.from_pretrained("alice/chart-model")
    batch = from_hub.processor.collate([from_hub.processor.process_record(r) for r in make_records(2)])
    with torch.no_grad():
        assert torch.equal(tiny_model.eval()(**batch)["logits"], from_hub(**batch)["logits"])


def test_push_folder_uploads_a_run_checkpoint_as_is(tiny_model, hub, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "ckpt")
    write_model_card(folder, tiny_model, eval_results=EVAL)
    push_folder(folder, "bob/run-1", private=True)
    assert hub.repos["bob/run-1"]["private"] is True
    assert hub.repos["bob/run-1"]["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    push_folder(folder, "bob/run-1")  # a second push to an existing repo is a new commit, not an error
    assert hub.requests.count("POST /api/models/bob/run-1/commit/main") == 2


def test_push_of_an_incomplete_folder_names_what_is_missing(tiny_model, hub, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "ckpt")
    (folder / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="README.md"):
        push_folder(folder, "alice/x")
    assert "alice/x" not in hub.repos


def test_loading_a_repo_that_is_not_on_the_hub_fails_clearly(hub):
    with pytest.raises(Exception, match="(?i)not found|404|repository"):
        MolminiModel.from_pretrained("alice/does-not-exist")


def test_a_fine_tuned_transformers_vlm_publishes_and_loads_back_with_plain_transformers(hub, tmp_path):
    """model.hf_vlm's checkpoint is the family's own folder: it pushes without molmini's files and loads by
    hub id through AutoModelForImageTextToText / AutoProcessor."""
    from molmini.model.transformers_vlm import HFVisionLanguageModel
    from tests.helpers.hf_tiny_vlms import save_tiny_vlm
    model = HFVisionLanguageModel.from_pretrained(str(save_tiny_vlm("idefics3", tmp_path / "base")))
    folder = model.save_pretrained(tmp_path / "ft", training={"steps": 3, "wall_time_s": 1.0})
    push_folder(folder, "carol/ft")
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.repos["carol/ft"]["files"])
    assert hub.model_cards[-1]["library_name"] == "transformers"
    # a fresh process, as a user's: transformers reads HF_ENDPOINT when it is imported
    code = ("import sys, torch; from transformers import AutoModelForImageTextToText, AutoProcessor; "
            "AutoProcessor.from_pretrained('carol/ft'); m = AutoModelForImageTextToText.from_pretrained('carol/ft'); "
            "torch.save(m.state_dict(), sys.argv[1]); assert 'molmini' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sd.pt")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "fresh-cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = torch.load(tmp_path / "sd.pt")
    assert loaded.keys() == model.hf.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.hf.state_dict().items())
    (folder / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="README.md"):
        push_folder(folder, "carol/ft2")
