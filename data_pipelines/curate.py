"""Curation: composable filters over `Record`s, each counting what it drops, and the report they make.

A filter's `apply(record)` returns ``(record, None)`` to keep a record (possibly with fewer exchanges) or
``(None, why)`` to drop it. `curate` runs records through a list of filters in order; a record dropped by
one filter is not seen by the next. Deduplication filters remember every record they pass, so they belong
last: a record they remember but a later filter drops would still shadow its duplicates.

Text checks judge every message (or every answer); one failing message drops the whole record. The one
exception is `EvalQAOverlap`, which removes only the exchanges that also occur in an evaluation set.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import imagehash
from PIL import Image

from data_pipelines.report import CurationReport, FilterResult, write_report  # noqa: F401 (write_report: part of this API)
from molmini.data import IMAGE_MARKER, BadRecords, Record, find_shards, read_records, strip_image_marker

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


class HammingIndex:
    """`bits`-bit hashes, searchable for a stored hash within `radius` differing bits.

    Each hash is split into radius+1 bands; two hashes within `radius` bits agree exactly on at least one
    band (pigeonhole), so a query compares only against hashes sharing a band with it, not all of them.
    """

    def __init__(self, radius: int, bits: int = HASH_BITS) -> None:
        if not 0 <= radius < bits:
            raise ValueError(f"Hamming radius must be in [0, {bits}), got {radius}")
        self.radius = radius
        bands = radius + 1
        edges = [bits * i // bands for i in range(bands + 1)]
        self._bands = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]  # (shift, mask)
        self._buckets: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self._bands]
        self.size = 0

    def add(self, value: int, label: str) -> None:
        for bucket, (shift, mask) in zip(self._buckets, self._bands):
            bucket.setdefault((value >> shift) & mask, []).append((value, label))
        self.size += 1

    def find(self, value: int) -> tuple[str, int] | None:
        """(label, distance) of the first stored hash within `radius` bits of `value`, or None."""
        for bucket, (shift, mask) in zip(self._buckets, self._bands):
            for other, label in bucket.get((value >> shift) & mask, ()):
                distance = (value ^ other).bit_count()
                if distance <= self.radius:
                    return label, distance
        return None


# ---- filters ----------------------------------------------------------------------------------------------

class Filter:
    """A curation step. Subclasses set `name` and implement `reject` (why to drop, or None); the keyword
    arguments given to `__init__` become attributes and the parameters the report shows."""
    name = "filter"

    def __init__(self, **params: Any) -> None:
        self.counts: Counter[str] = Counter()  # extra numbers for the report (beyond records dropped)
        self._params = params
        vars(self).update(params)

    def apply(self, record: Record) -> tuple[Record | None, str | None]:
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

    def __init__(self, min_side: int = 32) -> None:
        super().__init__(min_side=min_side)

    def reject(self, record: Record) -> str | None:
        size, why = _size_or_reason(record)
        if size and min(size) < self.min_side:
            why = f"{size[0]}x{size[1]} has a side under {self.min_side} px"
        return why


class MaxAspectRatio(Filter):
    """Drops images whose longer side is more than `max_ratio` times the shorter one."""
    name = "max_aspect_ratio"

    def __init__(self, max_ratio: float = 4.0) -> None:
        super().__init__(max_ratio=max_ratio)

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

    def reject(self, record: Record) -> str | None:
        for i, text in answers(record):
            found = repeated_ngram(text.lower().split(), self.max_n, self.max_repeats)
            if found:
                return f"answer in message {i} repeats {found[0]!r} {found[1]} times in a row"
        return None


class ExactDuplicates(Filter):
    """Drops a record whose image bytes (sha256) equal those of a record seen before."""
    name = "exact_duplicates"

    def __init__(self) -> None:
        super().__init__()
        self._first_key: dict[bytes, str] = {}

    def reject(self, record: Record) -> str | None:
        digest = hashlib.sha256(record.image).digest()
        first = self._first_key.setdefault(digest, record.key)
        return None if first == record.key else f"same image bytes as {first}"


class NearDuplicates(Filter):
    """Drops a record whose image's perceptual hash is within `threshold` bits of one seen before."""
    name = "near_duplicates"

    def __init__(self, threshold: int = DEFAULT_HASH_THRESHOLD) -> None:
        super().__init__(threshold=threshold)
        self.index = HammingIndex(threshold)

    def reject(self, record: Record) -> str | None:
        value, why = _phash_or_reason(record)
        if why:
            return why
        match = self.index.find(value)
        if match:
            return f"perceptual hash {match[1]} bits from {match[0]}"
        self.index.add(value, record.key)
        return None


def normalise_text(text: str) -> str:
    """Text as compared for decontamination: no image marker, NFKC, lower case, punctuation as spaces,
    whitespace collapsed."""
    text = unicodedata.normalize("NFKC", strip_image_marker(text)).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


@dataclass
class EvalSet:
    """What decontamination compares against: evaluation images' perceptual hashes and normalised QA pairs."""
    hashes: HammingIndex
    qa_pairs: set[tuple[str, str]] = field(default_factory=set)
    records: int = 0
    unreadable: int = 0


