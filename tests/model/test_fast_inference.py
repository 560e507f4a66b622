"""--quantize and --compile (molmini/model/fast_inference.py): what they replace, that the answers stay the
model's, and the refusals that name the option. Their speed and held-out accuracy are measured by
`bench/generate_throughput.py --checkpoint ...`, not here."""
from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from torch import nn

from molmini.model.fast_inference import check_options, options_tag, parameter_count, speed_up
from molmini.model.vlm import MolminiModel
from tests.helpers import make_records, png_bytes, trained_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model_config, tokenizer):
    return trained_checkpoint(model_config, tokenizer, tmp_path_factory.mktemp("fast") / "checkpoint")


def images_and_prompts(n: int = 6):
    records = make_records(n, seed=3)
    return ([Image.open(io.BytesIO(r.image)) for r in records],
            [r.messages[0]["content"] for r in records])


def prompt_logits(model: MolminiModel, images, prompts) -> torch.Tensor:
    """The next-token logits after each prompt (the first decoding step), through the LM's forward."""
    batch = model._on_device(model.processor.prompt_batch(images, prompts))
    embeds = model.embed(batch["input_ids"], batch["pixel_values"], batch["pad_fraction"], batch["pool_index"])
    with torch.no_grad():
        return model.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[:, -1]


def test_int8_dynamic_replaces_every_linear_layer_and_keeps_the_answers(checkpoint):
    images, prompts = images_and_prompts()
    fp32 = MolminiModel.from_pretrained(checkpoint)
    linears = sum(type(m) is nn.Linear for m in fp32.modules())
    parameters = sum(p.numel() for p in fp32.parameters())
    want, want_logits = fp32.generate(images, prompts, max_new_tokens=4), prompt_logits(fp32, images, prompts)

    model = speed_up(MolminiModel.from_pretrained(checkpoint), "int8-dynamic")
    quantized = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == linears > 0 and not any(type(m) is nn.Linear for m in model.modules())
    assert model.inference_options["quantized_linear_layers"] == linears
    assert options_tag(model) == "int8-dynamic" and parameter_count(model) == parameters
    got_logits = prompt_logits(model, images, prompts)
    assert not torch.equal(got_logits, want_logits)              # int8 arithmetic ran
    assert torch.nn.functional.cosine_similarity(got_logits, want_logits).min() > 0.99
    assert model.generate(images, prompts, max_new_tokens=4) == want  # a trained model's greedy answers hold


def test_compile_gives_the_eager_decoders_logits(checkpoint):
    """One compile of the tiny LM (tens of seconds on 2 cores); the answers are then those of the eager model."""
    images, prompts = images_and_prompts(3)
    eager = MolminiModel.from_pretrained(checkpoint)
    want, want_answers = prompt_logits(eager, images, prompts), eager.generate(images, prompts, max_new_tokens=3)
    model = speed_up(MolminiModel.from_pretrained(checkpoint), compile=True)
    assert options_tag(model) == "compile"
    assert hasattr(model.lm.forward, "_torchdynamo_orig_callable")  # the decoder's forward is torch.compile's
    torch.testing.assert_close(prompt_logits(model, images, prompts), want, rtol=1e-4, atol=1e-4)
    assert model.generate(images, prompts, max_new_tokens=3) == want_answers


@pytest.mark.parametrize("quantize,compile,device,message", [
    ("int4", False, "cpu", "--quantize 'int4' is not one of none, int8-dynamic"),
    ("int8-dynamic", False, "cuda", "makes CPU kernels; on a GPU leave it out"),
    ("int8-dynamic", False, "cuda:1", "makes CPU kernels"),
])
def test_options_that_cannot_run_are_refused_naming_the_option(quantize, compile, device, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_options(quantize, compile, device)


def test_compile_without_a_compiler_is_refused_before_anything_loads(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler .* leave out --compile"):
        check_options("none", True, "cpu")


def test_a_bfloat16_model_is_not_quantized(checkpoint):
    model = MolminiModel.from_pretrained(checkpoint, dtype="bfloat16")
    with pytest.raises(ValueError, match="quantizes float32 weights; this model is in torch.bfloat16"):
        speed_up(model, "int8-dynamic")


def test_generate_command_quantizes(checkpoint, tmp_path, capsys):
    from molmini.cli import main
    image = tmp_path / "chart.png"
    image.write_bytes(png_bytes("red", bars=2))
    prompt = "<image>What colour are the bars?"
    assert main(["generate", "--model", str(checkpoint), "--image", str(image), "--prompt", prompt, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["generate", "--model", str(checkpoint), "--image", str(image), "--prompt", prompt, "--json",
                 "--quantize", "int8-dynamic"]) == 0
    assert json.loads(capsys.readouterr().out) == plain
    # a refusal comes before the checkpoint loads: this one does not exist
    assert main(["generate", "--model", str(tmp_path / "missing"), "--image", str(image), "--prompt", prompt,
                 "--quantize", "int8-dynamic", "--device", "cuda"]) == 2
    assert "--quantize int8-dynamic makes CPU kernels" in capsys.readouterr().err


def test_serve_command_serves_the_quantized_model(checkpoint, monkeypatch):
    """`molmini serve --quantize int8-dynamic` hands the server a model whose linear layers are int8."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from molmini.cli import main
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert main(["serve", "--model", str(checkpoint), "--quantize", "int8-dynamic", "--device", "cpu",
                 "--port", "8123"]) == 0
    model = served["app"].state.batcher.model
    assert options_tag(model) == "int8-dynamic" and served["port"] == 8123
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())


def test_a_quantized_model_is_not_saved_as_a_checkpoint(tmp_path, checkpoint):
    from molmini import MolminiModel, speed_up
    model = speed_up(MolminiModel.from_pretrained(checkpoint), "int8-dynamic")
    with pytest.raises(ValueError, match="quantized for answering.*--quantize int8-dynamic"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
