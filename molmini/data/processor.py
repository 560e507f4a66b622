"""The processor: images to uint8 crops and pooling windows, conversations to token ids with image
placeholders and labels.

One image becomes, in the first user turn (or where its `<image>` marker stands)::

    <im_start> (<im_patch> x cols  <im_col>) x rows <im_end>        the global view
    <im_start> (<im_patch> x cols' <im_col>) x rows' <im_end>       the kept patches of the crop grid (max_crops > 0)

where rows x cols is the view's pooled patch grid; every `<im_patch>` is replaced by one connector output
in the model. Turns are laid out with the LM's chat template (molmini/data/chat_format.py). Labels are -100
everywhere except the answer tokens and the template's end of the assistant turn, so the loss is taken on
assistant text only and the model learns to stop.

Several images go one after the other, each at its own marker (or all at the start, without markers);
a record or prompt with no image is plain text, and its sample holds zero crops.

Multi-annotation: all question/answer pairs of a record go into one sequence, as turns of one conversation
(`turns`) or, with Molmo's masking (`masked`), each pair attending only to the image prefix and to itself,
its positions starting right after the image as they would in a one-question prompt. A text-only record
is always laid out as turns (there is no image prefix to share).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from molmini.data.chat_format import ChatFormat
from molmini.data.crops import pool_windows, pooled_shape, tile_image
from molmini.data.images import SINGLE_IMAGE, ImageInput, load_image
from molmini.data.reading import read_targets
from molmini.data.records import IMAGE_MARKER, Record, RecordError
from molmini.data.tokenizer import (IMAGE_END, IMAGE_PATCH, IMAGE_ROW_END, IMAGE_START, PAD, load_tokenizer,
                                    special_token_ids)

IGNORE_INDEX = -100  # the label of every token that carries no loss (the value torch's cross-entropy skips)
PROCESSOR_CONFIG = "processor_config.json"
MULTI_ANNOTATION = ("turns", "masked")


@dataclass
class ProcessorConfig:
    image_size: int
    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    pool: int = 2  # the connector's window side: 2 for 2x2 pooling, 1 for one token per patch
    max_crops: int = 0
    overlap_margin: int | None = None
    max_length: int = 256
    multi_annotation: str = "turns"
    # Per-patch reading targets from a record's text boxes (molmini/data/reading.py), for the reading loss
    # (model.reading.weight > 0); off, none are computed.
    read_targets: bool = False

    @classmethod
    def for_model(cls, config, vision, connector, max_length: int) -> "ProcessorConfig":
        """The one derivation of a processor config: crop size, patch size and normalisation from the vision
        tower, the pooling window from the connector, cropping and annotation layout from the model config
        (`molmini.config.ModelConfig`), and the sequence budget (`data.max_length`)."""
        return cls(image_size=vision.image_size, patch_size=vision.patch_size, image_mean=vision.image_mean,
                   image_std=vision.image_std, pool=connector.pool, max_crops=config.image.max_crops,
                   overlap_margin=config.image.overlap_margin, max_length=max_length,
                   multi_annotation=config.multi_annotation, read_targets=config.reading.weight > 0)

    def __post_init__(self):
        if self.multi_annotation not in MULTI_ANNOTATION:
            raise ValueError(f"multi_annotation {self.multi_annotation!r} is unknown; choose one of {MULTI_ANNOTATION}")
        if self.overlap_margin is None:
            self.overlap_margin = round(self.image_size // self.patch_size / 6)


class MolminiProcessor:
    def __init__(self, tokenizer, config: ProcessorConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.ids = special_token_ids(tokenizer)
        self.chat = ChatFormat.from_tokenizer(tokenizer)
        self.stop_token_id = self.chat.stop_token_id(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.ids[PAD]
        self._piece_ids = {}
        # The template's pieces are tokenized now, once: a fast tokenizer keeps "parse special tokens or not" as
        # state it switches per call, so tokenizing them later, beside a user's text in another serving
        # thread, could switch it under that text.
        for piece in (self.chat.first_user_prefix, self.chat.user_prefix, self.chat.assistant_prefix,
                      self.chat.assistant_suffix):
            self._piece(piece)
        self.fill = tuple(round(255 * m) for m in config.image_mean)  # padding normalises to ~0

    # ---- images -------------------------------------------------------------------------------------
    def process_image(self, image: Image.Image | torch.Tensor, text_boxes: Sequence[dict[str, Any]] | None = None
                      ) -> dict[str, Any]:
        """Crops (uint8), padding per patch, pooling windows (indices into this image's patch features)
        and the layout token ids of one image; with `config.read_targets`, the reading targets of each
        patch from the image's `text_boxes` (none given: every patch is left out of the reading loss)."""
        c = self.config
        tiled = tile_image(image, c.image_size, c.patch_size, c.max_crops, c.overlap_margin, self.fill)
        tokens: list[int] = []
        for view in tiled.views:
            rows, cols = pooled_shape(view, c.pool)
            tokens += ([self.ids[IMAGE_START]] + ([self.ids[IMAGE_PATCH]] * cols + [self.ids[IMAGE_ROW_END]]) * rows
                       + [self.ids[IMAGE_END]])
        windows = torch.cat([pool_windows(v, c.pool) for v in tiled.views])
        out = {"pixel_values": tiled.crops, "pad_fraction": tiled.pad_fraction, "pool_index": windows,
               "image_tokens": tokens}
        if c.read_targets and text_boxes is None:
            out["read_labels"] = torch.full(tiled.pad_fraction.shape, IGNORE_INDEX, dtype=torch.long)
        elif c.read_targets:
            out["read_labels"] = read_targets(tiled, text_boxes, self._text, self.pad_token_id, IGNORE_INDEX,
                                              c.image_size, c.patch_size)
        return out

    def no_images(self) -> dict[str, torch.Tensor]:
        """The image tensors of a sample without images: zero crops, shaped as real ones are."""
        c = self.config
        patches = (c.image_size // c.patch_size) ** 2
        out = {"pixel_values": torch.zeros((0, 3, c.image_size, c.image_size), dtype=torch.uint8),
               "pad_fraction": torch.zeros((0, patches)),
               "pool_index": torch.zeros((0, c.pool * c.pool), dtype=torch.long)}
        if c.read_targets:
            out["read_labels"] = torch.zeros((0, patches), dtype=torch.long)
        return out

    def stack_images(self, processed: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The image tensors of several images (or samples) joined; zero crops when there are none."""
        return _stack_images(processed) if processed else self.no_images()

    # ---- text ---------------------------------------------------------------------------------------
    def _text(self, text: str) -> list[int]:
        """The ids of a user's or a record's text, read as plain characters: a literal `<im_patch>`, `<|end|>`
        or any other special token in it is spelt out, never read as the control token (as chat templates
        tokenize contents). Otherwise a question holding `<im_patch>` gets one image placeholder too many and
        its whole batch fails, and one holding `<|end|>` ends its turn early."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    def _piece(self, text: str) -> list[int]:
        """The ids of a piece of the chat template (role headers, turn ends), whose special tokens are meant."""
        if text not in self._piece_ids:
            self._piece_ids[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return self._piece_ids[text]

    def _user_content(self, content: str, images: list[dict[str, Any]]) -> list[int]:
        """A user content's ids with the image tokens at each `<image>` marker (or first, without one)."""
        if not images:
            return self._text(content.replace(IMAGE_MARKER, "").strip())
        parts = content.split(IMAGE_MARKER)
        if len(parts) == 1:  # no markers: every image at the start
            parts = [""] * len(images) + [content]
        if len(parts) - 1 != len(images):
            raise RecordError(f"the conversation has {len(parts) - 1} {IMAGE_MARKER} markers but {len(images)} "
                              "images; put one marker per image in the first user turn", "image_marker_mismatch")
        ids = self._text(parts[0].strip())
        for image, text in zip(images, parts[1:]):
            ids += image["image_tokens"] + self._text(text.strip())
        return ids

    def encode_conversation(self, messages: Sequence[dict[str, str]], images: Sequence[dict[str, Any]] = ()
                            ) -> dict[str, list[int]]:
        """Token ids and labels (and, for masked multi-annotation, segment and position ids) of a
        conversation whose first user turn holds the images; pairs that would pass max_length are dropped."""
        chat, masked = self.chat, self.config.multi_annotation == "masked"
        input_ids, labels, segments, positions = [], [], [], []
        first_user = self._piece(chat.first_user_prefix)
        if masked and images:
            # the shared prefix: the role header and the image(s), before the first question
            content = messages[0]["content"]
            head = content.rpartition(IMAGE_MARKER)[0] + IMAGE_MARKER if IMAGE_MARKER in content else ""
            prefix = first_user + self._user_content(head, list(images))
            input_ids += prefix
            labels += [IGNORE_INDEX] * len(prefix)
            segments += [0] * len(prefix)
            positions += list(range(len(prefix)))
        for k in range(0, len(messages) - 1, 2):
            content = messages[k]["content"]
            if masked and images:
                tail = content.rpartition(IMAGE_MARKER)[2] if k == 0 else content.replace(IMAGE_MARKER, "")
                user = self._text(tail.strip())
            else:
                user = (first_user if k == 0 else self._piece(chat.user_prefix)) + \
                    self._user_content(content, list(images) if k == 0 else [])
            user += self._piece(chat.assistant_prefix)
            answer = self._text(messages[k + 1]["content"]) + self._piece(chat.assistant_suffix)
            if len(input_ids) + len(user) + len(answer) > self.config.max_length:
                if k == 0:
                    raise RecordError(f"the first exchange alone is {len(input_ids) + len(user) + len(answer)} "
                                      f"tokens, over max_length={self.config.max_length}; raise data.max_length "
                                      "(or lower model.image.max_crops)", "over_max_length")
                break
            if masked and images:
                start = segments.count(0)
                positions += list(range(start, start + len(user) + len(answer)))
                segments += [k // 2 + 1] * (len(user) + len(answer))
            input_ids += user + answer
            labels += [IGNORE_INDEX] * len(user) + answer
        out = {"input_ids": input_ids, "labels": labels}
        if masked and images:
            out.update(segment_ids=segments, position_ids=positions)
        return out

    def encode_prompt(self, question: str, images: Sequence[dict[str, Any]] = (),
                      history: Sequence[dict[str, str]] = (), answer_start: str = "") -> list[int]:
        """Ids of a prompt (earlier turns, then the question), ending where the assistant's answer starts, or
        after `answer_start`, the start of the answer that generation then continues (a prefill)."""
        chat = self.chat
        ids: list[int] = []
        turns = list(history) + [{"role": "user", "content": question}]
        for k in range(0, len(turns), 2):
            ids += (self._piece(chat.first_user_prefix) if k == 0 else self._piece(chat.user_prefix))
            ids += self._user_content(turns[k]["content"], list(images) if k == 0 else [])
            ids += self._piece(chat.assistant_prefix)
            if k + 1 < len(turns):
                ids += self._text(turns[k + 1]["content"]) + self._piece(chat.assistant_suffix)
        return ids + self._text(answer_start)

    # ---- records and batches ------------------------------------------------------------------------
    def process_record(self, record: Record, messages: Sequence[dict[str, str]] | None = None) -> dict[str, Any]:
        """Model inputs for a record with one image, several, or none (text-only: zero crops)."""
        # A synthetic record's text boxes are those of its first image (the one its renderer drew).
        boxes = record.meta.get("text_boxes") if self.config.read_targets else None
        images = [self.process_image(image, boxes if n == 0 else None) for n, image in enumerate(record.load_images())]
        sample = self.encode_conversation(messages if messages is not None else record.messages, images)
        sample.update(self.stack_images(images), key=record.key)
        return sample

    def process_prompt(self, images: ImageInput | Sequence[ImageInput] | None, prompt: str,
                       history: Sequence[dict[str, str]] = (), answer_start: str = "") -> dict[str, Any]:
        """One prompt for generation about one image, several (one `<image>` marker each, or all at the
        start) or none (None or []). An image is a PIL image, a file path or an http(s) URL. `answer_start`
        begins the answer for generation to continue."""
        if images is None:
            images = []
        elif isinstance(images, SINGLE_IMAGE):
            images = [images]
        processed = [self.process_image(load_image(image)) for image in images]
        return {"input_ids": self.encode_prompt(prompt, processed, history, answer_start),
                **self.stack_images(processed)}

    def collate(self, samples: Sequence[dict[str, Any]], padding_side: str = "right") -> dict[str, Any]:
        """Pad to the longest sequence (right for training, left for generation) and join the images of all
        samples, shifting each sample's pooling windows to its crops' place in the batch."""
        longest = max(len(s["input_ids"]) for s in samples)
        b = len(samples)
        ids = torch.full((b, longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, longest), dtype=torch.long)
        labels = torch.full((b, longest), IGNORE_INDEX, dtype=torch.long)
        masked = any("segment_ids" in s for s in samples)
        segments = torch.full((b, longest), -1, dtype=torch.long)
        positions = torch.zeros((b, longest), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            span = slice(0, n) if padding_side == "right" else slice(longest - n, longest)
            ids[row, span] = torch.tensor(s["input_ids"])
            mask[row, span] = 1
            if "labels" in s:
                labels[row, span] = torch.tensor(s["labels"])
            if masked:
                segments[row, span] = torch.tensor(s.get("segment_ids", [1] * n))
                positions[row, span] = torch.tensor(s.get("position_ids", range(n)))
        batch = {"input_ids": ids, "attention_mask": mask, **self.stack_images(samples)}
        # One image feature per placeholder (the connector gives one per pooling window). Checked here, on the
        # host, so the model's compiled forward need not check it inside its graph.
        placeholders = int((ids == self.ids[IMAGE_PATCH]).sum())
        if placeholders != batch["pool_index"].shape[0]:
            raise ValueError(f"the batch has {placeholders} image placeholder tokens but its images give "
                             f"{batch['pool_index'].shape[0]} features; a sample was cut inside its image tokens "
                             "or built by another processor")
        if any("labels" in s for s in samples):
            batch["labels"] = labels
        if masked:
            batch.update(segment_ids=segments, position_ids=positions)
        batch["keys"] = [s.get("key", "") for s in samples]
        return batch

    def prompt_batch(self, images: Sequence[ImageInput | Sequence[ImageInput] | None], prompts: Sequence[str]
                     ) -> dict[str, Any]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; pass one image (or one list "
                             "of images, or None) per prompt")
        return self.collate([self.process_prompt(im, p) for im, p in zip(images, prompts)], padding_side="left")

    # ---- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        # A saved processor is for inference: it computes no reading targets (the reading loss is training's).
        (folder / PROCESSOR_CONFIG).write_text(json.dumps({**asdict(self.config), "read_targets": False}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int | None = None) -> "MolminiProcessor":
        """The processor saved in a checkpoint folder; `max_length` replaces the saved sequence budget (a
        later training stage with another data.max_length)."""
        folder = Path(folder)
        path = folder / PROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {folder} is not a molmini checkpoint folder "
                                    "(save one with model.save_pretrained)")
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise TypeError(f"it holds a JSON {type(saved).__name__}, not an object of processor settings")
            known = {f.name for f in fields(ProcessorConfig)}
            config = ProcessorConfig(**{k: v for k, v in saved.items() if k in known})
            if max_length is not None:
                config.max_length = max_length
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a valid processor config ({e}); re-save the checkpoint with "
                             "model.save_pretrained") from e
        return cls(load_tokenizer(str(folder)), config)


def _stack_images(processed: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Join the images of several samples (or of one sample's several images): crops concatenated, each
    one's pooling windows shifted to where its crops now start."""
    patches = processed[0]["pad_fraction"].shape[1]
    windows, offset = [], 0
    for p in processed:
        windows.append(torch.where(p["pool_index"] >= 0, p["pool_index"] + offset, p["pool_index"]))
        offset += p["pixel_values"].shape[0] * patches
    out = {"pixel_values": torch.cat([p["pixel_values"] for p in processed]),
           "pad_fraction": torch.cat([p["pad_fraction"] for p in processed]), "pool_index": torch.cat(windows)}
    if "read_labels" in processed[0]:  # the reading targets ride with their crops (one processor made them all)
        out["read_labels"] = torch.cat([p["read_labels"] for p in processed])
    return out
