"""The processor: images to uint8 tensors, conversations to token ids with image placeholders and labels.

Sequence layout of one conversation (image in the first user turn)::

    <|user|> <im_start> (<im_patch> x g  <im_col>) x g <im_end> question <|end|> <|assistant|> answer <|end|> ...

Labels are -100 everywhere except the answer tokens and the `<|end|>` closing each answer, so the loss
is taken on assistant text only and the model learns to stop.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from . import tokenizer as T
from .data import IMAGE_MARKER, Record, RecordError

IGNORE_INDEX = -100
PROCESSOR_CONFIG = "processor_config.json"


@dataclass
class ProcessorConfig:
    image_size: int
    pooled_grid: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    max_length: int = 256


class MolminiProcessor:
    def __init__(self, tokenizer, config: ProcessorConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.ids = T.special_token_ids(tokenizer)
        g = config.pooled_grid
        self.image_token_ids = ([self.ids[T.IMAGE_START]]
                                + ([self.ids[T.IMAGE_PATCH]] * g + [self.ids[T.IMAGE_ROW_END]]) * g
                                + [self.ids[T.IMAGE_END]])

    # ---- images -------------------------------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """RGB uint8 [3, S, S]; normalisation happens in the model, on the accelerator."""
        s = self.config.image_size
        image = image.convert("RGB")
        if image.size != (s, s):
            image = image.resize((s, s), Image.BICUBIC)
        return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(s, s, 3).permute(2, 0, 1)

    # ---- text ---------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _user_turn(self, content: str, with_image: bool) -> list[int]:
        ids = [self.ids[T.USER]]
        if with_image:
            before, _, after = content.partition(IMAGE_MARKER) if IMAGE_MARKER in content else ("", "", content)
            ids += self._text(before.strip()) + self.image_token_ids + self._text(after.strip())
        else:
            ids += self._text(content.replace(IMAGE_MARKER, "").strip())
        return ids + [self.ids[T.END], self.ids[T.ASSISTANT]]

    def encode_conversation(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and labels of a whole conversation; turns that would pass max_length are dropped."""
        input_ids: list[int] = []
        labels: list[int] = []
        for i in range(0, len(messages) - 1, 2):
            user = self._user_turn(messages[i]["content"], with_image=(i == 0))
            answer = self._text(messages[i + 1]["content"]) + [self.ids[T.END]]
            if len(input_ids) + len(user) + len(answer) > self.config.max_length:
                if i == 0:
                    raise RecordError(f"the first exchange alone is {len(user) + len(answer)} tokens, over "
                                     f"max_length={self.config.max_length}; raise data.max_length")
                break
            input_ids += user + answer
            labels += [IGNORE_INDEX] * len(user) + answer
        return input_ids, labels

    def encode_prompt(self, question: str) -> list[int]:
        """Ids of a one-question prompt, ending where the assistant's answer starts."""
        return self._user_turn(question, with_image=True)

    # ---- records and batches ------------------------------------------------------------------------
    def process_record(self, record: Record, messages: Sequence[dict[str, str]] | None = None) -> dict[str, Any]:
        input_ids, labels = self.encode_conversation(messages if messages is not None else record.messages)
        return {"input_ids": input_ids, "labels": labels, "pixel_values": self.preprocess_image(record.load_image()),
                "key": record.key}

    def collate(self, samples: Sequence[dict[str, Any]], padding_side: str = "right") -> dict[str, Any]:
        """Pad to the longest sequence: right for training, left for generation."""
        pad = self.ids[T.PAD]
        longest = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            span = slice(0, n) if padding_side == "right" else slice(longest - n, longest)
            ids[row, span] = torch.tensor(s["input_ids"])
            mask[row, span] = 1
            if "labels" in s:
                labels[row, span] = torch.tensor(s["labels"])
        batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.stack([s["pixel_values"] for s in samples])}
        if any("labels" in s for s in samples):
            batch["labels"] = labels
        batch["keys"] = [s.get("key", "") for s in samples]
        return batch

    def prompt_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one image per prompt")
        samples = [{"input_ids": self.encode_prompt(p), "pixel_values": self.preprocess_image(im)}
                   for im, p in zip(images, prompts)]
        return self.collate(samples, padding_side="left")

    # ---- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        (folder / PROCESSOR_CONFIG).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "MolminiProcessor":
        folder = Path(folder)
        path = folder / PROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a molmini checkpoint folder "
                                    "(save one with model.save_pretrained)")
        cfg = json.loads(path.read_text())
        return cls(T.load_tokenizer(str(folder)), ProcessorConfig(**cfg))
