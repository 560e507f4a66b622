"""Self-contained checkpoints (molmini/hub/standalone.py): the remote-code files save_pretrained writes are
molmini's own source and need only torch, transformers, safetensors, pillow and numpy. In a fresh environment
that has exactly those (tests/helpers/plain_env.py: no molmini, no open_clip, no timm), a checkpoint loads from
its folder and from a hub id with AutoModelForImageTextToText, AutoProcessor and pipeline("image-text-to-text"),
and answers exactly what MolminiModel.generate answers, batched and one at a time. A tower without a plain-torch
twin keeps the thin files, and saving it says that the checkpoint needs molmini."""
from __future__ import annotations

import inspect
import json
import logging
import re

import pytest
import torch

from molmini.hub.standalone import MODELING, PROCESSING, standalone_files
from molmini.hub.checkpoint_files import PLAIN_TOWER_KEY, REMOTE_CODE_FILES
from molmini.model.plain_vlm import PlainMolminiModel
from molmini.model.vlm import MolminiModel
from tests.auto.test_auto_classes import IMAGES, PROMPTS, chart
from tests.helpers import make_records, tiny_config, trained_checkpoint
from tests.helpers.hub_server import run_as_a_user
from tests.helpers.plain_env import transformers_only_python

MAX_NEW_TOKENS = 5
# more images than test_auto_classes' three: other sizes (crop grids) and colours
MORE_IMAGES = IMAGES + [chart((56, 56), "red", 4), chart((30, 90), "blue", 1)]
MORE_PROMPTS = PROMPTS + ["What colour are the bars?", "How many bars are there?"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    return trained_checkpoint(tiny_config("model.image.max_crops=2").model, tokenizer,
                              tmp_path_factory.mktemp("standalone") / "ckpt")


@pytest.fixture(scope="module")
def expected(checkpoint):
    answers = MolminiModel.from_pretrained(checkpoint).generate(MORE_IMAGES, MORE_PROMPTS,
                                                                max_new_tokens=MAX_NEW_TOKENS)
    assert len(set(answers)) > 1  # answers that depend on the image: the comparisons below mean something
    return answers


def test_the_files_are_molmini_s_own_source_and_import_no_molmini(checkpoint):
    files = standalone_files()
    for name in REMOTE_CODE_FILES:
        text = (checkpoint / name).read_text()
        assert text == files[name]
        assert not re.search(r"^\s*(from|import)\s+(molmini|open_clip|timm)\b", text, re.MULTILINE)
    modeling = files[MODELING]
    # one source of truth: the computing methods are MolminiModel's, copied as they are
    for method in (MolminiModel.embed, MolminiModel.image_features, MolminiModel.patch_features):
        assert inspect.getsource(method) in modeling
    assert inspect.getsource(MolminiModel.generate_ids.__wrapped__) in modeling
    assert "from .configuration_molmini import MolminiConfig" in modeling  # one config class, as transformers needs
    assert "from .processing_molmini import MolminiProcessor" in modeling
    assert "class MolminiTransformersProcessor(MolminiProcessor, ProcessorMixin)" in files[PROCESSING]
    assert PLAIN_TOWER_KEY in json.loads((checkpoint / "config.json").read_text())


def test_the_plain_model_computes_exactly_what_molmini_computes(checkpoint, expected):
    ours, plain = MolminiModel.from_pretrained(checkpoint), PlainMolminiModel.from_pretrained(checkpoint)
    assert "open_clip" not in type(plain.vision.visual).__module__
    batch = ours.processor.collate([ours.processor.process_record(r) for r in make_records(3)])
    batch.pop("keys")
    with torch.no_grad():
        a, b = ours(**batch), plain(**batch)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["loss"], b["loss"])
    assert plain.generate(MORE_IMAGES, MORE_PROMPTS, max_new_tokens=MAX_NEW_TOKENS) == expected


def test_pipeline_answers_chat_messages_through_molmini_s_registered_classes(checkpoint, expected):
    import transformers

    import molmini.auto.classes  # noqa: F401  (registers: no remote code runs)
    pipe = transformers.pipeline("image-text-to-text", model=str(checkpoint))
    assert type(pipe.processor).__module__ == "molmini.auto.processor"
    chats = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": p}]}]
             for im, p in zip(MORE_IMAGES, MORE_PROMPTS)]
    out = pipe(text=chats, max_new_tokens=MAX_NEW_TOKENS)
    assert [o[0]["generated_text"][-1] for o in out] == [{"role": "assistant", "content": a} for a in expected]


