"""Tiny stand-ins for the pretrained presets' backbones, saved to local folders and files so the real
loading code (open_clip `pretrained=path`, transformers `from_pretrained(folder)`) runs offline."""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from tests.helpers import corpus


def _tiny_siglip(patch_size: int, img_size: int, **kwargs) -> VisionTransformer:
    # the architecture of timm's vit_*_siglip_* (no class token, MAP head), at a test's size
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
    return VisionTransformer(**{"img_size": img_size, "patch_size": patch_size, "embed_dim": 32, "depth": 4,
                                "num_heads": 2, "class_token": False, "global_pool": "map", **kwargs})


@register_model
def vit_molmini_test_siglip_p16(pretrained=False, **kwargs):
    return _tiny_siglip(16, 32, **kwargs)


@register_model
def vit_molmini_test_siglip_p14(pretrained=False, **kwargs):
    return _tiny_siglip(14, 42, **kwargs)


# vision_cfg overrides that shrink each preset's tower while keeping its kind (timm-backed or open_clip's own)
TINY_TOWERS = {
    "ViT-B-16-SigLIP": {"timm_model_name": "vit_molmini_test_siglip_p16", "image_size": 32},
    "ViT-SO400M-14-SigLIP-384": {"timm_model_name": "vit_molmini_test_siglip_p14", "image_size": 42},
    "ViT-L-14-336": {"image_size": 56, "layers": 4, "width": 32, "head_width": 16},
}

CHAT_TEMPLATES = {  # the structure of the real templates (system prompt, ChatML turns)
    "llama": ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
              "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "qwen2": ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
              "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
              "{%- endif %}{%- for message in messages %}{%- if message.role != 'system' or not loop.first %}"
              "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}"
              "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"),
}
LM_TYPES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "llama", "Qwen/Qwen2.5-0.5B-Instruct": "qwen2",
            "Qwen/Qwen2.5-1.5B-Instruct": "qwen2"}


def save_tiny_tower(model_name: str, path: Path) -> Path:
    """A randomly initialised tiny open_clip model of `model_name`'s kind, saved as safetensors."""
    torch.manual_seed(1)
    clip = open_clip.create_model(model_name, vision_cfg={**open_clip.get_model_config(model_name)["vision_cfg"],
                                                          **TINY_TOWERS[model_name]})
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


def save_tiny_lm(model_type: str, folder: Path) -> Path:
    """A tiny causal LM of `model_type` with a ChatML tokenizer and chat template, saved like a hub repo."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(corpus() + ["system user assistant You are a helpful"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    pad = "<|endoftext|>" if model_type == "qwen2" else "<|im_end|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token=pad)
    tokenizer.chat_template = CHAT_TEMPLATES[model_type]
    torch.manual_seed(2)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                  max_position_embeddings=4096, tie_word_embeddings=True,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def stand_in_overrides(preset: str, tmp: Path) -> list[str]:
    """Config overrides that point `preset` at tiny local backbones of the same kinds."""
    from molmini.config.presets import PRESETS
    p = PRESETS[preset]
    tower = p["vision"]["model_name"]
    weights = save_tiny_tower(tower, tmp / f"{tower}.safetensors")
    lm = save_tiny_lm(LM_TYPES[p["lm"]["name_or_path"]], tmp / "lm")
    cfg = ", ".join(f"{k}: {v}" for k, v in TINY_TOWERS[tower].items())
    return [f"model.preset={preset}", f"model.vision.pretrained={weights}", f"model.vision.vision_cfg={{{cfg}}}",
            f"model.lm.name_or_path={lm}"]
