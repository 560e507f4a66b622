"""The inference half of MolminiModel, built from torch and transformers alone: what a checkpoint's
self-contained modeling file runs where molmini is not installed (molmini/hub/standalone.py writes that file
from this module's source and the sources it names).

There is one implementation of the computation: the methods that turn pixels and token ids into image features,
embeddings, logits and answers are MolminiModel's own, taken here as they are (`embed = MolminiModel.embed`).
What differs is only how the parts are built: the tower is molmini/model/plain_vit.py's twin of the open_clip
ViT, described by the `plain_vision_tower` entry that save_pretrained writes into config.json; the LM and the
connector come from the same builders MolminiModel uses. No reading head (it is never saved).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from molmini.data.processor import MolminiProcessor
from molmini.data.tokenizer import special_token_ids
from molmini.hub.checkpoint_files import (CHECKPOINT_FILES, PLAIN_TOWER_KEY, load_saved_weights, resolve_checkpoint,
                                          write_remote_code)
from molmini.model.connector import build_connector
from molmini.model.language_model import build_language_model
from molmini.model.plain_vit import PlainVisionTower
from molmini.model.vlm import CONFIG_FILE, WEIGHTS_FILE, MolminiModel


class PlainMolminiModel(nn.Module):
    """A molmini checkpoint for inference without molmini: `generate`, `chat`, `stream` and `forward` behave as
    MolminiModel's (they are its methods); built by `from_pretrained`."""
    family = "molmini"

    def __init__(self, saved: dict[str, Any], processor: MolminiProcessor):
        """`saved`: the checkpoint's config.json (molmini's `model` config, `lm_config` and the plain tower)."""
        super().__init__()
        config = saved["model"]
        if not saved.get(PLAIN_TOWER_KEY):
            name = config.get("vision", {}).get("model_name")
            raise ValueError(f"this checkpoint's vision tower ({name!r}) has no plain-torch implementation (its "
                             f"config.json has no {PLAIN_TOWER_KEY!r}), so it needs molmini and open_clip to load: "
                             "install molmini and load it with MolminiModel.from_pretrained")
        self.saved_config = saved
        self.config = SimpleNamespace(**config)  # read_head is None: forward never reads config.reading
        self.processor = processor
        tokenizer = processor.tokenizer
        self.token_ids = special_token_ids(tokenizer)
        self.vision = PlainVisionTower(**saved[PLAIN_TOWER_KEY])
        self.lm = build_language_model(SimpleNamespace(**config["lm"]), len(tokenizer), self.token_ids,
                                       saved_config=saved["lm_config"])
        self.connector = build_connector(SimpleNamespace(**config["connector"]), self.vision.output_dim,
                                         self.lm.config.hidden_size)
        self.pad_embed = nn.Parameter(torch.zeros(2, self.vision.output_dim))
        self.read_head = None
        self.register_buffer("image_mean", torch.tensor(processor.config.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(processor.config.image_std).view(1, 3, 1, 1), persistent=False)

    # MolminiModel's own computation, unchanged (see the module docstring).
    patch_features = MolminiModel.patch_features
    image_features = MolminiModel.image_features
    embed = MolminiModel.embed
    forward = MolminiModel.forward
    device = MolminiModel.device
    generate_ids = MolminiModel.generate_ids
    _on_device = MolminiModel._on_device
    generate = MolminiModel.generate
    stream = MolminiModel.stream
    stream_sample = MolminiModel.stream_sample
    chat = MolminiModel.chat

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, max_length: int | None = None) -> "PlainMolminiModel":
        """MolminiModel.from_pretrained's loading, for a checkpoint with a plain tower: a folder or hub id,
        safetensors only (every weight must match), `device="auto"`, `dtype="auto"` (the saved one)."""
        folder = resolve_checkpoint(name_or_path, required=CHECKPOINT_FILES)
        try:
            saved = json.loads((folder / CONFIG_FILE).read_text())
        except ValueError as e:
            raise ValueError(f"{folder / CONFIG_FILE} is not JSON ({e}); re-save the checkpoint with molmini") from e
        if not isinstance(saved, dict) or not {"model", "lm_config"} <= saved.keys():
            raise ValueError(f"{folder / CONFIG_FILE} is not a molmini model config; it must hold the 'model' and "
                             "'lm_config' that model.save_pretrained writes")
        model = cls(saved, MolminiProcessor.from_pretrained(folder, max_length=max_length))
        return load_saved_weights(model, folder, CONFIG_FILE, WEIGHTS_FILE, saved, device, dtype)

    def save_pretrained(self, folder: str | Path, **_: Any) -> Path:
        """The checkpoint again (config, weights, tokenizer, processor and the remote code it was loaded with):
        what MolminiModel.save_pretrained wrote, with this model's weights and dtype."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = {**self.saved_config, "dtype": str(next(self.parameters()).dtype).removeprefix("torch.")}
        (folder / CONFIG_FILE).write_text(json.dumps(saved, indent=2, default=str))
        save_model(self, str(folder / WEIGHTS_FILE))
        self.processor.save_pretrained(folder)
        write_remote_code(folder)
        return folder
