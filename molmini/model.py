"""The molmini model: vision tower -> connector -> language model, with loss, generation and checkpoints.

Image features replace the embeddings of the `<im_patch>` placeholders the processor put in the
sequence; everything else is the LM's own forward and `generate`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_model, save_model
from torch import nn

from . import tokenizer as T
from .config import ModelConfig, from_dict
from .connector import build_connector
from .hub import resolve_checkpoint, write_model_card
from .language_model import build_language_model
from .processor import IGNORE_INDEX, MolminiProcessor, ProcessorConfig
from .vision import VisionTower

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class MolminiModel(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer, max_length: int = 256, load_pretrained: bool = True,
                 saved_lm_config: dict[str, Any] | None = None):
        super().__init__()
        self.config = config
        self.token_ids = T.special_token_ids(tokenizer)
        self.vision = VisionTower(config.vision, load_pretrained=load_pretrained)
        self.lm = build_language_model(config.lm, len(tokenizer), self.token_ids,
                                       saved_config=saved_lm_config)
        self.connector = build_connector(config.connector, self.vision.output_dim, self.lm.config.hidden_size)
        self.register_buffer("image_mean", torch.tensor(self.vision.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(self.vision.image_std).view(1, 3, 1, 1), persistent=False)
        self.processor = MolminiProcessor(tokenizer, ProcessorConfig(
            image_size=self.vision.image_size, pooled_grid=self.connector.pooled_grid(self.vision.grid),
            image_mean=self.vision.image_mean, image_std=self.vision.image_std, max_length=max_length))

    # ---- forward ------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> [B, image tokens, LM width]."""
        x = (pixel_values.float() / 255.0 - self.image_mean) / self.image_std
        return self.connector(self.vision(x), self.vision.grid)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.token_ids[T.IMAGE_PATCH]
        feats = self.image_features(pixel_values).to(embeds.dtype)
        if placeholders.sum() != feats.shape[0] * feats.shape[1]:
            raise ValueError(f"the batch has {int(placeholders.sum())} image placeholder tokens but the images "
                             f"give {feats.shape[0]} x {feats.shape[1]} features; build inputs with this "
                             "model's processor")
        return embeds.masked_scatter(placeholders.unsqueeze(-1), feats)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                labels: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        embeds = self.embed(input_ids, pixel_values)
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention_mask).logits
        out = {"logits": logits}
        if labels is not None:
            # Sum over loss tokens; the trainer divides by the number of loss tokens in the global batch.
            shift_labels = labels[:, 1:]
            loss_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shift_labels.flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
            n = (shift_labels != IGNORE_INDEX).sum()
            out.update(loss_sum=loss_sum, num_loss_tokens=n, loss=loss_sum / n.clamp(min=1))
        return out

    # ---- generation ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                     max_new_tokens: int = 16, **generate_kwargs: Any) -> torch.Tensor:
        """New token ids for a left-padded batch, through the LM's own `generate` with a KV cache."""
        embeds = self.embed(input_ids, pixel_values)
        generate_kwargs.setdefault("do_sample", False)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                eos_token_id=self.token_ids[T.END], pad_token_id=self.token_ids[T.PAD],
                                **generate_kwargs)

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str], max_new_tokens: int = 16,
                 batch_size: int = 32, **generate_kwargs: Any) -> list[str]:
        """Answer each prompt about its image; greedy unless sampling arguments are given."""
        was_training = self.training
        self.eval()
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = self.processor.prompt_batch(images[start:start + batch_size], prompts[start:start + batch_size])
            new = self.generate_ids(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                                    batch["pixel_values"].to(self.device), max_new_tokens, **generate_kwargs)
            answers += [a.strip() for a in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
        self.train(was_training)
        return answers

    # ---- checkpoints --------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, eval_results: dict[str, Any] | None = None,
                        training: dict[str, Any] | None = None) -> Path:
        """A folder that loads with `from_pretrained` and publishes as is: config, safetensors weights,
        tokenizer, processor config and a model card."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"model": dataclasses.asdict(self.config), "lm_config": self.lm.config.to_dict(),
                  "max_length": self.processor.config.max_length}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        save_model(self, str(folder / WEIGHTS_FILE))
        self.processor.save_pretrained(folder)
        write_model_card(folder, self, eval_results=eval_results, training=training)
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> "MolminiModel":
        folder = resolve_checkpoint(name_or_path, required=[CONFIG_FILE, WEIGHTS_FILE])
        saved = json.loads((folder / CONFIG_FILE).read_text())
        config = from_dict(ModelConfig, saved["model"])
        processor = MolminiProcessor.from_pretrained(folder)
        model = cls(config, processor.tokenizer, max_length=saved.get("max_length", 256), load_pretrained=False,
                    saved_lm_config=saved["lm_config"])
        try:
            missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE}: {e}") from e
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE}: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        model.processor = processor
        return model.to(device).eval()
