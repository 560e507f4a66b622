"""`molmini demo` without a browser: uploads it refuses (each with its message), the layout it draws, the reading
overlay, and the one generation path it shares with `molmini generate` and `molmini serve`. The page itself is
driven in a real browser in test_demo_browser.py."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from molmini.serve.demo import (UploadError, answer_stream, crop_boxes, examples, layout_of, read_upload,
                                reading_overlay, sampling_of)
from molmini.serve.requests import Limits
from tests.helpers import png_bytes, tiny_config, trained_checkpoint

QUESTION = "What colour are the bars?"


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    """A tiny model cutting images into up to 4 crops, trained a few steps so its answers depend on the image."""
    return trained_checkpoint(tiny_config("model.image.max_crops=4").model, tokenizer,
                              tmp_path_factory.mktemp("demo") / "checkpoint")


@pytest.fixture(scope="module")
def model(checkpoint):
    from molmini.model.interface import load_trained
    return load_trained(checkpoint)


def write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def saved(image: Image.Image, fmt: str = "png", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_a_good_upload_is_an_rgb_image(tmp_path):
    image = read_upload(write(tmp_path, "bars.png", png_bytes("red")))
    assert image.mode == "RGB" and image.size == (32, 32)


@pytest.mark.parametrize("name, data, limits, expected", [
    ("empty.png", b"", Limits(), "is empty (zero bytes)"),
    ("notes.png", b"these are not pixels\n" * 10, Limits(), "is not an image PIL can read"),
    ("big.png", png_bytes("red", size=64), Limits(max_image_bytes=100), "over this server's limit of 100 bytes"),
    ("wide.png", png_bytes("red", size=64), Limits(max_image_pixels=32 * 32), "over this server's limit of 1024"),
    ("deep.png", saved(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))), Limits(), "16 bits per channel"),
    ("deep.tif", saved(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)), "tiff"), Limits(),
     "16 bits per channel"),
    ("moving.gif", saved(Image.new("RGB", (8, 8), "red"), "gif", save_all=True,
                         append_images=[Image.new("RGB", (8, 8), "blue")]), Limits(), "is animated (2 frames)"),
])
def test_a_bad_upload_is_one_message_naming_the_file_and_the_fix(tmp_path, name, data, limits, expected):
    with pytest.raises(UploadError) as refused:
        read_upload(write(tmp_path, name, data), limits)
    message = str(refused.value)
    assert expected in message and name in message and "\n" not in message


def test_a_48_bit_png_is_refused_though_pil_opens_it_as_rgb(tmp_path):
    """PIL reads a 16-bit-per-channel RGB PNG as 8-bit RGB; its header's bit depth tells."""
    import struct
    import zlib
    rows = b"".join(b"\x00" + b"\xff\x00\x00\x00\x00\x00" * 4 for _ in range(4))  # 4x4 red, 16 bits a sample

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert Image.open(io.BytesIO(png)).mode == "RGB"
    with pytest.raises(UploadError, match="16 bits per channel"):
        read_upload(write(tmp_path, "deep48.png", png))


def test_the_bundled_examples_are_small_held_out_images_with_questions():
    listed = examples()
    assert len(listed) >= 2 and sum(len(open(e["image"], "rb").read()) for e in listed) < 50_000
    for e in listed:
        assert read_upload(e["image"]).size[0] >= 64 and e["question"].endswith("?")


def test_the_crops_drawn_tile_the_image_and_the_token_count_is_the_processors(model):
    image = Image.open(io.BytesIO(png_bytes("blue", size=96, bars=4))).resize((120, 60))
    layout = layout_of(model, image, QUESTION)
    assert layout.image_tokens == len(model.processor.process_image(image)["image_tokens"])
    assert f"**{layout.image_tokens} image tokens**" in layout.description and "grid" in layout.description
    from molmini.data.crops import tile_image
    c = model.processor.config
    tiled = tile_image(image, c.image_size, c.patch_size, c.max_crops, c.overlap_margin, model.processor.fill)
    boxes = crop_boxes(image.size, tiled.placements, c.image_size)
    assert boxes[0] == (0.0, 0.0, 120.0, 60.0)  # the global view sees it all
    crops = boxes[1:]
    assert len(crops) == tiled.tiling[0] * tiled.tiling[1] > 1
    assert min(b[0] for b in crops) == 0 and max(b[2] for b in crops) == pytest.approx(120)
    assert min(b[1] for b in crops) == 0 and max(b[3] for b in crops) == pytest.approx(60)


def test_a_saved_checkpoint_has_no_reading_head_and_a_training_model_shows_its_reading(model, tokenizer):
    image = Image.open(io.BytesIO(png_bytes("green", size=64)))
    assert reading_overlay(model, image) is None
    import torch

    from molmini.model.vlm import MolminiModel
    torch.manual_seed(0)
    reader = MolminiModel(tiny_config("model.reading.weight=1").model, tokenizer).eval()
    overlay, text = reading_overlay(reader, image)
    assert overlay.size[0] >= image.width and "patches of the global view" in text


def test_the_demo_answers_as_generate_and_serve_do(model, checkpoint, capsys, tmp_path):
    """One generation path: the demo's streamed answer, `molmini generate`'s line, `model.generate` and a
    `molmini serve` chat completion are the same text."""
    from fastapi.testclient import TestClient

    from molmini.cli import main
    from molmini.serve.server import build_app
    png = png_bytes("red", bars=2)
    image = Image.open(io.BytesIO(png))
    *_, shown = answer_stream(model, image, QUESTION, 12, sampling_of("greedy", 0.7, 1.0))
    assert shown == model.generate([image], [QUESTION], max_new_tokens=12)[0] and shown
    path = write(tmp_path, "bars.png", png)
    assert main(["generate", "--model", str(checkpoint), "--image", str(path), "--prompt", QUESTION,
                 "--max-new-tokens", "12", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == shown
    import base64
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {"model": "tiny", "max_tokens": 12, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]}
    with TestClient(build_app(model, "tiny")) as client:
        reply = client.post("/v1/chat/completions", content=json.dumps(body))
    assert reply.json()["choices"][0]["message"]["content"] == shown


def test_sampling_settings_are_serves():
    assert sampling_of("greedy", 0.7, 0.9).generate_kwargs() == {"do_sample": False}
    assert sampling_of("sampling", 0.7, 0.9).generate_kwargs() == {"do_sample": True, "temperature": 0.7,
                                                                   "top_p": 0.9}


def test_without_gradio_the_command_says_what_to_install(monkeypatch, capsys):
    from molmini.cli import main
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["demo", "runs/none/checkpoint"]) == 2
    assert capsys.readouterr().err.strip() == 'error: molmini demo needs gradio: pip install "molmini[demo]"'
