"""molmini checkpoints in transformers' Auto classes: `AutoConfig`, `AutoModelForImageTextToText` and
`AutoProcessor` load a molmini checkpoint folder or hub id, so tools that drive transformers models (lmms-eval,
VLMEvalKit, pipelines) can drive molmini's.

Two ways in, one implementation (this module, and molmini/auto/processor.py):
- `trust_remote_code=True`: `save_pretrained` writes `model_type`, `architectures` and `auto_map` into
  config.json (and `processor_class`, `auto_map` into processor_config.json) and copies the thin files of
  molmini/remote_code/ into the folder; they import the classes below from the installed molmini.
- `import molmini.auto.classes` registers the classes with the Auto classes under model_type "molmini", so no
  remote code runs. `import molmini` alone stays light (it imports no torch or transformers), so registering
  is this explicit import; the remote-code files import this module too, which registers as well.

The wrapper is a real `PreTrainedModel` (device, dtype, generation_config, `.to`, `.eval` behave as transformers
callers expect) around a `MolminiModel`, but loading and saving are molmini's own: `from_pretrained` delegates
to `MolminiModel.from_pretrained` (safetensors only, weights loaded exactly as molmini loads them; transformers
never initialises or ties them), and the folder it saves is a molmini checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, GenerationMixin,
                          PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # transformers 5 names it PreTrainedConfig, 4.x PretrainedConfig (both exist in 5)
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as PreTrainedConfig

from molmini.auto.processor import AUTO_LOADER_ARGUMENTS, MolminiTransformersProcessor
from molmini.hub.checkpoint_files import CHECKPOINT_FILES, MODEL_TYPE, resolve_checkpoint
from molmini.model.vlm import MolminiModel

# What transformers' loaders pass along that has no meaning for a molmini checkpoint (a single safetensors
# file, loaded on one device, with the LM attention its config names).
LOADER_ARGUMENTS_WITHOUT_EFFECT = AUTO_LOADER_ARGUMENTS | {"adapter_kwargs", "use_safetensors", "low_cpu_mem_usage",
                                                           "attn_implementation"}


class MolminiConfig(PreTrainedConfig):
    """What `MolminiModel.from_pretrained` reads, as a transformers config: molmini's model config (`model`)
    and the language model's transformers config (`lm_config`), both plain dicts."""
    model_type = MODEL_TYPE

    def __init__(self, model: dict[str, Any] | None = None, lm_config: dict[str, Any] | None = None, **kwargs: Any):
        self.model = model or {}
        self.lm_config = lm_config or {}
        super().__init__(**kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """A no-op: the auto_map and remote-code files a checkpoint needs are molmini's save_pretrained's to
        write (transformers would copy this module, not the thin files)."""


def device_of(device_map: Any) -> str | torch.device:
    """The one device a molmini checkpoint loads on, from transformers' `device_map`: None (cpu), "auto" (the GPU
    when there is one), a device, a GPU index, or a dict whose values all name one device."""
    if isinstance(device_map, dict):
        devices = {str(d) for d in device_map.values()}
        if len(devices) != 1:
            raise ValueError(f"device_map {device_map!r} spreads the model over {sorted(devices)}; a molmini model "
                             "loads on one device: pass device_map='auto' or one device such as 'cuda:0'")
        device_map = next(iter(device_map.values()))
    if device_map is None:
        return "cpu"
    if isinstance(device_map, int):
        return f"cuda:{device_map}"
    return device_map if device_map == "auto" else torch.device(device_map)


class MolminiForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """A `MolminiModel` (`.model`) as a transformers model: `forward` returns a `CausalLMOutputWithPast` and
    `generate` returns the prompt ids followed by the new ones, as every transformers `generate` does. Built by
    `from_pretrained`; `save_pretrained` writes a molmini checkpoint."""
    config_class = MolminiConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: MolminiConfig, model: MolminiModel | None = None):
        super().__init__(config)
        if model is None:
            raise ValueError("MolminiForConditionalGeneration wraps a loaded molmini model: build it with "
                             "from_pretrained(CHECKPOINT_FOLDER_OR_HUB_ID), or MolminiForConditionalGeneration(config, "
                             "molmini_model)")
        self.model = model  # no post_init(): the weights are the checkpoint's, never re-initialised
        processor = model.processor
        if self.generation_config is not None:
            self.generation_config.eos_token_id = processor.stop_token_id
            self.generation_config.pad_token_id = processor.pad_token_id

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args: Any,
                        config: MolminiConfig | None = None, dtype: str | torch.dtype | None = None,
                        torch_dtype: str | torch.dtype | None = None, device_map: Any = None,
                        max_length: int | None = None, revision: str | None = None, cache_dir: str | None = None,
                        token: str | bool | None = None, subfolder: str = "",
                        **kwargs: Any) -> "MolminiForConditionalGeneration":
        """Load a molmini checkpoint folder or hub id through `MolminiModel.from_pretrained`. `dtype` (or the older
        `torch_dtype`; "auto": the saved weights' dtype), `device_map` (one device, or "auto") and `max_length`
        (the processor's sequence budget) apply; transformers' other loading options have no effect here."""
        unknown = sorted(set(kwargs) - LOADER_ARGUMENTS_WITHOUT_EFFECT)
        if model_args or unknown:
            raise ValueError(f"MolminiForConditionalGeneration.from_pretrained got arguments it does not know: "
                             f"{list(model_args) + unknown}; it takes dtype, device_map, max_length and the hub's "
                             "revision, subfolder, cache_dir and token")
        folder = resolve_checkpoint(pretrained_model_name_or_path, required=CHECKPOINT_FILES, revision=revision,
                                    cache_dir=cache_dir, token=token, subfolder=subfolder)
        dtype = dtype if dtype is not None else torch_dtype
        model = MolminiModel.from_pretrained(folder, device=device_of(device_map), dtype=dtype, max_length=max_length)
        if config is None:
            config = MolminiConfig.from_pretrained(folder)
        config.name_or_path = str(pretrained_model_name_or_path)
        return cls(config, model).eval()

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """A no-op, as for MolminiConfig: save_pretrained writes the auto_map."""

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to initialise: the weights come from the checkpoint."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                pad_fraction: torch.Tensor, pool_index: torch.Tensor, labels: torch.Tensor | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Logits (and, given labels, the mean loss over the answer tokens) of a batch from the processor."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                         pad_fraction=pad_fraction, pool_index=pool_index, labels=labels, **kwargs)
        return CausalLMOutputWithPast(loss=out.get("loss"), logits=out.get("logits"))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                 pad_fraction: torch.Tensor, pool_index: torch.Tensor, max_new_tokens: int = 16,
                 **generate_kwargs: Any) -> torch.Tensor:
        """The prompt ids followed by the new ones, for a left-padded batch from the processor; greedy unless
        sampling or beam arguments are given. The answer stops at, and pads with, the processor's own stop and
        pad tokens (a caller's `eos_token_id`/`pad_token_id`, often its tokenizer's defaults, give way to them)."""
        for key in ("eos_token_id", "pad_token_id"):
            generate_kwargs.pop(key, None)
        new = self.model.generate_ids(input_ids, attention_mask, pixel_values, pad_fraction, pool_index,
                                      max_new_tokens=max_new_tokens, **generate_kwargs)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)

    def save_pretrained(self, save_directory: str | Path, **molmini_kwargs: Any) -> Path:
        """A molmini checkpoint folder (MolminiModel.save_pretrained: eval_results, training)."""
        return self.model.save_pretrained(save_directory, **molmini_kwargs)

    def push_to_hub(self, repo_id: str, **molmini_kwargs: Any) -> str:
        """Upload as a molmini checkpoint (MolminiModel.push_to_hub: private, token, commit_message)."""
        return self.model.push_to_hub(repo_id, **molmini_kwargs)


def register() -> None:
    """Register the classes with transformers' Auto classes (model_type "molmini"); run on import."""
    AutoConfig.register(MODEL_TYPE, MolminiConfig, exist_ok=True)
    AutoModelForImageTextToText.register(MolminiConfig, MolminiForConditionalGeneration, exist_ok=True)
    AutoModel.register(MolminiConfig, MolminiForConditionalGeneration, exist_ok=True)
    if hasattr(transformers, "AutoModelForVision2Seq"):  # transformers 4.x
        transformers.AutoModelForVision2Seq.register(MolminiConfig, MolminiForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(MolminiConfig, MolminiTransformersProcessor, exist_ok=True)


register()