def load_eval_set(folders: Iterable[str | os.PathLike], threshold: int = DEFAULT_HASH_THRESHOLD) -> EvalSet:
    """Read every record of the shard folders into an EvalSet (hashes searchable within `threshold` bits)."""
    evals = EvalSet(hashes=HammingIndex(threshold))
    for folder in folders:
        bad = BadRecords()
        for record in read_records(find_shards(folder), bad):
            evals.records += 1
            value, why = _phash_or_reason(record)
            if value is not None:
                evals.hashes.add(value, f"{Path(folder).name}/{record.key}")
            else:
                evals.unreadable += 1
            evals.qa_pairs.update((normalise_text(q), normalise_text(a)) for q, a in record.qa_pairs())
        evals.unreadable += bad.total
    return evals


class EvalImageOverlap(Filter):
    """Drops a training record whose image is within the eval set's Hamming threshold of an evaluation image."""
    name = "eval_image_overlap"

    def __init__(self, evals: EvalSet) -> None:
        super().__init__()
        self.evals = evals

    def reject(self, record: Record) -> str | None:
        value, why = _phash_or_reason(record)
        if why:
            return why
        match = self.evals.hashes.find(value)
        return f"perceptual hash {match[1]} bits from evaluation image {match[0]}" if match else None

    def params(self) -> dict[str, Any]:
        return {"threshold": self.evals.hashes.radius, "eval_images": self.evals.hashes.size}


class EvalQAOverlap(Filter):
    """Removes exchanges whose normalised (question, answer) also occurs in the eval set; drops the record
    when none is left. Generic pairs ("What type of chart is this?", "bar") match too: skip this filter
    for templated data whose evaluation split shares its templates (on synthetic charts, 300 training
    images against 100 test images lose 85 records and 1235 exchanges to it)."""
    name = "eval_qa_overlap"

    def __init__(self, evals: EvalSet) -> None:
        super().__init__()
        self.evals = evals

    def apply(self, record: Record) -> tuple[Record | None, str | None]:
        kept, removed = [], []  # indexes of the exchanges' user messages
        for (question, answer), i in zip(record.qa_pairs(), range(0, len(record.messages), 2)):
            pair = (normalise_text(question), normalise_text(answer))
            (removed if pair in self.evals.qa_pairs else kept).append(i)
        if not removed:
            return record, None
        self.counts["exchanges_removed"] += len(removed)
        if not kept:
            return None, f"all {len(removed)} question/answer pairs occur in the evaluation set"
        self.counts["records_trimmed"] += 1
        messages = []
        for n, i in enumerate(kept):
            user, assistant = dict(record.messages[i]), record.messages[i + 1]
            if n == 0 and i != 0:  # the image marker stays with the first user turn
                user["content"] = _move_marker(record.messages[0]["content"], user["content"])
            messages += [user, assistant]
        return Record(key=record.key, image=record.image, messages=messages, source=record.source,
                      task=record.task, meta=record.meta, image_ext=record.image_ext), None

    def params(self) -> dict[str, Any]:
        return {"eval_qa_pairs": len(self.evals.qa_pairs)}


def _move_marker(old_first: str, new_first: str) -> str:
    """The new first user turn, given the image marker if the old first turn had it."""
    return IMAGE_MARKER + new_first if IMAGE_MARKER in old_first and IMAGE_MARKER not in new_first else new_first


# ---- running and reporting --------------------------------------------------------------------------------

def curate(records: Iterable[Record], filters: list[Filter],
           max_examples: int = 10) -> tuple[Iterator[Record], CurationReport]:
    """(kept records, report), the report keeping up to `max_examples` example keys per filter. Records
    stream through lazily: the report is complete once the returned iterator is exhausted."""
    report = CurationReport([FilterResult(f.name, f.params(), f.counts) for f in filters])

    def kept() -> Iterator[Record]:
        for record in records:
            report.seen += 1
            key = record.key
            for step, result in zip(filters, report.filters):
                record, why = step.apply(record)
                if record is None:
                    result.dropped += 1
                    if len(result.examples) < max_examples:
                        result.examples.append({"key": key, "why": why})
                    break
            else:
                report.kept += 1
                yield record

    return kept(), report


FILTER_NAMES = [c.name for c in (MinImageSize, MaxAspectRatio, EvalImageOverlap, EvalQAOverlap, EmptyOrGarbledText,
                                 AnswerLength, RepeatedNgrams, ExactDuplicates, NearDuplicates)]


def standard_filters(*, min_image_side: int = 32, max_aspect_ratio: float = 4.0,
                     max_garbled_fraction: float = 0.3, min_answer_chars: int = 1, max_answer_chars: int = 4000,
                     max_ngram: int = 4, max_repeats: int = 4,
                     near_dup_threshold: int = DEFAULT_HASH_THRESHOLD,
                     evals: EvalSet | None = None, skip: Iterable[str] = ()) -> list[Filter]:
    """The usual pipeline, cheapest checks first and deduplication last; the decontamination filters only
    when `evals` is given. Filters named in `skip` are left out."""
    filters: list[Filter] = [MinImageSize(min_image_side), MaxAspectRatio(max_aspect_ratio)]
    if evals is not None:
        filters += [EvalImageOverlap(evals), EvalQAOverlap(evals)]
    filters += [EmptyOrGarbledText(max_garbled_fraction), AnswerLength(min_answer_chars, max_answer_chars),
                RepeatedNgrams(max_ngram, max_repeats), ExactDuplicates(), NearDuplicates(near_dup_threshold)]
    unknown = set(skip) - set(FILTER_NAMES)
    if unknown:
        raise ValueError(f"unknown filter name(s) to skip: {sorted(unknown)}; known: {FILTER_NAMES}")
    return [f for f in filters if f.name not in set(skip)]
