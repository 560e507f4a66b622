"""Images, decoded one way everywhere: the record reader's images (training, eval, curate, inspect), the
images users pass to `generate` (a file path, an http(s) URL or a PIL image) and the images `serve` is sent
all go through `as_rgb`, which applies the EXIF orientation (as PIL's `ImageOps.exif_transpose` and
transformers' `load_image` do) and converts to RGB. A phone's portrait JPEG is stored landscape with
orientation 6; decoding it one way for training and another for serving would train a model on pixels it
never sees at inference. Each failure to load a user's image is one error that names the input: a missing
file, a file that is not an image, a URL that cannot be fetched or does not hold an image."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[Image.Image, str, Path]
SINGLE_IMAGE = (Image.Image, str, Path)  # what load_image opens: one image, not a list of them
URL_TIMEOUT_S = 30.0
SOURCES = "pass an image file, an http(s) URL or a PIL image"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels are to be turned for display


def as_rgb(image: Image.Image) -> Image.Image:
    """`image` as a viewer shows it: its EXIF orientation applied (the tag is then dropped, so a second call
    changes nothing) and in RGB. An upright RGB image is returned as it is, not copied (the training stream
    calls this for every record)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(data: bytes) -> Image.Image:
    """The image encoded in `data` (PNG, JPEG, WebP, ...) decoded in full and passed through `as_rgb`: the one
    decoding of an image's bytes. PIL's own errors pass through; each caller names what it was decoding."""
    image = Image.open(io.BytesIO(data))
    image.load()  # inside the callers' error handling: some modes (16-bit, CMYK variants) fail only here
    return as_rgb(image)


def load_image(source: ImageInput, timeout: float = URL_TIMEOUT_S) -> Image.Image:
    """The RGB image at `source` (a path, an http(s) URL or a PIL image), its EXIF orientation applied."""
    if isinstance(source, Image.Image):
        return as_rgb(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"image {source!r} is a {type(source).__name__}; {SOURCES}")
    source = os.fspath(source)
    if is_url(source):
        return as_rgb(_fetch(source, timeout))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image {source!r} does not exist; {SOURCES}")
    if not path.is_file():
        raise IsADirectoryError(f"image {source!r} is a folder, not an image file; {SOURCES}")
    data = path.read_bytes()  # a PermissionError passes through as itself
    try:
        return decode_image(data)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL: not an image, or truncated
        raise ValueError(f"image {source!r} is not an image PIL can read ({type(e).__name__}: {e}); "
                         "pass a PNG, JPEG or other image file") from e


def _fetch(url: str, timeout: float) -> Image.Image:
    """The image at `url`, fetched with httpx (what transformers fetches with), status checked so that an
    error page is reported as such rather than as an undecodable image."""
    try:  # httpx, or where it is not installed huggingface_hub's own copy of it (httpx2), which transformers uses
        import httpx
    except ImportError:
        from huggingface_hub.utils import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPStatusError as e:
        raise ConnectionError(f"image URL {url!r} answered HTTP {e.response.status_code}; check the address") from e
    except httpx.HTTPError as e:  # refused, unreachable, timed out, bad URL
        raise ConnectionError(f"image URL {url!r} cannot be fetched ({type(e).__name__}: {e}); check the address "
                              "and the network, or download the image and pass the file") from e
    try:
        image = Image.open(io.BytesIO(response.content))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        kind = response.headers.get("content-type", "unknown type")
        raise ValueError(f"image URL {url!r} did not return an image PIL can read ({kind}, "
                         f"{len(response.content)} bytes: {type(e).__name__}: {e})") from e
    return image
