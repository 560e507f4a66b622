"""OpenAI chat-completions requests, checked and turned into what the molmini processor takes: the images
of the first user message (base64 `data:` URLs or http(s) URLs), its text with one `<image>` marker per image,
the earlier turns as `history`, and the generation settings. Every problem is a `RequestError` whose message
names the bad field and the fix; the server answers it with HTTP 400 in OpenAI's error shape.
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from molmini.data.images import URL_TIMEOUT_S, as_rgb, is_url
from molmini.data.records import IMAGE_MARKER

DATA_URL_EXAMPLE = "data:image/png;base64,iVBORw0..."
# Fields of the OpenAI request that molmini cannot honour: refused, not silently ignored, when set.
UNSUPPORTED = {"stop": "stop sequences", "tools": "tool calls", "functions": "function calls",
               "logprobs": "log probabilities", "top_logprobs": "log probabilities", "logit_bias": "logit bias",
               "frequency_penalty": "frequency penalties", "presence_penalty": "presence penalties",
               "seed": "seeded sampling (requests are sampled together in batches)"}


class RequestError(ValueError):
    """A request the server refuses (HTTP 400); `param` is the field at fault, as OpenAI reports it."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""
    max_new_tokens: int = 512  # the largest max_tokens a request may ask for
    max_image_pixels: int = 4096 * 4096  # width x height of one image
    max_image_bytes: int = 20 * 2**20  # one image's encoded size (decoded base64, or the body of its URL)
    url_timeout_s: float = URL_TIMEOUT_S


@dataclass(frozen=True)
class Sampling:
    """Generation settings that requests of one batch must share; greedy when temperature is 0."""
    temperature: float = 0.0
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


@dataclass
class ChatRequest:
    images: list[Image.Image]  # of the first user message, in order
    prompt: str  # the last user message, with its `<image>` markers if it is also the first
    history: list[dict[str, str]]  # earlier turns, user and assistant in turn
    max_tokens: int | None  # None: as many as the context leaves, up to the server's limit
    sampling: Sampling = field(default_factory=Sampling)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts


