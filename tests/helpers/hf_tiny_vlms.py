"""Tiny random transformers vision-language models, each saved with its processor into a folder that
AutoModelForImageTextToText and AutoProcessor load: built from their configs alone (no hub download).

    save_tiny_llava        LlavaForConditionalGeneration        tiny CLIP + Llama, LlavaProcessor
    save_tiny_qwen2_vl     Qwen2VLForConditionalGeneration      Qwen2VLProcessor, 28-56 px images
    save_tiny_qwen2_5_vl   Qwen2_5_VLForConditionalGeneration   Qwen2_5_VLProcessor, 28-56 px images
    save_tiny_idefics3     Idefics3ForConditionalGeneration     Idefics3Processor (SmolVLM v1 uses these)
    save_tiny_smolvlm      SmolVLMForConditionalGeneration      SmolVLMProcessor (SmolVLM2; needs num2words)
    save_tiny_paligemma    PaliGemmaForConditionalGeneration    tiny SigLIP + Gemma, no chat template
    save_tiny_molmo2       Molmo2ForConditionalGeneration       Molmo2Processor, 32 px crops, at most 2 + 1 per image

Each has hidden size 32 and one or two layers. Tokenizers are byte-level BPEs trained on the spot on the
test corpus, with the special tokens the family's processor looks for; chat templates are shaped like the
released ones. Weights are drawn with a wide initializer (INIT_RANGE) so that a random model's greedy
answer depends on its input: with the usual 0.02 every prompt decodes to the same tokens, and a test of
batching could not tell a padding bug from a correct answer.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.helpers import corpus

INIT_RANGE = 0.5
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=1024, initializer_range=INIT_RANGE)

QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-Instruct's template without its system turn and video branch
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

IDEFICS3_TOKENS = (["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                    "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)])
# Idefics3-8B-Llama3's (and SmolVLM's) template
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def tiny_tokenizer(special_tokens: list[str], pad: str, eos: str, bos: str | None = None, vocab_size: int = 300):
    """A byte-level BPE trained on the test corpus; `special_tokens` are single tokens never split."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, bos_token=bos)


