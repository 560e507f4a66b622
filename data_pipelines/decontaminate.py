"""Decontamination against evaluation sets: drop training images that are near copies of evaluation
images, and remove question/answer exchanges that also occur (normalised) in an evaluation set, keeping
the rest of the record."""
from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from data_pipelines.dedup import HammingIndex
from data_pipelines.filters import DEFAULT_HASH_THRESHOLD, Filter, _phash_or_reason
from molmini.data.reader import BadRecords, find_shards, read_records
from molmini.data.records import IMAGE_MARKER, Record, strip_image_marker


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
    judges_image = True

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
        return dataclasses.replace(record, messages=messages), None  # every image kept

    def params(self) -> dict[str, Any]:
        return {"eval_qa_pairs": len(self.evals.qa_pairs)}


def _move_marker(old_first: str, new_first: str) -> str:
    """The new first user turn, given the image marker if the old first turn had it."""
    return IMAGE_MARKER + new_first if IMAGE_MARKER in old_first and IMAGE_MARKER not in new_first else new_first
