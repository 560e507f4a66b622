"""Publishing a checkpoint folder: its model card (README.md with the evaluation table and what training cost)
and the upload to the Hugging Face hub."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from molmini.hub.checkpoint_files import PUBLISHED_FILES, is_transformers_folder

# How to load a checkpoint, in its model card: with molmini, and with transformers' Auto classes.
USAGE = """```python
from molmini import MolminiModel
model = MolminiModel.from_pretrained("PATH_OR_HUB_ID")
print(model.generate(images=[image], prompts=["What type of chart is this?"]))
```

With transformers' Auto classes (`pip install molmini`; `trust_remote_code=True` runs the checkpoint's thin
files, which import the installed molmini, or `import molmini.auto.classes` first registers the classes):

```python
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained("PATH_OR_HUB_ID", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("PATH_OR_HUB_ID", trust_remote_code=True)
turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What type of chart is this?"}]}]
text = processor.apply_chat_template(turn, add_generation_prompt=True)
inputs = processor(images=[image], text=[text], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=32)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```
"""


def published_files(folder: Path) -> list[str]:
    """What a folder must hold to publish: a molmini checkpoint's files, or, for a transformers VLM that
    molmini fine-tuned (model.hf_vlm: its config names another model_type), its config, its weights (one
    safetensors file or a sharded set's index) and the model card."""
    try:
        other_family = is_transformers_folder(folder)
    except ValueError:  # an unreadable config.json: publish checks molmini's files, and names the broken one
        other_family = False
    if not other_family:
        return list(PUBLISHED_FILES)
    weights = "model.safetensors.index.json" if (folder / "model.safetensors.index.json").is_file() else "model.safetensors"
    return ["config.json", weights, "README.md"]


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload molmini checkpoint") -> str:
    """Upload a checkpoint folder as is (weights, tokenizer, processor config, model card) to the hub model
    repository `repo_id`, creating it if needed; returns the commit URL. HF_ENDPOINT picks another hub."""
    from huggingface_hub import HfApi
    folder = Path(folder)
    missing = [n for n in published_files(folder) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: push the checkpoint folder a training run wrote "
                                "(runs/NAME/checkpoint) or one saved with model.save_pretrained (a folder saved "
                                "before molmini wrote the transformers files: MolminiModel.from_pretrained(folder)"
                                ".save_pretrained(folder) adds them)")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def evaluation_table(eval_results: dict[str, Any]) -> list[str]:
    """The model card's section of held-out scores per question type beside the majority baseline."""
    def row(name: str, r: dict[str, Any]) -> str:
        return f"| {name} | {r['n']} | {100 * r['relaxed_accuracy']:.1f} | {100 * r['majority_baseline']:.1f} |"
    return [f"## Evaluation on {eval_results['benchmark']}\n",
            "| question type | items | relaxed accuracy | majority baseline |\n|---|---|---|---|",
            *(row(name, r) for name, r in eval_results["per_type"].items()),
            row("overall", eval_results["overall"]) + "\n"]


def write_model_card(folder: Path, model: Any, eval_results: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None) -> None:
    """README.md with YAML front matter (and a model-index block when there are evaluation results)."""
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    base_models = [m for m in (cfg.vision.pretrained and cfg.vision.model_name, cfg.lm.name_or_path) if m]
    meta: dict[str, Any] = {"library_name": "molmini", "license": "apache-2.0",
                            "tags": ["molmini", "vision-language", "image-text-to-text", "custom_code"],
                            "pipeline_tag": "image-text-to-text"}
    if base_models:
        meta["base_model"] = base_models
    if training and training.get("datasets"):
        meta["datasets"] = training["datasets"]
    lines = [f"# molmini model\n", f"A molmini vision-language model with {n_params / 1e6:.1f}M parameters: "
             f"open_clip tower `{cfg.vision.model_name}` ({'pretrained ' + cfg.vision.pretrained if cfg.vision.pretrained else 'random init'}), "
             f"connector `{cfg.connector.kind}`, language model "
             f"`{cfg.lm.name_or_path or cfg.lm.config.get('model_type', '?')}` "
             f"({'pretrained' if cfg.lm.name_or_path else 'random init'}).\n",
             USAGE]
    if eval_results:
        meta["model-index"] = [{"name": folder.name, "results": [{
            "task": {"type": "visual-question-answering"},
            "dataset": {"name": eval_results["benchmark"], "type": eval_results["benchmark"]},
            "metrics": [{"type": "relaxed_accuracy", "value": round(100 * eval_results["overall"]["relaxed_accuracy"], 2)},
                        {"type": "exact_match", "value": round(100 * eval_results["overall"]["exact_match"], 2)}]}]}]
        lines += evaluation_table(eval_results)
    if training:
        lines.append("## Training cost\n")
        for k in ("steps", "samples", "wall_time_s", "total_wall_time_s", "device", "num_processes", "gpu",
                  "gpu_hours", "energy_kwh"):
            if k in training and (training[k] is not None or k == "energy_kwh"):
                value = training[k]
                lines.append(f"- {k}: {'not measured (no NVML)' if value is None and k == 'energy_kwh' else value}")
        lines.append("")
    front = yaml.safe_dump(meta, sort_keys=False)
    (folder / "README.md").write_text(f"---\n{front}---\n\n" + "\n".join(lines))
