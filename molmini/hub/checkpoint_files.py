"""What a molmini checkpoint folder holds, and where one is found: the files from_pretrained reads, the
config.json keys transformers' Auto classes read (model_type, architectures, auto_map) with the remote-code files
auto_map names, and resolving a folder or hub id to a local folder.

The remote-code files are self-contained where the tower allows it: for an open_clip ViT (molmini's from-scratch
towers and the CLIP ViT presets) save_pretrained writes configuration, processing and modeling files generated
from molmini's own source (molmini/hub/standalone.py) that need only torch, transformers, safetensors, pillow and
numpy, and config.json describes the tower for them (`plain_vision_tower`). Other towers (timm-backed SigLIP and
ConvNeXt) have no plain-torch twin: their checkpoints carry the thin files of molmini/auto/remote_code/, which
import the installed molmini, and saving one logs that it needs molmini.

Written by `MolminiModel.save_pretrained`; read back by molmini/auto/, which defines the classes named here.
Kept apart from molmini/auto/ so that saving a model does not import the classes that wrap it (no cycle).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from molmini.data.processor import PROCESSOR_CONFIG

# What a checkpoint folder holds for from_pretrained (the model card, README.md, is added for publishing).
CHECKPOINT_FILES = ["config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json",
                    "tokenizer.json"]
# The files transformers' Auto classes import with trust_remote_code=True, written by save_pretrained: generated
# self-contained ones, or the thin ones of molmini/auto/remote_code/ (see the module docstring). A published
# checkpoint carries them.
MODEL_TYPE = "molmini"  # config.json's model_type (none in checkpoints saved before they loaded in transformers)
REMOTE_CODE_FILES = ["configuration_molmini.py", "modeling_molmini.py", "processing_molmini.py"]
PUBLISHED_FILES = CHECKPOINT_FILES + REMOTE_CODE_FILES + ["README.md"]
REMOTE_CODE_DIR = Path(__file__).parents[1] / "auto" / "remote_code"
# config.json's description of the tower for the self-contained files (molmini/model/plain_vit.py's
# PlainVisionTower arguments); absent when the tower has no plain-torch twin.
PLAIN_TOWER_KEY = "plain_vision_tower"
MODEL_AUTO_MAP = {"AutoConfig": "configuration_molmini.MolminiConfig",
                  "AutoModelForImageTextToText": "modeling_molmini.MolminiForConditionalGeneration",
                  # tools that load an unknown model_type with AutoModel (lmms-eval's "huggingface" model) get the
                  # whole model too, as with other remote-code VLMs
                  "AutoModel": "modeling_molmini.MolminiForConditionalGeneration",
                  "AutoModelForVision2Seq": "modeling_molmini.MolminiForConditionalGeneration",  # transformers 4.x
                  "AutoProcessor": "processing_molmini.MolminiTransformersProcessor"}
ARCHITECTURE = "MolminiForConditionalGeneration"   # molmini/auto/classes.py
PROCESSOR_CLASS = "MolminiTransformersProcessor"   # molmini/auto/processor.py


def load_saved_weights(model, folder: Path, config_file: str, weights_file: str, saved: dict[str, Any],
                       device: str | Any = "auto", dtype: Any = "auto"):
    """`model` with the weights of `folder`'s `weights_file`, every one of them (a missing or unexpected name,
    a shape mismatch, a truncated or foreign file is a ValueError naming both files), on `device` ("auto": a
    GPU when there is one) in `dtype` ("auto": the one `saved`, config.json, records), in eval mode: the end of
    every molmini model's from_pretrained (MolminiModel's, and the standalone PlainMolminiModel's)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    weights, config = folder / weights_file, folder / config_file
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except (RuntimeError, OSError, SafetensorError) as e:  # shape mismatches, a truncated or foreign file
        raise ValueError(f"{weights} does not match {config}: {e}") from e
    if missing or unexpected:
        raise ValueError(f"{weights} does not match {config}: missing {sorted(missing)[:5]}, unexpected "
                         f"{sorted(unexpected)[:5]}")
    model.source_folder = folder
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":  # the saved weights' dtype
        dtype = saved.get("dtype")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return model.to(device=device, dtype=dtype).eval()


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a hub id (owner/name), not a path."""
    return not name.startswith((".", "/")) and name.count("/") == 1


def is_transformers_folder(folder: str | Path) -> bool:
    """A transformers checkpoint of another family (one molmini fine-tuned with model.hf_vlm): its config.json
    names a model_type other than molmini's. A config.json that is not JSON raises ValueError."""
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") not in (None, MODEL_TYPE)