def save_tiny_llava(folder, tokenizer) -> None:
    """A random LlavaForConditionalGeneration (tiny CLIP tower + tiny Llama) and its LlavaProcessor, on a copy
    of the molmini tokenizer given."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    # a copy: the session's molmini tokenizer must not gain the "<image>" token
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
                                  pad_token="<pad>", eos_token="<|end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
                         "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    # LLaVA-1.5 style: the CLS feature is dropped ("default"), so 16 image tokens per 32 px image
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=tok.chat_template).save_pretrained(folder)


# ---- Qwen2-VL and Qwen2.5-VL -----------------------------------------------------------------------------

def _qwen_text_config(tok) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    # M-RoPE splits each head's 16 dims / 2 rotary frequencies over (time, height, width)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return dict(TEXT, vocab_size=len(tok), rope_parameters=rope, bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def _qwen_token_ids(tok) -> dict:
    return dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def _save_qwen(folder, model_class, config, processor_class, image_processor_class, video_processor_class, tok) -> None:
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder)
    # 14 px patches merged 2x2: every image is resized to between 1 and 4 merged 28 px cells
    image_processor = image_processor_class(min_pixels=28 * 28, max_pixels=56 * 56)
    processor_class(image_processor=image_processor, tokenizer=tok, video_processor=video_processor_class(),
                    chat_template=QWEN_CHAT_TEMPLATE).save_pretrained(folder)


def save_tiny_qwen2_vl(folder) -> None:
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    tok = tiny_tokenizer(QWEN_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, initializer_range=INIT_RANGE)
    config = Qwen2VLConfig(vision_config=vision, text_config=_qwen_text_config(tok), **_qwen_token_ids(tok))
    _save_qwen(folder, Qwen2VLForConditionalGeneration, config, Qwen2VLProcessor, Qwen2VLImageProcessor,
               Qwen2VLVideoProcessor, tok)


def save_tiny_qwen2_5_vl(folder) -> None:
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = tiny_tokenizer(QWEN_TOKENS, pad="<|endoftext|>", eos="<|im_end|>")
    # window attention over 56 px windows (2x2 merged cells), full attention in the one block
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0],
                  initializer_range=INIT_RANGE)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text_config(tok), **_qwen_token_ids(tok))
    _save_qwen(folder, Qwen2_5_VLForConditionalGeneration, config, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
               Qwen2VLVideoProcessor, tok)


# ---- Idefics3 and SmolVLM --------------------------------------------------------------------------------

def _idefics3_like(config_class, tok):
    """SigLIP-style tower on 32 px tiles of 8 px patches: 16 patches, pixel-shuffled 2x2 into 4 tokens."""
    from transformers import LlamaConfig

    text = LlamaConfig(**TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8, initializer_range=INIT_RANGE)
    return config_class(vision_config=vision, text_config=text.to_dict(), scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)


# images up to 64 px on their longest edge, split into 32 px tiles plus the whole image at 32 px
IDEFICS3_IMAGES = dict(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True)


def save_tiny_idefics3(folder) -> None:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tok = tiny_tokenizer(IDEFICS3_TOKENS, pad="<|endoftext|>", eos="<end_of_utterance>")
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(_idefics3_like(Idefics3Config, tok)).save_pretrained(folder)
    Idefics3Processor(image_processor=Idefics3ImageProcessor(**IDEFICS3_IMAGES), tokenizer=tok, image_seq_len=4,
                      chat_template=IDEFICS3_CHAT_TEMPLATE).save_pretrained(folder)


def save_tiny_smolvlm(folder) -> None:
    from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor,
                              SmolVLMVideoProcessor)

    tok = tiny_tokenizer(IDEFICS3_TOKENS + ["<video>"], pad="<|endoftext|>", eos="<end_of_utterance>")
    torch.manual_seed(0)
    SmolVLMForConditionalGeneration(_idefics3_like(SmolVLMConfig, tok)).save_pretrained(folder)
    SmolVLMProcessor(image_processor=SmolVLMImageProcessor(**IDEFICS3_IMAGES), tokenizer=tok,
                     video_processor=SmolVLMVideoProcessor(), image_seq_len=4,
                     chat_template=IDEFICS3_CHAT_TEMPLATE).save_pretrained(folder)


# ---- PaliGemma -------------------------------------------------------------------------------------------

def save_tiny_paligemma(folder) -> None:
    """A 32 px SigLIP with 8 px patches: 16 image tokens, which the processor's image_seq_length must match.
    PaliGemma has no chat template; its processor writes `<image>*16 <bos> prompt \\n` itself."""
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    tok = tiny_tokenizer(["<pad>", "<eos>", "<bos>", "<image>"], pad="<pad>", eos="<eos>", bos="<bos>")
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # adds <loc>/<seg> tokens
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8, initializer_range=INIT_RANGE)
    text = GemmaConfig(**dict(TEXT, num_key_value_heads=1), head_dim=16, vocab_size=len(tok),
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=32,
                             hidden_size=32, vocab_size=len(tok), image_token_index=tok.convert_tokens_to_ids("<image>"),
                             pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    PaliGemmaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


# ---- Molmo2 ----------------------------------------------------------------------------------------------

# the tokens Molmo2Processor expands an image (or video) into; in the released checkpoints they live in the
# embedding's extra rows past the LM head's vocabulary (Molmo2TextConfig.additional_vocab_size), never predicted
MOLMO2_IMAGE_TOKENS = ["<im_start>", "<im_end>", "<im_patch>", "<im_col>", "<low_res_im_start>", "<|image|>",
                       "<im_low>", "<frame_start>", "<frame_end>", "<|video|>"]
# Molmo2-4B's template without its styles, subtitles and videos: the images before the first turn ("Image 1<|image|>
# Image 2<|image|>" when several), and an answer closed by the "<|im_end|>\n" that opens the next user turn
MOLMO2_CHAT_TEMPLATE = (
    "{% set n = namespace(images=0) %}{% for message in messages %}{% if message['content'] is not string %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{% set n.images = n.images + 1 %}"
    "{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if n.images == 1 %}<|image|>{% elif n.images > 1 %}{% for i in range(n.images) %}Image {{ i + 1 }}<|image|>"
    "{% endfor %}{% endif %}"
    "{% for message in messages %}{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set m = namespace(text='') %}{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}"
    "{% set m.text = m.text ~ ('' if not m.text else ' ') ~ content['text'] %}{% endif %}{% endfor %}"
    "{% set text = m.text %}{% endif %}"
    "{% if message['role'] == 'user' %}{% if not loop.first %}<|im_end|>\n{% endif %}"
    "<|im_start|>user\n{{ text }}<|im_end|>\n{% else %}<|im_start|>assistant\n{{ text }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_molmo2(folder) -> None:
    """A two-layer ViT on 32 px crops of 4 px patches, its last two layers' features pooled 2x2 by the
    attention adapter: each image is a 4x4-token low-res view and one or two overlapping high-res crops. The
    processor prepends the bos token (the eos, "<|im_end|>", as in the released tokenizers) to every text."""
    from transformers import (Molmo2Config, Molmo2ForConditionalGeneration, Molmo2ImageProcessor, Molmo2Processor,
                              Molmo2VideoProcessor)

    tok = tiny_tokenizer(QWEN_TOKENS[:3], pad="<|endoftext|>", eos="<|im_end|>")
    vocab_size = len(tok)
    tok.add_special_tokens({"additional_special_tokens": MOLMO2_IMAGE_TOKENS})
    ids = {t: tok.convert_tokens_to_ids(t) for t in MOLMO2_IMAGE_TOKENS}
    assert min(ids.values()) == vocab_size
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=16, image_size=[32, 32], patch_size=4, initializer_range=INIT_RANGE)
    adapter = dict(vision_feature_layer=[-1, -2], hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                   head_dim=16, intermediate_size=64, text_hidden_size=32, initializer_range=INIT_RANGE)
    text = dict(TEXT, head_dim=16, vocab_size=vocab_size, additional_vocab_size=len(MOLMO2_IMAGE_TOKENS),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Molmo2Config(vision_config=vision, adapter_config=adapter, text_config=text,
                          image_start_token_id=ids["<im_start>"], image_end_token_id=ids["<im_end>"],
                          low_res_image_start_token_id=ids["<low_res_im_start>"], image_patch_id=ids["<im_patch>"],
                          frame_start_token_id=ids["<frame_start>"], frame_end_token_id=ids["<frame_end>"],
                          initializer_range=INIT_RANGE)
    torch.manual_seed(0)
    Molmo2ForConditionalGeneration(config).save_pretrained(folder)
    # 32 px crops overlapping by one patch each side: a 32 px image is one crop, a long one two
    crops = dict(size={"height": 32, "width": 32}, patch_size=4, pooling_size=[2, 2])
    image_processor = Molmo2ImageProcessor(**crops, max_crops=2, overlap_margins=[1, 1])
    Molmo2Processor(image_processor=image_processor, video_processor=Molmo2VideoProcessor(**crops), tokenizer=tok,
                    chat_template=MOLMO2_CHAT_TEMPLATE).save_pretrained(folder)


TINY_VLMS = {"qwen2_vl": save_tiny_qwen2_vl, "qwen2_5_vl": save_tiny_qwen2_5_vl, "idefics3": save_tiny_idefics3,
             "smolvlm": save_tiny_smolvlm, "paligemma": save_tiny_paligemma, "molmo2": save_tiny_molmo2}


def save_tiny_vlm(family: str, folder: str | Path) -> Path:
    """Save the tiny model of `family` (a key of TINY_VLMS) into `folder`; returns the folder."""
    TINY_VLMS[family](folder)
    return Path(folder)