def test_the_pipeline_continues_a_final_assistant_turn(checkpoint, expected):
    import transformers

    import molmini.auto.classes  # noqa: F401
    pipe = transformers.pipeline("image-text-to-text", model=str(checkpoint))
    processor, tokenizer = pipe.processor, pipe.processor.tokenizer
    for image, prompt, answer in zip(MORE_IMAGES, MORE_PROMPTS, expected):
        user = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}
        start = tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"][:1])
        chat = [user, {"role": "assistant", "content": start}]
        # the prompt is the question's, then the answer's first token, left open
        text = processor.apply_chat_template(chat, continue_final_message=True)
        start_ids = tokenizer(start, add_special_tokens=False)["input_ids"]
        assert processor(images=[image], text=[text])["input_ids"][0].tolist() == (
            processor.process_prompt(image, prompt)["input_ids"] + start_ids)
        # greedy decoding from there goes on as it did without the prefill: the whole answer
        out = pipe(text=chat, max_new_tokens=MAX_NEW_TOKENS)
        assert out[0]["generated_text"][-1] == {"role": "assistant", "content": answer}
    finished = processor.apply_chat_template([user, {"role": "assistant", "content": "3"}])
    with pytest.raises(ValueError, match="finished assistant turn.*continue_final_message=True"):
        processor(images=[MORE_IMAGES[0]], text=[finished])
    with pytest.raises(ValueError, match="ends with a user turn"):
        processor.apply_chat_template([user], continue_final_message=True)


def test_a_tower_without_a_plain_twin_keeps_the_thin_files_and_says_it_needs_molmini(tokenizer, tmp_path, caplog):
    config = tiny_config("model.vision.model_name=molmini-convnext", "model.vision.vision_cfg={image_size: 64}",
                         "model.vision.feature_layers=[-2]").model
    with caplog.at_level(logging.WARNING, logger="molmini.model.vlm"):
        folder = MolminiModel(config, tokenizer).save_pretrained(tmp_path / "convnext")
    assert "molmini-convnext has no plain-torch twin" in caplog.text and "molmini is installed" in caplog.text
    assert PLAIN_TOWER_KEY not in json.loads((folder / "config.json").read_text())
    assert "from molmini.hf_auto import" in (folder / MODELING).read_text()
    with pytest.raises(ValueError, match="no plain-torch implementation.*install molmini"):
        PlainMolminiModel.from_pretrained(folder)


# The user's side: an environment with torch, transformers, safetensors, pillow and numpy only.
USER = """
import json, sys
from PIL import Image
names, out = [], {}
for module in ("molmini", "open_clip", "timm"):
    try:
        __import__(module)
        names.append(module)
    except ImportError:
        pass
out["importable"] = names
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
name, image_paths, prompts, max_new_tokens, resave = json.loads(sys.argv[1])
images = [Image.open(p) for p in image_paths]
model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
def answers(ims, ps):
    turns = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in ps]
    texts = [processor.apply_chat_template(turn) for turn in turns]
    inputs = processor(images=ims, text=texts, return_tensors="pt", padding=True)
    new = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    return [a.strip() for a in processor.batch_decode(new, skip_special_tokens=True)]
out["batched"] = answers(images, prompts)
out["one_at_a_time"] = [answers([im], [p])[0] for im, p in zip(images, prompts)]
out["plain_generate"] = model.model.generate(images, prompts, max_new_tokens=max_new_tokens)
pipe = pipeline("image-text-to-text", model=name, trust_remote_code=True)
chats = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": p}]}]
         for im, p in zip(images, prompts)]
out["pipeline"] = [pipe(text=chat, max_new_tokens=max_new_tokens)[0]["generated_text"][-1]["content"] for chat in chats]
batched = pipe(text=chats, max_new_tokens=max_new_tokens)
out["pipeline_batched"] = [o[0]["generated_text"][-1]["content"] for o in batched]
model.save_pretrained(resave)  # re-saved without molmini, it loads again the same way
again = AutoModelForImageTextToText.from_pretrained(resave, trust_remote_code=True)
out["resaved"] = again.model.generate(images, prompts, max_new_tokens=max_new_tokens)
out["modules"] = sorted({m.rsplit(".", 1)[1] for m in sys.modules if m.startswith("transformers_modules.")})
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "hub id"])
def test_a_transformers_only_environment_loads_it_and_answers_what_molmini_does(checkpoint, expected, source,
                                                                                tmp_path):
    python = transformers_only_python(tmp_path / "env")
    got = run_as_a_user(python, USER, checkpoint, source, MORE_IMAGES, tmp_path, MORE_PROMPTS, MAX_NEW_TOKENS,
                        str(tmp_path / "resaved"), timeout=900)
    assert got["importable"] == []  # neither molmini nor open_clip nor timm: transformers and torch alone
    assert {m for m in got["modules"] if m.endswith("_molmini")} == {"configuration_molmini", "modeling_molmini",
                                                                      "processing_molmini"}
    for key in ("batched", "one_at_a_time", "plain_generate", "pipeline", "pipeline_batched", "resaved"):
        assert got[key] == expected, key
