"""Bring your own VLM: a pretrained transformers `AutoModelForImageTextToText` (SmolVLM, Idefics3, Qwen2-VL,
Qwen2.5-VL, LLaVA, PaliGemma, Molmo2, ...) trained through molmini's shards, formatter, loop, stages, resume, cost
accounting, evaluation and publishing, with its own `AutoProcessor` and chat template.

`model.hf_vlm: PATH_OR_HUB_ID` (or a name of HF_VLM_PRESETS) in a config selects it. The model keeps its own
module layout; `component_of` maps its parameters onto molmini's three components (vision, connector, lm)
so `optim.freeze`, `optim.lr_<component>` and LoRA (on the LM's linear layers, merged on save) mean what
they mean for molmini's own model. The loss is molmini's (loss.py): on the assistant tokens only (each
answer and the end-of-turn token that stops it), summed and divided by the global batch's count. What a
checkpoint folder holds is the family's own: it loads with `AutoModelForImageTextToText.from_pretrained`.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn

from molmini.data.records import IMAGE_MARKER, Record, RecordError
from molmini.hub.publish import evaluation_table
from molmini.model.fast_inference import check_savable
from molmini.model.language_model import enable_transformers_checkpointing
from molmini.model.loss import IGNORE_INDEX, head_outputs

# Instruction-tuned checkpoints a user who is online starts from (`model.hf_vlm: smolvlm-256m`).
HF_VLM_PRESETS = {
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
    "smolvlm2-256m": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
    "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "idefics3-8b": "HuggingFaceM4/Idefics3-8B-Llama3",
    "paligemma2-3b": "google/paligemma2-3b-pt-224",
}

# Parameter-name patterns of each component across the families (transformers 5 module names), tried in
# this order: Qwen's connector (`visual.merger`) sits inside its vision module.
COMPONENT_PATTERNS = (
    ("connector", re.compile(r"(^|\.)(multi_modal_projector|connector|mm_projector|merger)(\.|$)")),
    ("vision", re.compile(r"(^|\.)(vision_tower|visual|vision_model|vision_encoder|image_encoder)(\.|$)")),
    ("lm", re.compile(r"(^|\.)(language_model|text_model|lm_head|embed_tokens)(\.|$)")),
)


def resolve_hf_vlm(name: str) -> str:
    return HF_VLM_PRESETS.get(name, name)


def component_of(parameter_name: str) -> str:
    """vision, connector or lm for a parameter of a transformers VLM; an unknown layout is an error."""
    for component, pattern in COMPONENT_PATTERNS:
        if pattern.search(parameter_name):
            return component
    raise ValueError(f"parameter {parameter_name!r} belongs to none of vision / connector / lm in this model's "
                     "layout; molmini.model.transformers_vlm.COMPONENT_PATTERNS lists the module names it knows")


def has_chat_template(processor) -> bool:
    return bool(getattr(processor, "chat_template", None))


def format_prompt(processor, prompt: str, images: int = 1) -> str:
    """The model's chat template around one user turn, images first. A processor without a template
    (PaliGemma: it adds the <bos> after the image tokens and the "\\n" that ends the prefix itself) gets the
    bare prompt after its image tokens."""
    prompt = prompt.replace(IMAGE_MARKER, "").strip()
    if not has_chat_template(processor):
        return getattr(processor, "image_token", "") * images + prompt
    turn = [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)


class HFChatProcessor:
    """Records -> the family processor's batch, with labels on the assistant tokens only.

    `process_record` (in the data workers) renders the conversation with the chat template and notes where
    each answer is in the text; `collate` runs the family's processor on the batch (it expands the image
    tokens and pads the pixels its own way) and marks the answers' tokens. The answers' tokens are found by
    tokenizing the unexpanded text with offsets and aligning from the end: the processor only expands the
    image tokens, which come before the first answer (Molmo2's also prepends a bos token)."""

    def __init__(self, processor, max_length: int):
        self.processor, self.tokenizer, self.max_length = processor, processor.tokenizer, max_length
        self.templated = has_chat_template(processor)
        self.stop_text = self.tokenizer.eos_token or ""
        self.tokenizer.padding_side = "left"  # for generation; collate pads training batches on the right

    # ---- one record ---------------------------------------------------------------------------------
    def _render(self, pairs: list[tuple[str, str]], images: int) -> tuple[str, list[tuple[int, int]]]:
        """The training text of these question/answer pairs and the character span of each answer (with the
        end-of-turn text the template puts after it, up to the next turn's whitespace)."""
        conv: list[dict[str, Any]] = []
        spans, text = [], ""
        for k, (question, answer) in enumerate(pairs):
            content = ([{"type": "image"}] * images if k == 0 else []) + [{"type": "text", "text": question}]
            conv.append({"role": "user", "content": content})
            prefix = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            conv.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
            text = self.processor.apply_chat_template(conv, tokenize=False)
            if not text.startswith(prefix):
                raise ValueError("the chat template does not render a conversation as its prompt followed by the "
                                 f"answer ({prefix[-40:]!r} is not a prefix of {text[:len(prefix) + 40]!r}); "
                                 "molmini cannot find the answer tokens of this processor's template")
            end = len(prefix) + len(text[len(prefix):].rstrip())
            if self.stop_text and not text[:end].endswith(tuple(self.tokenizer.all_special_tokens)):
                # a template that renders an answer with no special token after it. Either the next turn
                # closes it with the eos token (Molmo2's "<|im_end|>\n<|im_start|>user"): only the last
                # answer lacks it, and gets it here as a next turn would give it. Or nothing ever does
                # (LLaVA-1.5's "\n"): the eos token follows every answer, so the model learns to stop
                if not self.next_turn_closes:
                    conv[-1] = {"role": "assistant", "content": [{"type": "text", "text": answer + self.stop_text}]}
                text = text[:end] + self.stop_text + text[end:]
                end += len(self.stop_text)
            spans.append((len(prefix), end))
        return text, spans

    @functools.cached_property
    def next_turn_closes(self) -> bool:
        """Whether the template puts the eos token right after an answer once another user turn follows it (a
        fact of the template, probed once on a one-question conversation)."""
        def turn(role: str, text: str) -> dict[str, Any]:
            return {"role": role, "content": [{"type": "text", "text": text}]}
        conv = [turn("user", "?"), turn("assistant", "!")]
        prefix = self.processor.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=False)
        text = self.processor.apply_chat_template(conv, tokenize=False)
        answered = text[:len(prefix) + len(text[len(prefix):].rstrip())]
        followed = self.processor.apply_chat_template(conv + [turn("user", "?")], tokenize=False)
        return followed.startswith(answered + self.stop_text)

    def process_record(self, record: Record, messages: Sequence[dict[str, str]] | None = None) -> dict[str, Any]:
        messages = list(messages if messages is not None else record.messages)
        pairs = [(messages[i]["content"].replace(IMAGE_MARKER, "").strip(), messages[i + 1]["content"])
                 for i in range(0, len(messages) - 1, 2)]
        images = record.load_images()  # one, several (all in the first turn) or none (text-only)
        if not self.templated:  # PaliGemma-style: one question, its answer as the processor's suffix
            if len(images) != 1:
                raise RecordError(f"record {record.key!r} has {len(images)} images; a model without a chat template "
                                  "(PaliGemma) takes exactly one", "image_count")
            pairs = pairs[:1]
            return {"text": format_prompt(self.processor, pairs[0][0]), "suffix": pairs[0][1], "images": images,
                    "key": record.key}
        text, spans = self._render(pairs, len(images))
        length = len(self.processor(text=[text], images=[images] if images else None)["input_ids"][0])
        expansion = length - len(self.tokenizer(text)["input_ids"])  # the image tokens the processor adds
        while length > self.max_length and len(pairs) > 1:  # drop the last pairs, as molmini's processor does
            pairs = pairs[:-1]
            text, spans = self._render(pairs, len(images))
            length = len(self.tokenizer(text)["input_ids"]) + expansion
        if length > self.max_length:
            raise RecordError(f"record {record.key!r}: the first exchange alone is {length} tokens, over "
                              f"max_length={self.max_length}; raise data.max_length", "over_max_length")
        return {"text": text, "spans": spans, "images": images, "key": record.key}

    # ---- batches ------------------------------------------------------------------------------------
    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        # one list of images per sample; None for a batch without any (text-only samples)
        images = [s["images"] for s in samples] if any(s["images"] for s in samples) else None
        texts = [s["text"] for s in samples]
        self.tokenizer.padding_side = "right"
        try:
            extra = {"suffix": [s["suffix"] for s in samples]} if not self.templated else {}
            batch = dict(self.processor(text=texts, images=images, return_tensors="pt", padding=True, **extra))
        finally:
            self.tokenizer.padding_side = "left"
        if self.templated:
            batch["labels"] = torch.stack([self._labels(s, row, batch) for row, s in enumerate(samples)])
        batch["keys"] = [s["key"] for s in samples]
        return batch

    def _labels(self, sample: dict[str, Any], row: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"][row]
        n = int(batch["attention_mask"][row].sum())  # right padding: the row's tokens are ids[:n]
        plain = self.tokenizer(sample["text"], return_offsets_mapping=True)
        plain_ids = plain["input_ids"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        for start, end in sample["spans"]:
            tokens = [i for i, (a, b) in enumerate(plain["offset_mapping"]) if a < end and b > start and b > a]
            if not tokens:
                continue
            first = n - (len(plain_ids) - tokens[0])  # the same distance from the end in the expanded row
            span = slice(first, first + len(tokens))
            expected = torch.tensor([plain_ids[i] for i in tokens])
            if first < 0 or not torch.equal(ids[span], expected):
                raise RecordError(f"record {sample['key']!r}: the answer tokens could not be found in the processor's "
                                  "output (an image placed after the first answer?)", "answer_not_found")
            labels[span] = ids[span]
        return labels

    def prompt_batch(self, images: Sequence[Image.Image | Sequence[Image.Image]], prompts: Sequence[str]
                     ) -> dict[str, Any]:
        """A left-padded generation batch: one list of images per prompt, which processors that split a flat
        list by counting image tokens (Idefics3) and those that require the nesting (SmolVLM) both read."""
        nested = [[im] if isinstance(im, Image.Image) else list(im) for im in images]
        self.tokenizer.padding_side = "left"
        texts = [format_prompt(self.processor, p, len(ims)) for p, ims in zip(prompts, nested)]
        return dict(self.processor(images=nested, text=texts, return_tensors="pt", padding=True))

    def prompt_template(self) -> str:
        return format_prompt(self.processor, "{question}")

    @property
    def chat(self):  # what eval.heldout records as the layout the model was asked in
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        self.processor.save_pretrained(folder)


class HFVisionLanguageModel(nn.Module):
    """A transformers VLM with molmini's training interface: `forward(**batch, labels=...)` returns the
    answer-token loss sum and count (no full-vocabulary logits unless asked), `generate(images, prompts)`
    answers in batches, `save_pretrained` writes the family's own folder (LoRA merged) and a model card.
    It implements model/interface.py's VisionLanguageModel, as MolminiModel does."""
    family = "transformers"  # its checkpoint folder is the family's own (AutoModelForImageTextToText)

    def __init__(self, model, processor, max_length: int, source: str = ""):
        super().__init__()
        self.hf = model
        self.processor = HFChatProcessor(processor, max_length)
        self.source = source
        if self.hf.generation_config.pad_token_id is None:
            self.hf.generation_config.pad_token_id = processor.tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int = 2048, dtype: str | torch.dtype | None = None,
                        device: str = "cpu") -> "HFVisionLanguageModel":
        from transformers import AutoModelForImageTextToText, AutoProcessor
        source = resolve_hf_vlm(name_or_path)
        try:
            processor = AutoProcessor.from_pretrained(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"model.hf_vlm {name_or_path!r}: could not load a transformers image-text-to-text "
                                    f"model and processor ({str(e).splitlines()[0] if str(e) else e!r}); pass a folder "
                                    f"or hub id of one, or a preset: {sorted(HF_VLM_PRESETS)}") from e
        return cls(model, processor, max_length, source=source).to(device)

    # LoRA's parameter names keep the wrapped LM module's name, so they map to "lm" like it
    component_of = staticmethod(component_of)

    @property
    def config(self):
        return self.hf.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- training -----------------------------------------------------------------------------------
    def forward(self, labels: torch.Tensor | None = None, return_logits: bool = True, **inputs: Any
                ) -> dict[str, torch.Tensor]:
        base = self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf  # under LoRA
        hidden = base.model(**inputs).last_hidden_state
        return head_outputs(hidden, base.get_output_embeddings(), labels, return_logits)

    def apply_lora(self, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
        """peft LoRA on the LM's linear layers named in `target_modules` (never the tower's or connector's)."""
        from peft import LoraConfig, get_peft_model
        names = [name for name, module in self.hf.named_modules() if isinstance(module, nn.Linear)
                 and name.rsplit(".", 1)[-1] in target_modules and component_of(name) == "lm"
                 and not name.endswith("lm_head")]
        if not names:
            raise ValueError(f"train.lora.target_modules {target_modules} name no linear layer of the LM of "
                             f"{type(self.hf).__name__}; pick from its attention/MLP projections, e.g. q_proj, v_proj")
        self.hf = get_peft_model(self.hf, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names))

    def merge_lora(self) -> None:
        if hasattr(self.hf, "merge_and_unload"):
            self.hf = self.hf.merge_and_unload()

    def enable_gradient_checkpointing(self) -> None:
        enable_transformers_checkpointing(self.hf)

    def rebuild(self) -> "HFVisionLanguageModel":
        """A fresh model of the same architecture (for weights gathered from shards at the end of a run)."""
        from transformers import AutoModelForImageTextToText
        base = self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf
        return HFVisionLanguageModel(AutoModelForImageTextToText.from_config(base.config), self.processor.processor,
                                     self.processor.max_length, source=self.source)

    # ---- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image | Sequence[Image.Image]], prompts: Sequence[str],
                 max_new_tokens: int = 16, batch_size: int = 8, **generate_kwargs: Any) -> list[str]:
        """Answer each prompt about its image(s), in left-padded batches, greedy unless told otherwise."""
        was_training = self.training
        self.eval()
        generate_kwargs.setdefault("do_sample", False)
        answers: list[str] = []
        for start in range(0, len(prompts), batch_size):
            inputs = self.processor.prompt_batch(images[start:start + batch_size], prompts[start:start + batch_size])
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            output = self.hf.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
            new = output[:, inputs["input_ids"].shape[1]:]
            answers += [a.strip() for a in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
        self.train(was_training)
        return answers

    # ---- checkpoints --------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, eval_results: dict[str, Any] | None = None,
                        training: dict[str, Any] | None = None) -> Path:
        """The family's own checkpoint folder (safetensors, config, processor), LoRA merged, plus a model card."""
        check_savable(self, folder)
        self.merge_lora()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        self.write_model_card(folder, eval_results=eval_results, training=training)
        return folder

    def write_model_card(self, folder: Path, eval_results: dict[str, Any] | None = None,
                         training: dict[str, Any] | None = None) -> None:
        write_hf_model_card(Path(folder), self, eval_results=eval_results, training=training)


