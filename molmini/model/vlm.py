"""The molmini model: vision tower -> connector -> language model, with loss, generation and checkpoints.

Image features replace the embeddings of the `<im_patch>` placeholders the processor put in the
sequence; everything else is the LM's own forward and `generate`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors.torch import save_model
from torch import nn

from molmini.config import ModelConfig, ReadingConfig, from_dict
from molmini.data.images import SINGLE_IMAGE, ImageInput
from molmini.data.processor import MolminiProcessor, ProcessorConfig
from molmini.data.tokenizer import IMAGE_PATCH, special_token_ids
from molmini.hub.checkpoint_files import CHECKPOINT_FILES, load_saved_weights, resolve_checkpoint
from molmini.hub.publish import push_folder, write_model_card
from molmini.model.connector import build_connector
from molmini.model.fast_inference import check_savable
from molmini.model.language_model import build_language_model, enable_transformers_checkpointing
from molmini.model.loss import count_loss_tokens, head_outputs
from molmini.model.reading import READ_HEAD, build_read_head, read_outputs
from molmini.model.vision import VisionTower, plain_tower_spec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

log = logging.getLogger(__name__)


class MolminiModel(nn.Module):
    """molmini's own vision-language model: open_clip tower -> connector -> transformers LM. It implements
    model/interface.py's VisionLanguageModel, the one interface the loop, the stages and evaluation use."""
    family = "molmini"  # its checkpoint folder loads with MolminiModel.from_pretrained

    def __init__(self, config: ModelConfig, tokenizer, max_length: int = 256, load_pretrained: bool = True,
                 saved_lm_config: dict[str, Any] | None = None, processor: MolminiProcessor | None = None):
        """`processor`: the one a checkpoint saved (it must fit this model's tower and connector); without
        it the processor is derived once from the model config, tower and connector, with `max_length`."""
        super().__init__()
        self.config = config
        self.token_ids = special_token_ids(tokenizer)
        self.vision = VisionTower(config.vision, load_pretrained=load_pretrained)
        self.lm = build_language_model(config.lm, len(tokenizer), self.token_ids,
                                       saved_config=saved_lm_config)
        self.connector = build_connector(config.connector, self.vision.output_dim, self.lm.config.hidden_size)
        # Molmo's pad embedding: added to the features of patches that are all padding (row 0) or partly
        # padding (row 1), so the model can tell letterboxing from image content. Zero at the start.
        self.pad_embed = nn.Parameter(torch.zeros(2, self.vision.output_dim))
        # The reading loss's head (model/reading.py): only while model.reading.weight > 0, never saved.
        self.read_head = build_read_head(self.vision.output_dim, len(tokenizer)) if config.reading.weight > 0 else None
        self.register_buffer("image_mean", torch.tensor(self.vision.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(self.vision.image_std).view(1, 3, 1, 1), persistent=False)
        derived = ProcessorConfig.for_model(config, self.vision, self.connector, max_length)
        if processor is None:
            processor = MolminiProcessor(tokenizer, derived)
        else:
            saved = {k: v for k, v in dataclasses.asdict(processor.config).items() if k != "max_length"}
            wanted = {k: v for k, v in dataclasses.asdict(derived).items() if k != "max_length"}
            mismatched = {k: (saved[k], wanted[k]) for k in wanted if _listed(saved[k]) != _listed(wanted[k])}
            if mismatched:
                raise ValueError(f"the processor config does not fit the model (saved, expected): {mismatched}; "
                                 "re-save the checkpoint with model.save_pretrained")
        self.processor = processor

    def set_reading(self, reading: ReadingConfig) -> None:
        """Switch the reading loss on (a fresh head, and per-patch targets from the processor) or off, for a
        run that starts from a checkpoint (train.init_from): a checkpoint never holds the head, so a stage
        that goes on reading (e.g. after configs/stages/0_read.yaml) brings its own `model.reading`."""
        self.config = dataclasses.replace(self.config, reading=reading)
        on = reading.weight > 0
        if on and self.read_head is None:
            self.read_head = build_read_head(self.vision.output_dim, len(self.processor.tokenizer)).to(
                self.pad_embed.device)
        elif not on:
            self.read_head = None
        self.processor.config = dataclasses.replace(self.processor.config, read_targets=on)

    # ---- what a training stage trains ---------------------------------------------------------------
    @staticmethod
    def component_of(parameter_name: str) -> str:
        """Parameters outside the vision tower and the LM belong to the connector: the connector module itself
        and the pad embedding it reads (Molmo trains them together)."""
        owner = parameter_name.split(".", 1)[0]
        if owner == READ_HEAD:  # the reading head reads the tower's features: it trains and freezes with it
            return "vision"
        return owner if owner in ("vision", "lm") else "connector"

    def apply_lora(self, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
        """Wrap the LM in peft LoRA adapters: its own weights freeze, the adapters train."""
        from peft import LoraConfig, get_peft_model
        names = {n.rsplit(".", 1)[-1] for n, _ in self.lm.named_modules()}
        missing = [t for t in target_modules if t not in names]
        if missing:
            raise ValueError(f"train.lora.target_modules {missing} are not modules of the LM "
                             f"({type(self.lm).__name__}); pick from its linear layers, e.g. q_proj, v_proj")
        self.lm = get_peft_model(self.lm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                     target_modules=list(target_modules)))

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the LM's weights, so the model saves and loads without peft."""
        from peft import PeftModel
        if isinstance(self.lm, PeftModel):
            self.lm = self.lm.merge_and_unload()

    def enable_gradient_checkpointing(self) -> None:
        self.vision.visual.set_grad_checkpointing(True)
        enable_transformers_checkpointing(self.lm)

    def rebuild(self) -> "MolminiModel":
        """A fresh model of the same architecture (for weights gathered from shards at the end of a run)."""
        from peft import PeftModel
        lm = self.lm.get_base_model() if isinstance(self.lm, PeftModel) else self.lm
        return MolminiModel(self.config, self.processor.tokenizer, max_length=self.processor.config.max_length,
                            load_pretrained=False, saved_lm_config=lm.config.to_dict())

    # ---- forward ------------------------------------------------------------------------------------
    def patch_features(self, pixel_values: torch.Tensor, pad_fraction: torch.Tensor) -> torch.Tensor:
        """uint8 crops [N, 3, S, S] -> the tower's patch features [N, P, D], pad-marked (Molmo's pad embedding
        added to the patches that are all or partly padding)."""
        x = (pixel_values.float() / 255.0 - self.image_mean.float()) / self.image_std.float()
        feats = self.vision(x.to(self.pad_embed.dtype))
        pad = pad_fraction.to(feats.dtype).unsqueeze(-1)
        return feats + self.pad_embed[0] * (pad >= 1) + self.pad_embed[1] * ((pad > 0) & (pad < 1))

    def image_features(self, pixel_values: torch.Tensor, pad_fraction: torch.Tensor, pool_index: torch.Tensor,
                       feats: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 crops [N, 3, S, S] -> [T, LM width], one row per image placeholder of the batch: the tower's
        patch features (pad-marked), gathered into the processor's pooling windows, through the connector.
        A batch of text-only samples (N = 0) gives [0, LM width]: the tower and connector then run on one
        blank crop and window that are dropped at the end, so every parameter stays in the graph (with a zero
        gradient: DDP expects one for each) and the step is the same code with or without images. `feats`:
        the patch features when the caller has them already."""
        no_image = pixel_values.shape[0] == 0
        if no_image:
            pixel_values = pixel_values.new_zeros((1, *pixel_values.shape[1:]))
            pad_fraction = pad_fraction.new_zeros((1, *pad_fraction.shape[1:]))
            pool_index = pool_index.new_zeros((1, *pool_index.shape[1:]))
            feats = None
        if feats is None:
            feats = self.patch_features(pixel_values, pad_fraction)
        windows = feats.flatten(0, 1)[pool_index.clamp(min=0)]
        features = self.connector(windows, pool_index >= 0)
        return features[:0] if no_image else features

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, pad_fraction: torch.Tensor,
              pool_index: torch.Tensor, feats: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.token_ids[IMAGE_PATCH]
        feats = self.image_features(pixel_values, pad_fraction, pool_index, feats).to(embeds.dtype)
        # Data-dependent, so eager inference only: a compiled step would break its graph here, and on a GPU
        # the comparison makes the host wait for the device every step. Training batches come from the
        # processor's collate, which checks them on the host; this catches hand-built inputs to generate.
        if not self.training and not torch.compiler.is_compiling() and placeholders.sum() != feats.shape[0]:
            raise ValueError(f"the batch has {int(placeholders.sum())} image placeholder tokens but its images "
                             f"give {feats.shape[0]} features; build inputs with this model's processor")
        return embeds.masked_scatter(placeholders.unsqueeze(-1), feats)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                pad_fraction: torch.Tensor, pool_index: torch.Tensor, labels: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                return_logits: bool = True, read_labels: torch.Tensor | None = None, **_: Any
                ) -> dict[str, torch.Tensor]:
        """Logits [B, L, V] (unless `return_logits=False`) and, given labels, the loss summed over the answer
        tokens (`loss_sum`), their count and their mean. The loss runs the LM head at answer positions only
        (molmini/model/loss.py); the training loop asks for no logits, so no full-vocabulary work is done.
        With the reading head and `read_labels` (the processor's per-patch targets), also `read_loss` and
        the counts behind read_accuracy; with model.reading.answer_weight 0, only those (the LM is not run)."""
        feats, read = None, {}
        if self.read_head is not None and read_labels is not None:
            if pixel_values.shape[0]:
                feats = self.patch_features(pixel_values, pad_fraction)  # shared with the connector below
                read = read_outputs(self.read_head(feats), read_labels, self.processor.pad_token_id)
            else:  # no image in the batch: a zero reading loss that keeps the head in the graph (DDP)
                zero = self.read_head.weight.sum() * 0
                read = {"read_loss": zero, "read_correct": zero.long(), "read_count": zero.long()}
            if self.config.reading.answer_weight == 0:  # the reading stage: the tower and the head alone
                zero = read["read_loss"] * 0
                count = count_loss_tokens(labels) if labels is not None else zero.long()
                return {"loss_sum": zero, "num_loss_tokens": count, "loss": zero, **read}
        embeds = self.embed(input_ids, pixel_values, pad_fraction, pool_index, feats)
        if segment_ids is not None:  # Molmo's multi-annotation masking
            attention_mask = annotation_mask(segment_ids, attention_mask, embeds.dtype)
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                       position_ids=position_ids).last_hidden_state
        return {**head_outputs(hidden, self.lm.get_output_embeddings(), labels, return_logits), **read}

    # ---- generation ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                     pad_fraction: torch.Tensor, pool_index: torch.Tensor, max_new_tokens: int = 16,
                     **generate_kwargs: Any) -> torch.Tensor:
        """New token ids for a left-padded batch, through the LM's own `generate` with a KV cache: greedy by
        default; sampling (do_sample, temperature, top_p), beam search (num_beams) and a `streamer` pass through."""
        embeds = self.embed(input_ids, pixel_values, pad_fraction, pool_index)
        generate_kwargs.setdefault("do_sample", False)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                eos_token_id=self.processor.stop_token_id, pad_token_id=self.processor.pad_token_id,
                                **generate_kwargs)

    def _on_device(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "attention_mask", "pixel_values", "pad_fraction", "pool_index")
        return {k: batch[k].to(self.device) for k in keys}

    @torch.no_grad()
    def generate(self, images: Sequence[ImageInput | Sequence[ImageInput] | None], prompts: Sequence[str],
                 max_new_tokens: int = 16, batch_size: int = 32, **generate_kwargs: Any) -> list[str]:
        """Answer each prompt about its image (or its list of images, one `<image>` marker each, or None for a
        text-only prompt), in batches; greedy unless sampling or beam arguments are given. An image is a PIL
        image, a file path or an http(s) URL."""
        if isinstance(images, SINGLE_IMAGE):
            images = [images]  # one image for one prompt
        was_training = self.training
        self.eval()
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = self.processor.prompt_batch(images[start:start + batch_size], prompts[start:start + batch_size])
            new = self.generate_ids(**self._on_device(batch), max_new_tokens=max_new_tokens, **generate_kwargs)
            answers += [a.strip() for a in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
        self.train(was_training)
        return answers

    def stream(self, image: ImageInput | Sequence[ImageInput] | None, prompt: str, max_new_tokens: int = 64,
               history: Sequence[dict[str, str]] = (), **generate_kwargs: Any) -> Iterator[str]:
        """Yield the answer's text piece by piece as it is generated (transformers' TextIteratorStreamer).
        `image`: a PIL image, a path or an http(s) URL, a list of them, or None."""
        sample = self.processor.process_prompt(image, prompt, history)
        yield from self.stream_sample(sample, max_new_tokens, **generate_kwargs)

    def stream_sample(self, sample: dict[str, Any], max_new_tokens: int = 64, **generate_kwargs: Any) -> Iterator[str]:
        """`stream` for a prompt the processor has already laid out (`processor.process_prompt`)."""
        from threading import Thread

        from transformers import TextIteratorStreamer
        batch = self.processor.collate([sample], padding_side="left")
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.eval()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self.generate_ids(**self._on_device(batch), max_new_tokens=max_new_tokens, streamer=streamer,
                                  **generate_kwargs)
            except BaseException as e:  # end the stream, or the reader below would wait for ever
                failed.append(e)
                streamer.end()

        thread = Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if failed:
            raise failed[0]

    def chat(self, image: ImageInput | Sequence[ImageInput] | None, question: str,
             history: Sequence[dict[str, str]] = (), max_new_tokens: int = 64, **generate_kwargs: Any) -> str:
        """One answer to `question` about `image`, after the earlier `history` turns (user/assistant dicts)."""
        return "".join(self.stream(image, question, max_new_tokens, history, **generate_kwargs)).strip()

    # ---- checkpoints --------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, eval_results: dict[str, Any] | None = None,
                        training: dict[str, Any] | None = None) -> Path:
        """A folder that loads with `from_pretrained` and publishes as is: config, safetensors weights,
        tokenizer, processor config and a model card; and, for transformers' Auto classes (molmini/auto/classes.py),
        model_type and auto_map in the configs and the remote-code files they name: self-contained ones (torch and
        transformers alone) for an open_clip ViT tower, described in config.json for them; thin ones that import
        molmini for other towers, which is logged (molmini/hub/checkpoint_files.py)."""
        from molmini.hub.checkpoint_files import PLAIN_TOWER_KEY, transformers_config_fields, write_remote_code
        check_savable(self, folder)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # The sequence budget (max_length) is the processor's, in processor_config.json only. The reading head
        # is a training device: the checkpoint is the model without it (and says so: reading off).
        model = dataclasses.asdict(self.config)
        model["reading"] = dataclasses.asdict(ReadingConfig())
        config = {**transformers_config_fields(self), "model": model, "lm_config": self.lm.config.to_dict()}
        tower, why_not = plain_tower_spec(self.vision)
        if tower is not None:
            config[PLAIN_TOWER_KEY] = tower
        else:
            log.warning("%s: the vision tower %s has no plain-torch twin (%s), so this checkpoint loads through "
                        "transformers' trust_remote_code only where molmini is installed; an open_clip ViT tower "
                        "(e.g. molmini-vit) saves a self-contained one", folder, self.config.vision.model_name, why_not)
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
        head, self.read_head = self.read_head, None
        try:
            save_model(self, str(folder / WEIGHTS_FILE))
        finally:
            self.read_head = head
        self.processor.save_pretrained(folder)
        write_remote_code(folder)
        self.write_model_card(folder, eval_results=eval_results, training=training)
        return folder

    def write_model_card(self, folder: Path, eval_results: dict[str, Any] | None = None,
                         training: dict[str, Any] | None = None) -> None:
        write_model_card(Path(folder), self, eval_results=eval_results, training=training)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, max_length: int | None = None) -> "MolminiModel":
        """Load a checkpoint folder or hub id (safetensors only, nothing is unpickled). `device="auto"` takes
        the GPU when there is one; `dtype="bfloat16"` halves the memory for inference on a GPU, `"auto"` keeps
        the saved weights' dtype."""
        folder = resolve_checkpoint(name_or_path, required=CHECKPOINT_FILES)
        try:
            saved = json.loads((folder / CONFIG_FILE).read_text())
            config = from_dict(ModelConfig, saved["model"])
            lm_config = saved["lm_config"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{folder / CONFIG_FILE} is not a molmini model config ({e!r}); it must hold the "
                             "'model' and 'lm_config' that model.save_pretrained writes") from e
        processor = MolminiProcessor.from_pretrained(folder, max_length=max_length)
        model = cls(config, processor.tokenizer, load_pretrained=False, saved_lm_config=lm_config,
                    processor=processor)
        return load_saved_weights(model, folder, CONFIG_FILE, WEIGHTS_FILE, saved, device, dtype)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload molmini checkpoint") -> str:
        """Save this model (with the model card of the folder it was loaded from, if any) and upload it to
        the hub as `repo_id`; returns the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "checkpoint")
            card = getattr(self, "source_folder", None)
            if card is not None and (card / "README.md").is_file():
                shutil.copy(card / "README.md", folder / "README.md")
            return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


def _listed(value: Any) -> list:
    """Tuples and lists compare equal after a json round trip (mean and std are saved as lists)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def annotation_mask(segment_ids: torch.Tensor, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive [B, 1, L, L] attention mask of Molmo's multi-annotation sequences: causal, and a token
    sees the shared prefix (segment 0) and its own segment only. Padding rows see themselves (no empty rows)."""
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    visible = (segment_ids[:, :, None] == segment_ids[:, None, :]) | (segment_ids[:, None, :] == 0)
    allowed = causal & visible & attention_mask[:, None, :].bool()
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
