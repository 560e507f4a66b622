"""`molmini demo CHECKPOINT`: a browser page (Gradio) to look at what a checkpoint does with an image.

Upload an image or pick a bundled held-out example (molmini/serve/demo_examples/, drawn by data_pipelines.synth
from the test split), ask a question, and see the answer as it is generated, next to what the model saw: the
multi-crop layout drawn on the image and the number of image tokens it became; and, for a model that still
has its reading head (one built for training, model/reading.py: saved checkpoints leave it out), what the
head reads in each patch.

The answer comes from the same generation path as `molmini generate --stream` and `molmini serve`'s streaming
requests: `model.stream` (MolminiModel.generate_ids under it) with serve's sampling settings
(requests.Sampling) and the answer's surrounding whitespace held back (server.visible_text), so the page, the
command line and the API give one answer for one question. A transformers VLM (the folder `python -m eval
run` and `load_trained` detect) answers through its own `generate`, in one piece.

A bad upload (zero bytes, not an image, too large, animated, 16 bits per channel) is a message in the page,
never a traceback. Gradio is imported only here: `pip install "molmini[demo]"`.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageDraw

from molmini.serve.requests import Limits, RequestError, Sampling, decode_image, too_many_bytes

EXAMPLES = Path(__file__).with_name("demo_examples")
CROP_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
NO_READING_HEAD = ("This model has no reading head: it is a training device (model.reading, docs/model.md), "
                   "left out of saved checkpoints, so there is no per-patch reading to show.")


def missing_demo_packages() -> list[str]:
    try:
        import gradio  # noqa: F401
    except ImportError:
        return ["gradio"]
    return []


def examples() -> list[dict[str, str]]:
    """The bundled examples: image file (absolute) and a question about it, each from a held-out record."""
    listed = json.loads((EXAMPLES / "examples.json").read_text())
    return [{**e, "image": str(EXAMPLES / e["image"])} for e in listed]


# ---- uploads ---------------------------------------------------------------------------------------------

class UploadError(ValueError):
    """An upload the demo cannot show the model; its message is shown in the page."""


def read_upload(path: str | Path | None, limits: Limits = Limits()) -> Image.Image:
    """The RGB image of an uploaded file, or an UploadError that says what is wrong with it and what to do.
    Checks serve's limits (requests.decode_image: bytes, pixels, decodable) and two kinds of file that
    decode but would not show the model what the user sees: an animation (only its first frame would be
    seen) and 16 bits per channel (PIL's conversion to 8-bit RGB clips it, mostly to white)."""
    if path is None:
        raise UploadError("no image: upload one, or pick an example below")
    path = Path(path)
    name = path.name
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{name} is empty (zero bytes); upload an image file (PNG, JPEG, ...)")
    if size > limits.max_image_bytes:
        raise UploadError(str(too_many_bytes(size, limits, name)))
    data = path.read_bytes()
    try:
        image = decode_image(data, limits, name)
    except RequestError as e:
        raise UploadError(str(e)) from e
    # The decoder gives upright 8-bit RGB (molmini/data/images.py); what the file itself holds is read apart.
    raw = Image.open(io.BytesIO(data))
    frames = getattr(raw, "n_frames", 1)
    if getattr(raw, "is_animated", False) and frames > 1:
        raise UploadError(f"{name} is animated ({frames} frames); the model sees one still image: upload a "
                          "single frame as PNG or JPEG")
    if bits_per_channel(raw, data) > 8:
        raise UploadError(f"{name} has 16 bits per channel ({raw.mode}); the model sees 8-bit RGB and a "
                          "conversion would clip it: save it as an 8-bit PNG or JPEG")
    return image.convert("RGB")


def bits_per_channel(image: Image.Image, data: bytes) -> int:
    """16 for 16-bit modes (I;16*, I, F) and for PNGs whose header says 16 (PIL opens 48-bit RGB as RGB)."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return 16
    if image.format == "PNG" and len(data) > 24 and data[12:16] == b"IHDR":
        return data[24]
    return 8


# ---- what the model saw -----------------------------------------------------------------------------------

@dataclass
class Layout:
    """How a molmini processor laid out one image: the crops on the image, and the tokens it became."""
    drawing: Image.Image       # the image with each crop's rectangle drawn
    description: str           # markdown: grid, crop size, image tokens
    image_tokens: int


def crop_boxes(image_size: tuple[int, int], placements: list[tuple[float, float, float, float]],
               crop_px: int) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) in the original image of each crop, from the map `tile_image` records
    ((scale_y, scale_x, shift_y, shift_x): a point (y, x) lands at (y * scale_y + shift_y, x * ...) in the
    crop), clipped to the image. Crop 0 is the global view: the whole image."""
    width, height = image_size
    boxes = []
    for sy, sx, ty, tx in placements:
        left, top = (0 - tx) / sx, (0 - ty) / sy
        right, bottom = (crop_px - tx) / sx, (crop_px - ty) / sy
        boxes.append((max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom)))
    return boxes