def write_hf_model_card(folder: Path, model: HFVisionLanguageModel, eval_results: dict[str, Any] | None = None,
                        training: dict[str, Any] | None = None) -> None:
    """README.md for a fine-tuned transformers VLM: its base model, how it loads, scores and training cost."""
    import yaml
    n_params = sum(p.numel() for p in model.parameters())
    meta: dict[str, Any] = {"library_name": "transformers", "license": "apache-2.0", "pipeline_tag": "image-text-to-text",
                            "tags": ["molmini", "vision-language", "image-text-to-text"]}
    if model.source and not Path(model.source).is_dir():
        meta["base_model"] = model.source
    lines = ["# molmini fine-tune\n",
             f"`{type(model.hf).__name__}` ({n_params / 1e6:.1f}M parameters) fine-tuned with molmini"
             + (f" from `{model.source}`" if model.source else "") + ".\n",
             "```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n"
             "model = AutoModelForImageTextToText.from_pretrained(\"PATH_OR_HUB_ID\")\n"
             "processor = AutoProcessor.from_pretrained(\"PATH_OR_HUB_ID\")\n```\n"]
    if eval_results:
        lines += evaluation_table(eval_results)
    if training:
        lines.append("## Training cost\n")
        lines += [f"- {k}: {training[k]}" for k in ("steps", "samples", "wall_time_s", "device", "num_processes",
                                                     "gpu", "gpu_hours", "energy_kwh") if training.get(k) is not None]
        lines.append("")
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n" + "\n".join(lines))
    if training:
        (folder / "molmini_training.json").write_text(json.dumps(training, indent=2, default=str))
