"""What the loop, the stages and evaluation need of a model, whichever kind it is: molmini's own
(`MolminiModel`, model/vlm.py) or a transformers VLM brought in (`HFVisionLanguageModel`,
model/transformers_vlm.py). Both implement `VisionLanguageModel`, so no caller asks which kind it holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

from molmini.config import COMPONENTS  # the three parts every model kind maps its parameters onto

__all__ = ["COMPONENTS", "VisionLanguageModel"]


@runtime_checkable
class VisionLanguageModel(Protocol):
    """A model the loop trains, the stages freeze, evaluation asks and a run saves.

    - `processor` turns records and prompts into the model's batches (`process_record`, `collate`).
    - `family`: what its checkpoint folder loads with, "molmini" (molmini's own format) or "transformers"
      (the family's own folder, AutoModelForImageTextToText).
    - `forward(**batch, return_logits=False)` gives the answer tokens' `loss_sum` and `num_loss_tokens`.
    """
    processor: Any
    family: Literal["molmini", "transformers"]

    def component_of(self, parameter_name: str) -> str:
        """Which of COMPONENTS (vision, connector, lm) a parameter belongs to; freezing, the per-component
        learning rates and the parameter counts all go by it."""

    def apply_lora(self, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
        """peft LoRA adapters on the LM's linear layers named in `target_modules`; the LM's own weights freeze."""

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the weights (a no-op without them), so the model saves and loads without peft."""

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (the tower's and the LM's blocks)."""

    def rebuild(self) -> "VisionLanguageModel":
        """A fresh model of the same architecture, without its weights (for weights gathered from shards at
        the end of a run); LoRA is not applied to it."""

    def save_pretrained(self, folder: str | Path, eval_results: dict[str, Any] | None = None,
                        training: dict[str, Any] | None = None) -> Path:
        """A checkpoint folder that loads with the family's `from_pretrained`, with its model card."""

    def write_model_card(self, folder: Path, eval_results: dict[str, Any] | None = None,
                         training: dict[str, Any] | None = None) -> None:
        """The folder's README.md: what the model is, how it loads, its scores and what training cost."""

    def generate(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int = 16,
                 batch_size: int = 8, **generate_kwargs: Any) -> list[str]:
        """Greedy answers to each prompt about its image(s), in batches."""


def load_trained(name_or_path: str | Path, max_length: int | None = None, device: str = "cpu",
                 dtype: Any = None) -> VisionLanguageModel:
    """A checkpoint folder (or hub id) a molmini run wrote, whichever kind of model it holds: a folder whose
    config.json names another model_type is a transformers VLM molmini fine-tuned, any other molmini's own."""
    from molmini.hub.checkpoint_files import is_transformers_folder
    if Path(name_or_path).is_dir() and is_transformers_folder(name_or_path):
        from molmini.model.transformers_vlm import HFVisionLanguageModel
        return HFVisionLanguageModel.from_pretrained(str(name_or_path), max_length=max_length or 2048,
                                                     dtype=dtype, device=device)
    from molmini.model.vlm import MolminiModel
    return MolminiModel.from_pretrained(name_or_path, device=device, dtype=dtype, max_length=max_length)
