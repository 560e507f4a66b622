"""Images as users pass them: a file path, an http(s) URL or a PIL image, loaded with transformers'
`load_image` (which also applies the EXIF orientation and converts to RGB). Each failure is one error
that names the input: a missing file, a file that is not an image, a URL that cannot be fetched or does
not hold an image."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

from PIL import Image, UnidentifiedImageError

ImageInput = Union[Image.Image, str, Path]
SINGLE_IMAGE = (Image.Image, str, Path)  # what load_image opens: one image, not a list of them
URL_TIMEOUT_S = 30.0
SOURCES = "pass an image file, an http(s) URL or a PIL image"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def load_image(source: ImageInput, timeout: float = URL_TIMEOUT_S) -> Image.Image:
    """The RGB image at `source` (a path, an http(s) URL or a PIL image)."""
    from transformers.image_utils import load_image as transformers_load_image

    if isinstance(source, Image.Image):
        return transformers_load_image(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"image {source!r} is a {type(source).__name__}; {SOURCES}")
    source = os.fspath(source)
    if is_url(source):
        return transformers_load_image(_fetch(source, timeout))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image {source!r} does not exist; {SOURCES}")
    if not path.is_file():
        raise IsADirectoryError(f"image {source!r} is a folder, not an image file; {SOURCES}")
    try:
        return transformers_load_image(source)
    except PermissionError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL: not an image, or truncated
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
