"""What a molmini checkpoint folder holds for transformers' Auto classes: the config.json keys they read
(model_type, architectures, auto_map) and the thin remote-code files auto_map names. Written by
`MolminiModel.save_pretrained`; read back by molmini/hf_auto.py, which defines the classes named here.
Kept apart from hf_auto.py so that saving a model does not import the classes that wrap it (no cycle).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import transformers

from .hub import MODEL_TYPE, REMOTE_CODE_FILES
from .processor import PROCESSOR_CONFIG

REMOTE_CODE_DIR = Path(__file__).parent / "remote_code"
MODEL_AUTO_MAP = {"AutoConfig": "configuration_molmini.MolminiConfig",
                  "AutoModelForImageTextToText": "modeling_molmini.MolminiForConditionalGeneration",
                  # tools that load an unknown model_type with AutoModel (lmms-eval's "huggingface" model) get the
                  # whole model too, as with other remote-code VLMs
                  "AutoModel": "modeling_molmini.MolminiForConditionalGeneration",
                  "AutoModelForVision2Seq": "modeling_molmini.MolminiForConditionalGeneration",  # transformers 4.x
                  "AutoProcessor": "processing_molmini.MolminiTransformersProcessor"}
ARCHITECTURE = "MolminiForConditionalGeneration"   # molmini/hf_auto.py
PROCESSOR_CLASS = "MolminiTransformersProcessor"   # molmini/hf_auto_processor.py


def transformers_config_fields(model) -> dict[str, Any]:
    """The keys of a molmini config.json that transformers' Auto classes read."""
    dtype = next(model.parameters()).dtype
    return {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE],
            "auto_map": MODEL_AUTO_MAP, "dtype": str(dtype).removeprefix("torch."),
            "transformers_version": transformers.__version__}


def write_remote_code(folder: str | Path) -> None:
    """Copy the thin remote-code files into a checkpoint folder and name the processor class (and its file) in
    its processor_config.json, which is where AutoProcessor looks first."""
    folder = Path(folder)
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / name, folder / name)
    path = folder / PROCESSOR_CONFIG
    saved = json.loads(path.read_text())
    saved.update(processor_class=PROCESSOR_CLASS,
                 auto_map={"AutoProcessor": MODEL_AUTO_MAP["AutoProcessor"]})
    path.write_text(json.dumps(saved, indent=2))
