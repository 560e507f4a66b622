"""molmini and transformers' LlavaForConditionalGeneration at equal shape, for the throughput benchmarks.

Both are built from configs alone (random init, nothing downloaded): the same vision tower shape (an
open_clip ViT for molmini, CLIPVisionModel or SiglipVisionModel for LLaVA), the same Llama LM (width,
depth, heads, vocabulary, tied embeddings). LLaVA feeds every patch to the LM through a 2-layer GELU MLP;
molmini's `mlp` connector does the same (plus its row-end and image start/end tokens), its
`attention_pool_2x2` a quarter of them. Batches carry random images and random text, with labels on the
last `answer_tokens` text tokens only (the answers; about 13% of molmini's pooled sequence).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from molmini.config import load_config  # noqa: E402
from molmini.data.tokenizer import SPECIAL_TOKENS  # noqa: E402
from molmini.model.loss import IGNORE_INDEX  # noqa: E402
from molmini.train.summary import stand_in_tokenizer  # noqa: E402

CONNECTORS = ("attention_pool_2x2", "mlp")
PEER = "llava"


@dataclass(frozen=True)
class Shape:
    """One benchmark geometry. `vision` is open_clip's vision_cfg (empty: the named model's own); `lm` the
    Llama fields; `gen_*` the generation benchmark's prompt text, new tokens and batch sizes."""
    name: str
    vision_model: str
    vision: dict
    lm: dict
    vocab: int
    text_tokens: int
    answer_tokens: int
    batch: int
    gen_prompt_tokens: int
    gen_new_tokens: int
    gen_batches: tuple[int, ...]

    @property
    def siglip(self) -> bool:
        return "SigLIP" in self.vision_model


def _llama(width: int, layers: int, heads: int, kv_heads: int, mlp: int) -> dict:
    return dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                intermediate_size=mlp)


SHAPES = {
    # the test suite's and the GPU suite's dry run: seconds on one core
    "tiny": Shape("tiny", "molmini-vit", dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
                  _llama(64, 2, 2, 2, 128), vocab=300, text_tokens=24, answer_tokens=4, batch=4,
                  gen_prompt_tokens=8, gen_new_tokens=4, gen_batches=(1, 4)),
    # configs/default.yaml's model at its training batch
    "S1": Shape("S1", "molmini-vit", dict(image_size=128, patch_size=16, width=192, layers=4, head_width=48),
                _llama(192, 4, 4, 4, 512), vocab=1024, text_tokens=70, answer_tokens=12, batch=32,
                gen_prompt_tokens=58, gen_new_tokens=16, gen_batches=(1, 16)),
    "S2": Shape("S2", "molmini-vit", dict(image_size=224, patch_size=16, width=384, layers=6, head_width=64),
                _llama(576, 8, 9, 3, 1536), vocab=49152, text_tokens=64, answer_tokens=16, batch=8,
                gen_prompt_tokens=48, gen_new_tokens=16, gen_batches=(1, 16)),
    # ../shared/reference/peer_throughput.md: SigLIP-B/16 at 224 px + an LM shaped like SmolLM2-135M
    "H100": Shape("H100", "ViT-B-16-SigLIP", {}, _llama(576, 30, 9, 3, 1536), vocab=49152, text_tokens=128,
                  answer_tokens=24, batch=64, gen_prompt_tokens=32, gen_new_tokens=32, gen_batches=(1, 64)),
}


def parse_connectors(arg: str) -> tuple[str, ...]:
    """--connector: one of CONNECTORS, or "both"."""
    connectors = CONNECTORS if arg == "both" else (arg,)
    if any(k not in CONNECTORS for k in connectors):
        raise ValueError(f"--connector {arg!r} is unknown; choose attention_pool_2x2, mlp or both")
    return connectors


def get_shape(name: str) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"--shape {name!r} is unknown; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


def shape_dict(shape: Shape) -> dict[str, Any]:
    return asdict(shape)


def build_molmini(shape: Shape, connector: str):
    """molmini's MolminiModel at `shape` with the given connector, in training mode."""
    from molmini.model.vlm import MolminiModel
    if connector not in CONNECTORS:
        raise ValueError(f"--connector {connector!r} is unknown; choose from {', '.join(CONNECTORS)}")
    lm = {"model_type": "llama", **shape.lm, "max_position_embeddings": 2048, "tie_word_embeddings": True}
    overrides = [f"model.vision.model_name={shape.vision_model}", f"model.connector.kind={connector}",
                 f"model.lm.config={lm}", f"model.tokenizer.vocab_size={shape.vocab}"]
    if shape.vision:
        overrides.append(f"model.vision.vision_cfg={shape.vision}")
    cfg = load_config(None, overrides)
    return MolminiModel(cfg.model, stand_in_tokenizer(shape.vocab), max_length=2048).train()