def require_image(images: list[Image.Image]) -> None:
    """The policy for prompts without an image: refused for now, since molmini checkpoints are trained on
    images. The processor lays out text-only prompts already; removing this check is all serving them takes."""
    if not images:
        raise RequestError("the request has no image, and this molmini model answers questions about images; add "
                           "an image_url content part (a data:image/png;base64,... or an http(s) URL) to the "
                           "first user message", param="messages")


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    """The checked request of a `POST /v1/chat/completions` JSON body."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object with 'messages', got a {type(body).__name__}")
    for name, what in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and (name == "seed" or value not in (False, [], {}, 0)):
            raise RequestError(f"{name} is set, but this server does not support {what}; leave {name} out",
                               param=name)
    if body.get("n", 1) != 1:
        raise RequestError(f"n={body['n']!r}: this server returns one choice per request; leave n out or set 1",
                           param="n")
    response_format = body.get("response_format") or {"type": "text"}
    if not isinstance(response_format, dict) or response_format.get("type") != "text":
        raise RequestError(f"response_format {response_format!r} is not supported; only plain text answers are",
                           param="response_format")
    images, prompt, history = parse_messages(body.get("messages"), limits)
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(f"stream_options must be an object like {{\"include_usage\": true}}, got {options!r}",
                           param="stream_options")
    return ChatRequest(images=images, prompt=prompt, history=history, max_tokens=parse_max_tokens(body, limits),
                       sampling=parse_sampling(body), stream=stream, include_usage=_flag(options, "include_usage"))


def parse_max_tokens(body: dict[str, Any], limits: Limits) -> int | None:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be a positive integer, got {value!r}", param=name)
    if value > limits.max_new_tokens:
        raise RequestError(f"{name}={value} is over this server's limit of {limits.max_new_tokens} new tokens; ask "
                           f"for at most {limits.max_new_tokens} (the server's --max-new-tokens-limit)", param=name)
    return value


def parse_sampling(body: dict[str, Any]) -> Sampling:
    temperature = _number(body, "temperature", 0.0, low=0.0, high=2.0)
    top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0)
    if top_p == 0:
        raise RequestError("top_p must be in (0, 1], got 0", param="top_p")
    return Sampling() if temperature == 0 else Sampling(temperature, top_p)


def parse_messages(messages: Any, limits: Limits) -> tuple[list[Image.Image], str, list[dict[str, str]]]:
    """(images, last user text, earlier turns) of OpenAI messages: user and assistant in turn, ending with a
    user message; images only in the first user message, where molmini's processor puts them."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects",
                           param="messages")
    turns, images = [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with role and content, got {message!r}", param=where)
        role = message.get("role")
        expected = "user" if i % 2 == 0 else "assistant"
        if role in ("system", "developer"):
            raise RequestError(f"{where} is a {role} message, which molmini's chat format has no place for; put "
                               "its instructions in the first user message", param=where)
        if role != expected:
            raise RequestError(f"{where} has role {role!r} where {expected!r} was expected; messages go user, "
                               "assistant, user, ... and end with a user message", param=where)
        text, urls = parse_content(message.get("content"), where)
        if urls and i > 0:
            raise RequestError(f"{where} has an image, but molmini puts all images in the first user message; "
                               "move the image_url parts there (or start a new conversation)", param=where)
        if i == 0:
            images = [load_image_url(url, limits, f"{where}.content image {k}") for k, url in enumerate(urls)]
        turns.append({"role": role, "content": text})
    if turns[-1]["role"] != "user":
        raise RequestError("the last message must be a user message, for the model to answer it", param="messages")
    require_image(images)
    return images, turns[-1]["content"], turns[:-1]


def parse_content(content: Any, where: str) -> tuple[str, list[str]]:
    """The text of a message's content (a string, or a list of text and image_url parts, each image a
    `<image>` marker where it stands) and the URLs of its images."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of content parts, got {content!r}",
                           param=where)
    pieces, urls = [], []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise RequestError(f"{where}.content[{k}] needs image_url: {{\"url\": \"{DATA_URL_EXAMPLE}\"}} or an "
                                   "http(s) URL", param=where)
            pieces.append(IMAGE_MARKER)
            urls.append(url)
        else:
            raise RequestError(f"{where}.content[{k}] is {part!r}; only {{\"type\": \"text\", \"text\": ...}} and "
                               "{\"type\": \"image_url\", ...} parts are supported", param=where)
    return "\n".join(pieces), urls  # the processor strips the text around each marker


def load_image_url(url: str, limits: Limits, where: str) -> Image.Image:
    """The RGB image of a `data:image/...;base64,` URL or an http(s) URL, within the size limits."""
    if url.startswith("data:"):
        data = data_url_bytes(url, limits, where)
    elif is_url(url):
        data = fetch_bytes(url, limits, where)
    else:
        raise RequestError(f"{where}: {url[:60]!r} is neither a data: URL ({DATA_URL_EXAMPLE}) nor an http(s) "
                           "URL", param="messages")
    return decode_image(data, limits, where)


def data_url_bytes(url: str, limits: Limits, where: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64") or not header.startswith("data:image/"):
        raise RequestError(f"{where}: a data URL must look like {DATA_URL_EXAMPLE} (an image type, base64), got "
                           f"{url[:40]!r}", param="messages")
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise too_many_bytes(len(payload) * 3 // 4, limits, where)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{where}: the data URL is not valid base64 ({e}); encode the image file's bytes with "
                           "standard base64", param="messages") from e


def fetch_bytes(url: str, limits: Limits, where: str) -> bytes:
    """The body at `url`, read no further than the byte limit."""
    import httpx

    data = bytearray()
    try:
        with httpx.stream("GET", url, timeout=limits.url_timeout_s, follow_redirects=True) as response:
            if response.status_code >= 400:
                raise RequestError(f"{where}: image URL {url!r} answered HTTP {response.status_code}; check the "
                                   "address", param="messages")
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > limits.max_image_bytes:
                    raise too_many_bytes(len(data), limits, where, at_least=True)
    except httpx.HTTPError as e:  # refused, unreachable, timed out, bad URL
        raise RequestError(f"{where}: image URL {url!r} cannot be fetched ({type(e).__name__}: {e}); check the "
                           "address, or send the image inline as a data: URL", param="messages") from e
    return bytes(data)


def decode_image(data: bytes, limits: Limits, where: str) -> Image.Image:
    """The image in `data`, its EXIF orientation applied and in RGB as training decodes a record's image
    (molmini/data/images.py's `as_rgb`, for either model family); its size is checked from the header,
    before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        pixels = image.width * image.height
        if pixels <= limits.max_image_pixels:
            image.load()
    except Image.DecompressionBombError as e:  # past PIL's own limit, which a large --max-image-pixels can be
        raise RequestError(f"{where} is too large for PIL to decode ({e}); send a smaller image",
                           param="messages") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise RequestError(f"{where} is not an image PIL can read ({type(e).__name__}: {e}); send a PNG, JPEG or "
                           "other image file's bytes", param="messages") from e
    if pixels > limits.max_image_pixels:
        raise RequestError(f"{where} is {image.width}x{image.height} = {pixels} pixels, over this server's limit of "
                           f"{limits.max_image_pixels} (--max-image-pixels); send a smaller image", param="messages")
    return as_rgb(image)


def too_many_bytes(size: int, limits: Limits, where: str, at_least: bool = False) -> RequestError:
    return RequestError(f"{where} is {'over ' if at_least else ''}{size} bytes, over this server's limit of "
                        f"{limits.max_image_bytes} bytes per image (--max-image-bytes); send a smaller image",
                        param="messages")


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}", param=name)
    return value


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{name} must be a number from {low} to {high}, got {value!r}", param=name)
    return float(value)
