"""Curation filters over `Record`s: the `Filter` base every curation step is, the image measurements they
share (size, perceptual hash; cached so several filters decode an image once) and the quality filters
(image size and aspect, empty or garbled text, answer length, repeated n-grams). Deduplication is in
dedup.py, decontamination against evaluation sets in decontaminate.py, the driver in curate.py.

A filter's `apply(record)` returns ``(record, None)`` to keep a record (possibly with fewer exchanges) or
``(None, why)`` to drop it. Text checks judge every message (or every answer); one failing message drops
the whole record.
"""
from __future__ import annotations

import io
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any, Iterator

import imagehash
from PIL import Image

from molmini.data.records import Record, strip_image_marker

# imagehash.phash with hash_size=16: 256 bits. The usual 64-bit hash cannot tell copies from different
# charts: on the synthetic charts, re-encoded or rescaled copies differ by <= 4 of 64 bits, but so do some
# distinct pie charts; with 256 bits copies differ by <= 12 and distinct charts by >= 34.
HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
DEFAULT_HASH_THRESHOLD = 16
ALLOWED_CONTROL = {"\n", "\t", "\r"}


# ---- shared image measurements (cached, so that several filters decode an image once) --------------------

@lru_cache(maxsize=8)
def image_size(image: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    return Image.open(io.BytesIO(image)).size


@lru_cache(maxsize=8)
def perceptual_hash(image: bytes) -> int:
    """The 256-bit DCT perceptual hash (imagehash.phash, hash_size 16) of an image, as an int."""
    img = Image.open(io.BytesIO(image))
    img.draft("L", (256, 256))  # JPEGs decode at reduced scale: phash looks at 64x64 pixels anyway
    return int(str(imagehash.phash(img, hash_size=HASH_SIZE)), 16)


# ---- filters ----------------------------------------------------------------------------------------------

class Filter:
    """A curation step. Subclasses set `name` and implement `reject` (why to drop, or None); the keyword
    arguments given to `__init__` are the parameters the report shows (each subclass keeps them too)."""
    name = "filter"
    judges_image = False  # True for filters of the image: they pass a text-only record (nothing to judge)

    def __init__(self, **params: Any) -> None:
        self.counts: Counter[str] = Counter()  # extra numbers for the report (beyond records dropped)
        self._params = params  # what the report shows; each subclass also keeps its own as attributes

    def apply(self, record: Record) -> tuple[Record | None, str | None]:
        if self.judges_image and record.image is None:
            return record, None
        why = self.reject(record)
        return (record, None) if why is None else (None, why)

    def reject(self, record: Record) -> str | None:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return dict(self._params)


def _size_or_reason(record: Record) -> tuple[tuple[int, int] | None, str | None]:
    try:
        return image_size(record.image), None
    except Exception as e:  # PIL raises several unrelated types for bad bytes
        return None, f"image header cannot be read ({type(e).__name__})"


def _phash_or_reason(record: Record) -> tuple[int | None, str | None]:
    try:
        return perceptual_hash(record.image), None
    except Exception as e:
        return None, f"image cannot be decoded ({type(e).__name__}: {e})"


class MinImageSize(Filter):
    """Drops images whose shorter side is under `min_side` pixels (or whose header cannot be read)."""
    name = "min_image_size"
    judges_image = True

    def __init__(self, min_side: int = 32) -> None:
        super().__init__(min_side=min_side)
        self.min_side = min_side

    def reject(self, record: Record) -> str | None:
        size, why = _size_or_reason(record)
        if size and min(size) < self.min_side:
            why = f"{size[0]}x{size[1]} has a side under {self.min_side} px"
        return why


class MaxAspectRatio(Filter):
    """Drops images whose longer side is more than `max_ratio` times the shorter one."""
    name = "max_aspect_ratio"
    judges_image = True

    def __init__(self, max_ratio: float = 4.0) -> None:
        super().__init__(max_ratio=max_ratio)
        self.max_ratio = max_ratio

    def reject(self, record: Record) -> str | None:
        size, why = _size_or_reason(record)
        if size and max(size) / max(1, min(size)) > self.max_ratio:
            why = f"{size[0]}x{size[1]} has aspect ratio {max(size) / max(1, min(size)):.1f} > {self.max_ratio}"
        return why


def garbled_fraction(text: str) -> float:
    """The fraction of characters that are U+FFFD replacement characters or non-printable (control,
    format, private-use, unassigned or surrogate code points; newlines and tabs are fine)."""
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (ch not in ALLOWED_CONTROL and unicodedata.category(ch)[0] == "C"))
    return bad / len(text)