def molmini_layout(processor, image: Image.Image) -> Layout:
    from molmini.data.crops import tile_image
    from molmini.data.tokenizer import IMAGE_PATCH
    c = processor.config
    tiled = tile_image(image, c.image_size, c.patch_size, c.max_crops, c.overlap_margin, processor.fill)
    tokens = processor.process_image(image)["image_tokens"]
    features = sum(1 for t in tokens if t == processor.ids[IMAGE_PATCH])
    drawing = image.copy()
    scale = max(1, 384 // max(image.size))  # tiny images are drawn larger, so the rectangles show
    if scale > 1:
        drawing = drawing.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(drawing)
    boxes = crop_boxes(image.size, tiled.placements, c.image_size)
    for n, (left, top, right, bottom) in enumerate(boxes[1:]):
        colour = CROP_COLOURS[n % len(CROP_COLOURS)]
        draw.rectangle([left * scale, top * scale, right * scale - 1, bottom * scale - 1], outline=colour, width=2)
        draw.text((left * scale + 3, top * scale + 2), str(n + 1), fill=colour)
    rows, cols = tiled.tiling
    grid = (f"a global view plus a {rows}x{cols} grid of {rows * cols} crops (numbered on the image), each "
            f"{c.image_size} px, neighbours overlapping by {c.overlap_margin} patch(es)" if rows else
            "one global view only (the model's max_crops is 0)")
    description = (f"**{len(tokens)} image tokens**: {features} image features ({c.pool}x{c.pool} pooled "
                   f"patches of {c.patch_size} px) and {len(tokens) - features} layout tokens; the image was cut "
                   f"into {grid}.")
    return Layout(drawing, description, len(tokens))


def hf_layout(model, image: Image.Image, prompt: str) -> Layout:
    """A transformers VLM's processor lays the image out its own way: only its image-token count is shown."""
    processor = model.processor.processor
    token = getattr(processor, "image_token", None)
    batch = model.processor.prompt_batch([image], [prompt])
    count = 0
    if token is not None:
        token_id = processor.tokenizer.convert_tokens_to_ids(token)
        count = int((batch["input_ids"] == token_id).sum())
    return Layout(image.copy(), f"**{count} image tokens** (this model's own processor, "
                  f"{type(processor).__name__}, lays out the image; crops are drawn for molmini models)", count)


def layout_of(model, image: Image.Image, prompt: str) -> Layout:
    if model.family == "transformers":
        return hf_layout(model, image, prompt)
    return molmini_layout(model.processor, image)


def reading_overlay(model, image: Image.Image) -> tuple[Image.Image, str] | None:
    """What the reading head (model/reading.py) reads in the global view: each patch tinted by how sure the
    head is that it holds text (1 - p(no text)), with the token it reads where that is over one half.
    None when the model has no head (every saved checkpoint)."""
    import torch
    head = getattr(model, "read_head", None)
    if head is None:
        return None
    processor = model.processor
    c = processor.config
    processed = processor.process_image(image)
    with torch.no_grad():
        feats = model.patch_features(processed["pixel_values"][:1].to(model.device),
                                     processed["pad_fraction"][:1].to(model.device))
        probs = head(feats).float().softmax(-1)[0]  # [patches, vocab] of the global view
    text_prob = 1 - probs[:, processor.pad_token_id]
    tokens = probs.argmax(-1)
    g = c.image_size // c.patch_size
    from molmini.data.crops import tile_image
    sy, sx, ty, tx = tile_image(image, c.image_size, c.patch_size, 0, c.overlap_margin, processor.fill).placements[0]
    scale = max(1, 384 // max(image.size))
    base = image.resize((image.width * scale, image.height * scale), Image.NEAREST).convert("RGBA")
    tint = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tint)
    read = []
    for k in range(g * g):
        row, col = divmod(k, g)
        top, left = (row * c.patch_size - ty) / sy * scale, (col * c.patch_size - tx) / sx * scale
        bottom, right = top + c.patch_size / sy * scale, left + c.patch_size / sx * scale
        p = float(text_prob[k])
        draw.rectangle([left, top, right - 1, bottom - 1], fill=(255, 0, 0, int(160 * p)))
        if p > 0.5:
            read.append(processor.tokenizer.decode([int(tokens[k])]).strip())
    overlay = Image.alpha_composite(base, tint).convert("RGB")
    words = ", ".join(dict.fromkeys(w for w in read if w)) or "nothing"
    return overlay, (f"The reading head sees text in {len(read)} of {g * g} patches of the global view; it reads: "
                     f"{words}.")


# ---- answering ---------------------------------------------------------------------------------------------

def sampling_of(decoding: str, temperature: float, top_p: float) -> Sampling:
    """serve's Sampling for the page's controls: greedy, or sampling at `temperature` and `top_p`."""
    return Sampling() if decoding == "greedy" else Sampling(float(temperature), float(top_p))


def answer_stream(model, image: Image.Image, prompt: str, max_new_tokens: int, sampling: Sampling) -> Iterator[str]:
    """The answer's text so far, piece by piece: `model.stream` as `molmini generate --stream` and serve's
    streaming requests use it, with serve's whitespace handling, so the pieces join to `generate`'s answer.
    A transformers VLM answers in one piece through its `generate` (eval's HFVisionLanguageAdapter path)."""
    kwargs = sampling.generate_kwargs()
    if model.family == "transformers":
        yield model.generate([image], [prompt], max_new_tokens=max_new_tokens, batch_size=1, **kwargs)[0]
        return
    from molmini.serve.server import visible_text
    text = ""
    for piece in visible_text(model.stream(image, prompt, max_new_tokens=max_new_tokens, **kwargs)):
        text += piece
        yield text


def display_name(checkpoint: str | Path) -> str:
    """What the page calls a checkpoint: its run folder's name for runs/NAME/checkpoint, the folder's name,
    or the hub id (a full path would show the user's folders in every screenshot)."""
    path = Path(checkpoint)
    if not path.is_dir():
        return str(checkpoint)
    path = path.resolve()
    return path.parent.name if path.name == "checkpoint" else path.name


def build_demo(model, name: str, limits: Limits = Limits()):
    """The Gradio Blocks page for `model` (a loaded VisionLanguageModel) shown as `name`."""
    import gradio as gr

    def ask(upload, question, max_new_tokens, decoding, temperature, top_p) -> Iterator[tuple[Any, ...]]:
        started = time.perf_counter()
        try:
            image = read_upload(upload, limits)
        except UploadError as e:
            yield "", f"error: {e}", None, "", None, ""
            return
        prompt = (question or "").strip()
        if not prompt:
            yield "", "error: no question: type one in the question box", None, "", None, ""
            return
        layout = layout_of(model, image, prompt)
        reading = reading_overlay(model, image) if model.family == "molmini" else None
        overlay, reading_text = reading if reading is not None else (None, NO_READING_HEAD)
        answer = ""
        try:
            for answer in answer_stream(model, image, prompt, int(max_new_tokens),
                                        sampling_of(decoding, temperature, top_p)):
                yield answer, "answering...", layout.drawing, layout.description, overlay, reading_text
        except ValueError as e:  # a prompt that does not fit the model's context, and the like
            yield answer, f"error: {e}", layout.drawing, layout.description, overlay, reading_text
            return
        done = f"answered in {time.perf_counter() - started:.1f} s ({layout.image_tokens} image tokens)"
        yield answer, done, layout.drawing, layout.description, overlay, reading_text

    with gr.Blocks(title=f"molmini demo: {name}", analytics_enabled=False) as demo:
        gr.Markdown(f"## molmini demo: `{name}`\nUpload an image (or pick an example), ask a question about it.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="image", type="filepath", elem_id="upload")
                question = gr.Textbox(label="question", elem_id="question", lines=1)
                with gr.Row():
                    max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=32, step=1, label="max new tokens")
                    decoding = gr.Radio(["greedy", "sampling"], value="greedy", label="decoding")
                with gr.Row():
                    temperature = gr.Slider(0.05, 2.0, value=0.7, label="temperature (sampling)")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, label="top p (sampling)")
                button = gr.Button("Ask", variant="primary", elem_id="ask")
                gr.Examples([[e["image"], e["question"]] for e in examples()], inputs=[upload, question],
                            label="held-out examples (synthetic charts, documents, tables)")
            with gr.Column():
                answer = gr.Textbox(label="answer", elem_id="answer", interactive=False)
                message = gr.Markdown(elem_id="message")
                seen = gr.Image(label="what the model saw: its crops", type="pil", interactive=False)
                layout = gr.Markdown(elem_id="layout")
                has_head = getattr(model, "read_head", None) is not None
                reading = gr.Image(label="reading head: text per patch", type="pil", interactive=False,
                                   visible=has_head)
                reading_text = gr.Markdown(elem_id="reading")
        inputs = [upload, question, max_new_tokens, decoding, temperature, top_p]
        outputs = [answer, message, seen, layout, reading, reading_text]
        button.click(ask, inputs, outputs)
        question.submit(ask, inputs, outputs)
    return demo


def launch(checkpoint: str, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           device: str = "auto", dtype: str | None = None, limits: Limits = Limits(),
           block: bool = True, quantize: str = "none", compile: bool = False):
    """Load the checkpoint (molmini's own or a transformers VLM, as eval loads it) and serve the page; on
    127.0.0.1 unless `host` or `share` (a public gradio.live link) ask for more. Returns the Blocks app
    when `block` is False (tests), after it has started."""
    from molmini.model.fast_inference import check_options, speed_up
    from molmini.model.interface import load_trained
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_options(quantize, compile, device)
    model = speed_up(load_trained(checkpoint, device=device, dtype=dtype), quantize, compile)
    demo = build_demo(model, display_name(checkpoint), limits)
    demo.queue()
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                max_file_size=limits.max_image_bytes + 1024, ssr_mode=False, show_error=False,
                quiet=not block)
    return demo