def build_llava(shape: Shape):
    """transformers' LlavaForConditionalGeneration at `shape`: CLIP (SigLIP-B/16 at 224 px for the H100 shape)
    tower of the same width, depth and patching, the same Llama LM, image token = the last id of the vocabulary."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              SiglipVisionConfig)
    image_size, patch_size = (224, 16) if shape.siglip else (shape.vision["image_size"], shape.vision["patch_size"])
    if shape.siglip:  # SigLIP-B/16: 768 wide, 12 layers, 12 heads, MLP 3072, no CLS token; no pooling head
        vision = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, image_size=image_size, patch_size=patch_size,
                                    vision_use_head=False)  # LLaVA uses the patch features only
    else:
        width = shape.vision["width"]
        vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width,
                                  num_hidden_layers=shape.vision["layers"],
                                  num_attention_heads=width // shape.vision["head_width"], image_size=image_size,
                                  patch_size=patch_size, projection_dim=width)
    text = LlamaConfig(**shape.lm, vocab_size=shape.vocab, max_position_embeddings=2048, tie_word_embeddings=True,
                       pad_token_id=0, eos_token_id=3)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=shape.vocab - 1,
                         vision_feature_layer=-1, tie_word_embeddings=True,
                         # CLIP's first token is CLS (dropped, as LLaVA-1.5 does); SigLIP has none
                         vision_feature_select_strategy="full" if shape.siglip else "default")
    config._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(config).train()


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a tied weight once


def random_images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _text(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    # ordinary words only: past molmini's special tokens, below LLaVA's image token
    return rng.integers(len(SPECIAL_TOKENS), vocab - 1, n).tolist()


def molmini_batch(model, shape: Shape, batch: int, seed: int = 0, prompt_only: bool = False) -> dict[str, Any]:
    """A collated batch through the model's processor: image layout tokens, then text; for training, labels
    on the last `answer_tokens`; for generation (`prompt_only`), `gen_prompt_tokens` of text, left-padded."""
    proc, rng = model.processor, np.random.default_rng(seed)
    samples = []
    for image in random_images(batch, proc.config.image_size, seed):
        processed = proc.process_image(image)
        text = _text(rng, shape.gen_prompt_tokens if prompt_only else shape.text_tokens, shape.vocab)
        ids = processed["image_tokens"] + text
        sample = {"input_ids": ids, **proc.stack_images([processed])}
        if not prompt_only:
            sample["labels"] = [IGNORE_INDEX] * (len(ids) - shape.answer_tokens) + text[-shape.answer_tokens:]
        samples.append(sample)
    out = proc.collate(samples, padding_side="left" if prompt_only else "right")
    out.pop("keys")
    return out


def llava_batch(model, shape: Shape, batch: int, seed: int = 0, prompt_only: bool = False) -> dict[str, Any]:
    """LLaVA's inputs: one image token per patch feature, then the same amount of text and labels."""
    vision = model.config.vision_config
    size, patch = vision.image_size, vision.patch_size
    image_tokens = (size // patch) ** 2
    rng = np.random.default_rng(seed)
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in random_images(batch, size, seed)])
    mean = torch.tensor([0.5, 0.5, 0.5] if shape.siglip else [0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.5] if shape.siglip else [0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
    n_text = shape.gen_prompt_tokens if prompt_only else shape.text_tokens
    ids, labels = [], []
    for _ in range(batch):
        text = _text(rng, n_text, shape.vocab)
        ids.append([model.config.image_token_index] * image_tokens + text)
        labels.append([IGNORE_INDEX] * (image_tokens + n_text - shape.answer_tokens) + text[-shape.answer_tokens:])
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(batch, image_tokens + n_text, dtype=torch.long),
           "pixel_values": (pixels.float() / 255 - mean) / std}
    if not prompt_only:
        out["labels"] = torch.tensor(labels)
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---- FLOPs ------------------------------------------------------------------------------------------------

def _vision_tokens(shape: Shape, image_size: int, patch_size: int) -> int:
    return (image_size // patch_size) ** 2 + (0 if shape.siglip else 1)  # CLIP towers add a CLS token


def flops_per_sample(parts: dict[str, tuple[int, int]], attention: list[tuple[int, int, int, bool]]) -> float:
    """Training FLOPs of one sample as ../shared/reference/peer_throughput.md counts them (its MFU column is
    reproduced by this): 6 x parameters x tokens through them, for each part (vision tower, connector, LM with
    its tied head), plus attention's score and value products, 12 x layers x tokens^2 x width forward and
    backward, halved for causal attention. parts: name -> (parameters, tokens); attention: (layers, tokens,
    width, causal). The same definition for both models, so MFU ratios are throughput ratios at equal tokens."""
    dense = sum(6.0 * n * t for n, t in parts.values())
    attn = sum(12.0 * layers * t * t * width / (2 if causal else 1) for layers, t, width, causal in attention)
    return dense + attn


def molmini_flops(model, shape: Shape, lm_tokens: int, image_tokens: int) -> float:
    vision = model.vision
    v_tokens = _vision_tokens(shape, vision.image_size, vision.patch_size)
    v_width = vision.output_dim // len(vision.layers)
    v_layers = max(vision.layers) + 1  # blocks past the last feature layer are pruned
    return flops_per_sample(
        {"vision": (count_params(vision), v_tokens), "connector": (count_params(model.connector), image_tokens),
         "lm": (count_params(model.lm), lm_tokens)},
        [(v_layers, v_tokens, v_width, False),
         (shape.lm["num_hidden_layers"], lm_tokens, shape.lm["hidden_size"], True)])


def llava_flops(model, shape: Shape, lm_tokens: int, image_tokens: int) -> float:
    vc = model.config.vision_config
    v_tokens = _vision_tokens(shape, vc.image_size, vc.patch_size)
    inner = model.model
    return flops_per_sample(
        {"vision": (count_params(inner.vision_tower), v_tokens),
         "connector": (count_params(inner.multi_modal_projector), image_tokens),
         "lm": (count_params(inner.language_model) + (0 if model.config.tie_word_embeddings
                                                     else model.lm_head.weight.numel()), lm_tokens)},
        [(vc.num_hidden_layers, v_tokens, vc.hidden_size, False),
         (shape.lm["num_hidden_layers"], lm_tokens, shape.lm["hidden_size"], True)])
