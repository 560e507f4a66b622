"""Faster answers on a CPU for a loaded model, with torch's own tools: int8 dynamic quantization of the
linear layers and a `torch.compile`d decoder. `generate`, `serve`, `demo` and `python -m eval` take them as
`--quantize int8-dynamic` and `--compile`; in Python, `molmini.speed_up(model, "int8-dynamic", compile=True)`.

What each does to speed and to held-out accuracy is measured by
`python bench/generate_throughput.py --checkpoint runs/NAME/checkpoint` (docs/inference.md, "Faster answers
on a CPU"):

- `int8-dynamic`: torch.ao's dynamic quantization. Every nn.Linear (tower, connector, LM) stores int8
  weights and quantizes its input per batch at run time, on x86's fbgemm/oneDNN kernels.
- `compile`: `torch.compile(dynamic=True)` of the language model's forward, which the KV-cache decoding
  loop calls once per new token. The first call of each batch-size class compiles, which takes tens of
  seconds and needs a C++ compiler; the calls after it are faster.

torchao's int8 weight-only quantization was measured as well, and it was slower than fp32 on the 2-core CPU,
so it is not offered. A model sped up this way answers questions but does not train. Its
`inference_options` records what was applied, and evaluation uses that record to keep the model's answers
apart from the float model's.
"""
from __future__ import annotations

import os
import shutil
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

QUANTIZE_MODES = ("none", "int8-dynamic")


def add_arguments(parser) -> None:
    """`--quantize` and `--compile` on a command that loads a model to answer with."""
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_MODES,
                        help="int8-dynamic: int8 linear layers on the CPU (torch's dynamic quantization), "
                             "faster at an accuracy within 0.5 points in bench/generate_throughput.py; default none")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder: faster tokens after "
                        "a first call per batch size that compiles for tens of seconds (needs a C++ compiler)")


def check_options(quantize: str = "none", compile: bool = False, device: str | torch.device = "cpu") -> None:
    """Refuse, before any model loads, what cannot run, each as a ValueError that names the option and the fix."""
    import torch
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    on_cpu = torch.device(device).type == "cpu" if str(device) != "auto" else not torch.cuda.is_available()
    if quantize != "none" and not on_cpu:
        raise ValueError(f"--quantize {quantize} makes CPU kernels; on a GPU leave it out and pass --dtype bfloat16, "
                         "or run on the CPU with --device cpu")
    if compile and on_cpu and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
        raise ValueError("--compile on the CPU needs a C++ compiler for torch.compile (none found: no g++, c++ "
                         "or $CXX); install one (e.g. apt-get install g++) or leave out --compile")


def decoder_of(model: nn.Module) -> nn.Module:
    """The transformers model whose forward the decoding loop calls once per token: molmini's LM, or a
    transformers VLM's own model."""
    from torch import nn
    for name in ("lm", "hf"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise TypeError(f"{type(model).__name__} has no language model to compile (expected .lm or .hf)")


def quantize_linear_layers(model: nn.Module, mode: str) -> int:
    """Quantize every nn.Linear of `model` in place (tower, connector and LM); returns how many were."""
    import torch
    from torch import nn
    linears = sum(type(m) is nn.Linear for m in model.modules())
    if mode == "int8-dynamic":
        with warnings.catch_warnings():
            # torch 2.10+ marks torch.ao.quantization as moving to torchao; it is still torch's CPU int8 path
            # (fbgemm/oneDNN), and torchao's dynamic int8 was slower here (bench/generate_throughput.py).
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return linears


def speed_up(model: nn.Module, quantize: str = "none", compile: bool = False) -> nn.Module:
    """Apply the CPU speed-ups to a loaded model (molmini's own or a transformers VLM), in place; returns it.
    `model.inference_options` records what was applied ({} for neither)."""
    import torch
    check_options(quantize, compile, model.device)
    if quantize != "none" and next(model.parameters()).dtype != torch.float32:
        raise ValueError(f"--quantize {quantize} quantizes float32 weights; this model is in "
                         f"{next(model.parameters()).dtype} (leave out --dtype)")
    model.eval()
    options: dict[str, Any] = {"parameters": parameter_count(model)}  # quantized layers hold no nn.Parameter
    if quantize != "none":
        options["quantize"] = quantize
        options["quantized_linear_layers"] = quantize_linear_layers(model, quantize)
    if compile:
        decoder = decoder_of(model)
        decoder.forward = torch.compile(decoder.forward, dynamic=True)
        options["compile"] = True
    model.inference_options = options
    return model


def check_savable(model: nn.Module, folder: Any) -> None:
    """Refuse to save a quantized model: its int8 layers are packed for the CPU kernels, not a checkpoint's
    weights. The float checkpoint is the one to keep; quantizing it again at load takes milliseconds."""
    quantize = (getattr(model, "inference_options", None) or {}).get("quantize")
    if quantize:
        raise ValueError(f"{folder}: this model was quantized for answering (--quantize {quantize}), and its int8 "
                         "layers do not save as a checkpoint; save the model as it loaded, and quantize when you "
                         f"load it (molmini serve --model FOLDER --quantize {quantize}, or speed_up(model, "
                         f"{quantize!r}))")


def parameter_count(model: nn.Module) -> int:
    """The model's parameters as trained, also after quantization (whose int8 layers hold no nn.Parameter)."""
    options = getattr(model, "inference_options", None) or {}
    return options.get("parameters") or sum(p.numel() for p in model.parameters())


def options_tag(model: nn.Module) -> str:
    """A short tag for what `speed_up` applied ("" for nothing), e.g. "int8-dynamic+compile": evaluation adds it
    to a model's name and cache key."""
    options = getattr(model, "inference_options", None) or {}
    return "+".join(part for part in (options.get("quantize", ""), "compile" if options.get("compile") else "")
                    if part)