class EmptyOrGarbledText(Filter):
    """Drops records with an empty message (the image marker aside) or one whose garbled fraction exceeds
    `max_garbled_fraction`."""
    name = "empty_or_garbled_text"

    def __init__(self, max_garbled_fraction: float = 0.3) -> None:
        super().__init__(max_garbled_fraction=max_garbled_fraction)
        self.max_garbled_fraction = max_garbled_fraction

    def reject(self, record: Record) -> str | None:
        for i, message in enumerate(record.messages):
            text = strip_image_marker(message["content"])
            if not text:
                return f"message {i} ({message['role']}) is empty"
            fraction = garbled_fraction(text)
            if fraction > self.max_garbled_fraction:
                return f"message {i} ({message['role']}) is {fraction:.0%} unprintable or replacement characters"
        return None


def answers(record: Record) -> Iterator[tuple[int, str]]:
    """(message index, text) of each assistant message."""
    return ((i, m["content"]) for i, m in enumerate(record.messages) if m["role"] == "assistant")


class AnswerLength(Filter):
    """Drops records with an answer shorter than `min_chars` or longer than `max_chars` (stripped)."""
    name = "answer_length"

    def __init__(self, min_chars: int = 1, max_chars: int = 4000) -> None:
        super().__init__(min_chars=min_chars, max_chars=max_chars)
        self.min_chars, self.max_chars = min_chars, max_chars

    def reject(self, record: Record) -> str | None:
        for i, text in answers(record):
            length = len(text.strip())
            if not self.min_chars <= length <= self.max_chars:
                return f"answer in message {i} has {length} characters, outside [{self.min_chars}, {self.max_chars}]"
        return None


def repeated_ngram(words: list[str], max_n: int, min_repeats: int) -> tuple[str, int] | None:
    """The first n-gram (n <= max_n) found `min_repeats` or more times back to back in `words`, with how
    many times it repeats there; None if there is none.

    Linear in len(words) per n: an n-gram repeated r times is a run of (r - 1) * n positions j where
    words[j] == words[j + n].
    """
    for n in range(1, max_n + 1):
        run = 0
        for j in range(len(words) - n):
            run = run + 1 if words[j] == words[j + n] else 0
            if run // n + 1 >= min_repeats:
                start, end = j - run + 1, j
                while end + 1 + n < len(words) and words[end + 1] == words[end + 1 + n]:
                    end += 1
                return " ".join(words[start:start + n]), (end - start + 1) // n + 1
    return None


class RepeatedNgrams(Filter):
    """Drops records with a degenerate answer: some n-gram (n <= `max_n` words) repeated `max_repeats` or
    more times back to back, like "the the the the"."""
    name = "repeated_ngrams"

    def __init__(self, max_n: int = 4, max_repeats: int = 4) -> None:
        super().__init__(max_n=max_n, max_repeats=max_repeats)
        self.max_n, self.max_repeats = max_n, max_repeats

    def reject(self, record: Record) -> str | None:
        for i, text in answers(record):
            found = repeated_ngram(text.lower().split(), self.max_n, self.max_repeats)
            if found:
                return f"answer in message {i} repeats {found[0]!r} {found[1]} times in a row"
        return None
