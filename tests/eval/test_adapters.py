"""HFVisionLanguageAdapter on every family the evaluation suite names, each a tiny random model loaded
through the real AutoModelForImageTextToText / AutoProcessor path (tests/helpers/hf_tiny_vlms.py): a batch of
images of different sizes with different prompts, left-padded, answers the same as one item at a time."""
from __future__ import annotations

import importlib.util

import pytest
from PIL import Image, ImageDraw

from eval.models import HFVisionLanguageAdapter, build_adapter
from tests.helpers.hf_tiny_vlms import TINY_VLMS, save_tiny_llava, save_tiny_vlm

FAMILIES = ["llava", *TINY_VLMS]
NEEDS = {"smolvlm": "num2words"}  # SmolVLMProcessor refuses to start without it (it spells video frame counts)


def chart(size: tuple[int, int], colour: str) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle([2, size[1] // 2, size[0] // 2, size[1] - 2], fill=colour)
    return image


IMAGES = [chart((32, 32), "red"), chart((60, 40), "blue"), chart((28, 70), "green")]
PROMPTS = ["What colour are the bars?", "How many bars are there in this chart?", "Title?"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer):
    """family -> adapter, each model saved once per module and loaded on first use."""
    root, loaded = tmp_path_factory.mktemp("hf_vlms"), {}

    def load(family: str) -> HFVisionLanguageAdapter:
        if family in NEEDS and importlib.util.find_spec(NEEDS[family]) is None:
            pytest.skip(f"{family}'s processor needs the {NEEDS[family]} package (pip install {NEEDS[family]})")
        if family not in loaded:
            folder = root / f"tiny_{family}"
            save_tiny_llava(folder, tokenizer) if family == "llava" else save_tiny_vlm(family, folder)
            loaded[family] = build_adapter(f"hf:{folder}", batch_size=len(PROMPTS))
        return loaded[family]
    return load


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_answers_equal_one_at_a_time(adapters, family):
    adapter = adapters(family)
    assert isinstance(adapter, HFVisionLanguageAdapter) and adapter.kind == "baseline"
    assert adapter.num_parameters == sum(p.numel() for p in adapter.model.parameters()) > 10_000
    assert adapter.processor.tokenizer.padding_side == "left"

    batched = adapter.generate(IMAGES, PROMPTS, max_new_tokens=5)
    assert len(batched) == len(PROMPTS) and all(isinstance(a, str) for a in batched)
    assert batched == [adapter.generate([image], [prompt], max_new_tokens=5)[0]
                       for image, prompt in zip(IMAGES, PROMPTS)]
    assert len(set(batched)) > 1      # answers follow the input (the models are drawn with a wide init)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_reaches_the_model_and_prompt_is_decoded_away(adapters, family):
    adapter = adapters(family)
    same_prompt = adapter.generate(IMAGES, [PROMPTS[0]] * 3, max_new_tokens=5)
    assert len(set(same_prompt)) > 1  # only the images differ
    # the padded batch really is padded: the three prompts tokenise to different lengths
    texts = [adapter.format_prompt(p) for p in PROMPTS]
    inputs = adapter.processor(images=[[i] for i in IMAGES], text=texts, return_tensors="pt", padding=True)
    lengths = inputs["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1 and (inputs["attention_mask"][:, -1] == 1).all()


def test_prompt_formats(adapters):
    """A chat template wraps the prompt in one user turn with the image first; PaliGemma, which has none,
    gets its image token and the bare prompt (its processor adds <bos> and the closing newline)."""
    assert adapters("qwen2_vl").format_prompt("Q?") == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")
    assert adapters("idefics3").format_prompt("Q?") == "<|im_start|>User:<image>Q?<end_of_utterance>\nAssistant:"
    assert adapters("paligemma").format_prompt("Q?") == "<image>Q?"


class RecordingProcessor:
    """Forwards to a processor and keeps the `images` argument of every call."""
    def __init__(self, processor):
        self.processor, self.images = processor, []

    def __call__(self, images=None, **kwargs):
        self.images.append(images)
        return self.processor(images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


def test_each_prompt_gets_its_own_image_list(adapters):
    """SmolVLM's processor reads a flat list of three images as one sample's ("Found [1, 1, 1] <image>
    tokens and [3] images per sample"); one list per prompt is read right by every family."""
    adapter = adapters("idefics3")
    chat = adapter.model.processor  # molmini.model.transformers_vlm's, which calls the family's processor
    chat.processor = recorder = RecordingProcessor(chat.processor)
    try:
        adapter.generate(IMAGES, PROMPTS, max_new_tokens=1)
    finally:
        chat.processor = recorder.processor
    assert recorder.images == [[[image] for image in IMAGES]]