def resolve_checkpoint(name_or_path: str | Path, required: list[str], revision: str | None = None,
                       cache_dir: str | Path | None = None, token: str | bool | None = None,
                       subfolder: str = "") -> Path:
    """A local checkpoint folder, downloading `name_or_path` from the hub when it is not a folder here
    (`revision`, `cache_dir` and `token` go to the download; HF_HUB_CACHE is the default cache); `subfolder`
    names the checkpoint's folder inside that one, as transformers' loaders take it."""
    path = Path(name_or_path)
    if not path.is_dir():
        if path.exists() or not is_hub_id(str(name_or_path)):
            raise FileNotFoundError(f"checkpoint {str(name_or_path)!r} is neither a folder nor a hub id "
                                    "(owner/name); pass the checkpoint folder a training run wrote")
        from huggingface_hub import snapshot_download
        try:
            path = Path(snapshot_download(str(name_or_path), revision=revision, token=token,
                                          endpoint=os.environ.get("HF_ENDPOINT") or None,
                                          cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE") or None))
        except (OSError, ValueError) as e:  # not found, offline, no such repository: the hub's errors
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FileNotFoundError(f"checkpoint {str(name_or_path)!r}: there is no such folder here, and as a hub "
                                    f"id it could not be fetched ({reason}); pass the checkpoint folder a training "
                                    "run wrote (runs/NAME/checkpoint) or an existing hub id") from e
    path = path / subfolder if subfolder else path
    for name in required:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing: {path} is not a complete molmini checkpoint")
    return path


def transformers_config_fields(model) -> dict[str, Any]:
    """The keys of a molmini config.json that transformers' Auto classes read."""
    import transformers
    dtype = next(model.parameters()).dtype
    return {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE],
            "auto_map": MODEL_AUTO_MAP, "dtype": str(dtype).removeprefix("torch."),
            "transformers_version": transformers.__version__}


def write_remote_code(folder: str | Path) -> None:
    """Write the remote-code files into a checkpoint folder and name the processor class (and its file) in its
    processor_config.json, which is where AutoProcessor looks first. Self-contained files unless the folder's
    config.json describes a tower without a plain-torch twin (no `plain_vision_tower`); a processor saved alone
    runs standalone whatever the tower."""
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file() and PLAIN_TOWER_KEY not in json.loads(config.read_text()):
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(REMOTE_CODE_DIR / name, folder / name)
    else:
        from molmini.hub.standalone import standalone_files
        for name, text in standalone_files().items():
            (folder / name).write_text(text)
    name_processor_class(folder)


def copy_remote_code_beside(folder: str | Path) -> None:
    """write_remote_code of the self-contained files themselves (they run it in place of the function above,
    molmini/hub/standalone.py): copy the remote-code files that sit beside the running module, which are this
    checkpoint's own, into `folder`."""
    here = Path(__file__).parent
    for name in REMOTE_CODE_FILES:
        if (here / name).is_file() and (here / name).resolve() != (Path(folder) / name).resolve():
            shutil.copyfile(here / name, Path(folder) / name)
    name_processor_class(folder)


def name_processor_class(folder: str | Path) -> None:
    """processor_config.json names the processor class and its file, which is where AutoProcessor looks first."""
    path = Path(folder) / PROCESSOR_CONFIG
    saved = json.loads(path.read_text())
    saved.update(processor_class=PROCESSOR_CLASS,
                 auto_map={"AutoProcessor": MODEL_AUTO_MAP["AutoProcessor"]})
    path.write_text(json.dumps(saved, indent=2))
