"""molmini checkpoints in transformers' Auto classes (molmini/auto/classes.py): a saved checkpoint loads with
AutoConfig, AutoModelForImageTextToText and AutoProcessor, through its thin remote-code files in a fresh process
(trust_remote_code=True) and through the registration `import molmini.auto.classes` does, and the processor ->
generate -> batch_decode path gives exactly the tokens and text `MolminiModel.generate` gives on a batch of
differently sized images (so left padding is exercised)."""
from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from PIL import Image, ImageDraw

from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, tiny_config, trained_checkpoint
from tests.helpers.hub_server import run_as_a_user

PROMPTS = ["What colour are the bars?", "How many bars are there?", "colour?"]
SIZES = [(32, 32), (80, 30), (24, 72)]  # with max_crops=2: different crop grids, so different prompt lengths
MAX_NEW_TOKENS = 5


def chart(size: tuple[int, int], colour: str, bars: int) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i in range(bars):
        draw.rectangle([2 + i * 6, size[1] - 4 - 5 * (i + 1), 6 + i * 6, size[1] - 2], fill=colour)
    return image


IMAGES = [chart(size, colour, bars) for size, colour, bars in zip(SIZES, ["red", "blue", "green"], [1, 3, 2])]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny molmini model, trained a few steps so greedy answers are words, not near-ties, saved once."""
    return trained_checkpoint(tiny_config("model.image.max_crops=2").model, tokenizer,
                              tmp_path_factory.mktemp("auto") / "ckpt")


@pytest.fixture(scope="module")
def expected(checkpoint):
    """What molmini's own generate gives: new token ids per prompt (pad after the stop) and the answers."""
    model = MolminiModel.from_pretrained(checkpoint)
    batch = model.processor.prompt_batch(IMAGES, PROMPTS)
    keys = ("input_ids", "attention_mask", "pixel_values", "pad_fraction", "pool_index")
    new = model.generate_ids(**{k: batch[k] for k in keys}, max_new_tokens=MAX_NEW_TOKENS)
    answers = model.generate(IMAGES, PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1  # prompts of several lengths: padding is exercised
    assert any(answer for answer in answers)  # the comparison is not between empty answers
    return {"prompt_ids": batch["input_ids"].tolist(), "new_ids": new.tolist(), "answers": answers}


# The user's side, in a fresh process: transformers only, the way lmms-eval or a model card's snippet loads it.
THROUGH_REMOTE_CODE = """
import json, sys
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
folder, image_paths, prompts, max_new_tokens = json.loads(sys.argv[1])
assert "molmini.auto.classes" not in sys.modules
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                                       add_generation_prompt=True) for p in prompts]
inputs = processor(images=[Image.open(p) for p in image_paths], text=texts, return_tensors="pt", padding=True)
out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
prompt_length = inputs["input_ids"].shape[1]
# the first file imported (the config's) registers all three classes; the other two files resolve to them
from transformers.dynamic_module_utils import get_class_from_dynamic_module
auto_classes = [("AutoConfig", config), ("AutoModelForImageTextToText", model), ("AutoProcessor", processor)]
each_file = [get_class_from_dynamic_module(config.auto_map[auto], folder) is type(loaded)
             for auto, loaded in auto_classes]
answers = [a.strip() for a in processor.batch_decode(out[:, prompt_length:], skip_special_tokens=True)]
print(json.dumps({"config": type(config).__name__, "model_type": config.model_type, "model": type(model).__name__,
                  "processor": type(processor).__name__, "prompt_ids": inputs["input_ids"].tolist(),
                  "new_ids": out[:, prompt_length:].tolist(), "prompt_echoed": out[:, :prompt_length].tolist(),
                  "answers": answers,
                  "remote_modules": sorted(m for m in sys.modules if m.startswith("transformers_modules")),
                  "each_file_names_the_loaded_class": each_file}))
"""


@pytest.mark.parametrize("source", ["folder", "hub id"])
def test_a_fresh_process_loads_it_with_trust_remote_code_and_generates_what_molmini_does(checkpoint, expected,
                                                                                          source, tmp_path):
    got = run_as_a_user(sys.executable, THROUGH_REMOTE_CODE, checkpoint, source, IMAGES, tmp_path, PROMPTS,
                        MAX_NEW_TOKENS)
    assert (got["config"], got["model_type"], got["model"], got["processor"]) == (
        "MolminiConfig", "molmini", "MolminiForConditionalGeneration", "MolminiTransformersProcessor")
    # the classes came through the checkpoint's own remote-code files, copied into the modules cache
    assert {m.rsplit(".", 1)[-1] for m in got["remote_modules"]} >= {
        "configuration_molmini", "modeling_molmini", "processing_molmini"}
    assert got["each_file_names_the_loaded_class"] == [True, True, True]
    assert got["prompt_ids"] == got["prompt_echoed"] == expected["prompt_ids"]  # generate returns prompt + new
    assert got["new_ids"] == expected["new_ids"]
    assert got["answers"] == expected["answers"]


def test_importing_molmini_hf_auto_registers_the_auto_classes(checkpoint, expected):
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    import molmini.auto.classes as hf_auto

    config = AutoConfig.from_pretrained(checkpoint)  # no trust_remote_code: the registered classes
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert type(config) is hf_auto.MolminiConfig and config.model["image"]["max_crops"] == 2
    assert type(model) is hf_auto.MolminiForConditionalGeneration and not model.training
    assert type(processor) is hf_auto.MolminiTransformersProcessor
    # AutoModel too: tools load a model_type they do not know with it (lmms-eval's "huggingface" model)
    assert type(AutoModel.from_pretrained(checkpoint)) is hf_auto.MolminiForConditionalGeneration
    assert not any(m.startswith("transformers_modules") for m in sys.modules)
    # a checkpoint inside a folder, named the way transformers names one (subfolder=)
    inside = AutoModelForImageTextToText.from_pretrained(checkpoint.parent, subfolder=checkpoint.name)
    assert all(torch.equal(a, b) for a, b in zip(inside.parameters(), model.parameters(), strict=True))
    assert AutoProcessor.from_pretrained(checkpoint.parent, subfolder=checkpoint.name).config == processor.config
    with pytest.raises(FileNotFoundError, match="nope/config.json is missing"):
        hf_auto.MolminiForConditionalGeneration.from_pretrained(checkpoint.parent, subfolder="nope")
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                               "text": p}]}])
             for p in PROMPTS]
    inputs = processor(images=IMAGES, text=texts, return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    new = out[:, inputs["input_ids"].shape[1]:]
    assert new.tolist() == expected["new_ids"]
    assert [a.strip() for a in processor.batch_decode(new, skip_special_tokens=True)] == expected["answers"]
    # a bare question is laid out in the chat format: the same ids as the rendered prompt
    assert torch.equal(processor(images=IMAGES, text=PROMPTS)["input_ids"], inputs["input_ids"])
    # forward is molmini's, as a transformers output with the loss over the answer tokens
    molmini_model = MolminiModel.from_pretrained(checkpoint)
    batch = molmini_model.processor.collate([molmini_model.processor.process_record(r) for r in make_records(2)])
    batch.pop("keys")
    with torch.no_grad():
        ours, theirs = molmini_model(**batch), model(**batch)
    assert torch.equal(ours["logits"], theirs.logits) and torch.equal(ours["loss"], theirs.loss)


def test_molmini_s_own_transformers_adapter_drives_the_checkpoint_like_its_molmini_adapter(checkpoint, expected):
    import molmini.auto.classes  # noqa: F401  (registers; HFVisionLanguageAdapter passes no trust_remote_code)
    from eval.models import HFVisionLanguageAdapter, MolminiAdapter, build_adapter

    adapter = build_adapter(str(checkpoint), batch_size=3)
    assert isinstance(adapter, MolminiAdapter)  # model_type "molmini" is molmini's, not another family's
    assert adapter.generate(IMAGES, PROMPTS, MAX_NEW_TOKENS) == expected["answers"]
    generic = build_adapter(f"hf:{checkpoint}", batch_size=3)
    assert isinstance(generic, HFVisionLanguageAdapter)
    assert generic.generate(IMAGES, PROMPTS, MAX_NEW_TOKENS) == expected["answers"]


def test_the_folder_names_model_type_and_auto_map_and_old_checkpoints_still_load(checkpoint, tmp_path):
    from eval.models import is_hf_folder
    from molmini.hub.checkpoint_files import REMOTE_CODE_FILES
    from molmini.hub.publish import push_folder

    saved = json.loads((checkpoint / "config.json").read_text())
    assert saved["model_type"] == "molmini" and saved["architectures"] == ["MolminiForConditionalGeneration"]
    assert saved["auto_map"]["AutoModelForImageTextToText"] == "modeling_molmini.MolminiForConditionalGeneration"
    assert "transformers_version" in saved and saved["dtype"] == "float32"
    processor_config = json.loads((checkpoint / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_molmini.MolminiTransformersProcessor"}
    for name in REMOTE_CODE_FILES:  # self-contained (an open_clip ViT tower): tests/auto/test_standalone.py
        assert not re.search(r"^\s*(from|import) molmini", (checkpoint / name).read_text(), re.MULTILINE)
    assert "trust_remote_code=True" in (checkpoint / "README.md").read_text()
    # a folder saved before molmini wrote these: molmini still loads it, the evaluation still routes it to
    # MolminiAdapter, and publishing it asks for the files transformers needs
    old = tmp_path / "old"
    old.mkdir()
    for path in checkpoint.iterdir():
        if path.name not in REMOTE_CODE_FILES:
            (old / path.name).write_bytes(path.read_bytes())
    (old / "config.json").write_text(json.dumps({"model": saved["model"], "lm_config": saved["lm_config"]}))
    batch = make_records(1)[0]
    a, b = MolminiModel.from_pretrained(checkpoint), MolminiModel.from_pretrained(old)
    inputs = a.processor.collate([a.processor.process_record(batch)])
    with torch.no_grad():
        assert torch.equal(a(**inputs)["logits"], b(**inputs)["logits"])
    assert not is_hf_folder(str(old)) and not is_hf_folder(str(checkpoint))
    other = tmp_path / "llava"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert is_hf_folder(str(other))
    with pytest.raises(FileNotFoundError, match="modeling_molmini.py"):
        push_folder(old, "alice/old-model")


def test_saving_through_the_wrapper_writes_a_molmini_checkpoint_and_bad_loading_options_are_named(checkpoint,
                                                                                                  tmp_path):
    from molmini.auto.classes import MolminiForConditionalGeneration

    model = MolminiForConditionalGeneration.from_pretrained(checkpoint, dtype="auto", device_map={"": "cpu"})
    resaved = model.save_pretrained(tmp_path / "resaved")
    assert json.loads((resaved / "config.json").read_text())["auto_map"]
    again = MolminiForConditionalGeneration.from_pretrained(resaved, torch_dtype="bfloat16")
    assert again.dtype == torch.bfloat16 and again.model.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="one device"):
        MolminiForConditionalGeneration.from_pretrained(checkpoint, device_map={"vision": "cpu", "lm": "cuda:0"})
    with pytest.raises(ValueError, match="load_in_8bit"):
        MolminiForConditionalGeneration.from_pretrained(checkpoint, load_in_8bit=True)
    with pytest.raises(ValueError, match="from_pretrained"):
        MolminiForConditionalGeneration(model.config)


def test_the_processor_follows_conversations_and_names_what_it_cannot_take(checkpoint, tmp_path):
    from molmini.auto.classes import MolminiTransformersProcessor

    processor = MolminiTransformersProcessor.from_pretrained(checkpoint)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many bars?"}]},
                    {"role": "assistant", "content": "3"},
                    {"role": "user", "content": "What colour are the bars?"}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert processor.split_prompt(text) == ("What colour are the bars?", [
        {"role": "user", "content": "<image>How many bars?"}, {"role": "assistant", "content": "3"}], "")
    history = [{"role": "user", "content": "How many bars?"}, {"role": "assistant", "content": "3"}]
    assert processor(images=IMAGES[0], text=text)["input_ids"][0].tolist() == processor.encode_prompt(
        "What colour are the bars?", [processor.process_image(IMAGES[0])], history)
    # tokenize=True takes the images from the parts
    with_image = [{"role": "user", "content": [{"type": "image", "image": IMAGES[1]}, {"type": "text", "text": "x"}]}]
    assert torch.equal(processor.apply_chat_template(with_image, tokenize=True)["input_ids"],
                       processor(images=[IMAGES[1]], text=["x"])["input_ids"])
    with pytest.raises(ValueError, match="role 'system'"):
        processor.apply_chat_template([{"role": "system", "content": "Be brief."}])
    # a flat list of images is split by the prompts' markers (lmms-eval passes one flat list per batch)
    two = "<image><image>Which is taller?"
    flat = processor(images=IMAGES, text=[two, PROMPTS[0]])
    nested = processor(images=[IMAGES[:2], [IMAGES[2]]], text=[two, PROMPTS[0]])
    assert all(torch.equal(flat[k], nested[k]) for k in nested)
    with pytest.raises(ValueError, match="do not split"):
        processor(images=IMAGES[:2], text=PROMPTS)
    # a text-only prompt (images=None), and images given as file paths
    assert processor(text="Hello?")["input_ids"][0].tolist() == processor.process_prompt(None, "Hello?")["input_ids"]
    path = tmp_path / "chart.png"
    IMAGES[2].save(path)
    assert torch.equal(processor(images=[str(path)], text=["x"])["pixel_values"],
                       processor(images=[IMAGES[2]], text=["x"])["pixel_values"])
    with pytest.raises(ValueError, match="videos"):
        processor(images=IMAGES, text=PROMPTS, videos=["clip.mp4"])
    with pytest.raises(ValueError, match="return_tensors='np'"):
        processor(images=IMAGES, text=PROMPTS, return_tensors="np")


def test_the_names_a_checkpoint_writes_are_the_classes_that_load_it():
    from molmini.auto.classes import MolminiConfig, MolminiForConditionalGeneration
    from molmini.auto.processor import MolminiTransformersProcessor
    from molmini.hub import checkpoint_files as hf_files
    assert hf_files.ARCHITECTURE == MolminiForConditionalGeneration.__name__
    assert hf_files.PROCESSOR_CLASS == MolminiTransformersProcessor.__name__
    assert hf_files.MODEL_TYPE == MolminiConfig.model_type
    for entry in hf_files.MODEL_AUTO_MAP.values():
        module, cls = entry.split(".")
        assert (hf_files.REMOTE_CODE_DIR / f"{module}.py").is_file() and cls in (
            MolminiConfig.__name__, MolminiForConditionalGeneration.__name__, MolminiTransformersProcessor.__name__)


def test_the_name_published_checkpoints_import_is_the_auto_classes_module():
    """Checkpoints already published carry remote-code files that say `from molmini.hf_auto import ...`: that
    name stays the module that registers molmini with the Auto classes, and new checkpoints of towers without a
    plain-torch twin carry it too (tests/auto/test_standalone.py)."""
    import molmini.auto.classes as classes
    import molmini.hf_auto
    from molmini.hf_auto import MolminiConfig, MolminiForConditionalGeneration, MolminiTransformersProcessor
    from molmini.hub.checkpoint_files import REMOTE_CODE_DIR, REMOTE_CODE_FILES
    assert molmini.hf_auto is classes
    assert (MolminiConfig, MolminiForConditionalGeneration, MolminiTransformersProcessor) == (
        classes.MolminiConfig, classes.MolminiForConditionalGeneration, classes.MolminiTransformersProcessor)
    for name in REMOTE_CODE_FILES:
        assert "from molmini.hf_auto import" in (REMOTE_CODE_DIR / name).read_text()
