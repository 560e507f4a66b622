"""Curation: composable filters over `Record`s, each counting what it drops, and the report they make.

A filter's `apply(record)` returns ``(record, None)`` to keep a record (possibly with fewer exchanges) or
``(None, why)`` to drop it. `curate` runs records through a list of filters in order; a record dropped by
one filter is not seen by the next. Deduplication filters remember every record they pass, so they belong
last: a record they remember but a later filter drops would still shadow its duplicates.

Text checks judge every message (or every answer); one failing message drops the whole record. The one
exception is `EvalQAOverlap`, which removes only the exchanges that also occur in an evaluation set.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from data_pipelines.decontaminate import EvalImageOverlap, EvalQAOverlap, EvalSet, load_eval_set, normalise_text
from data_pipelines.dedup import ExactDuplicates, HammingIndex, NearDuplicates
from data_pipelines.filters import (DEFAULT_HASH_THRESHOLD, HASH_BITS, HASH_SIZE, AnswerLength, EmptyOrGarbledText,
                                    Filter, MaxAspectRatio, MinImageSize, RepeatedNgrams, answers, garbled_fraction,
                                    image_size, perceptual_hash, repeated_ngram)
from data_pipelines.report import CurationReport, FilterResult, write_report
from molmini.data.records import Record

# The filters and helpers live in filters.py, dedup.py and decontaminate.py; they are importable from here
# too, as the curation API.
__all__ = ["AnswerLength", "CurationReport", "DEFAULT_HASH_THRESHOLD", "EmptyOrGarbledText", "EvalImageOverlap",
           "EvalQAOverlap", "EvalSet", "ExactDuplicates", "FILTER_NAMES", "Filter", "FilterResult", "HASH_BITS",
           "HASH_SIZE", "HammingIndex", "MaxAspectRatio", "MinImageSize", "NearDuplicates", "RepeatedNgrams",
           "answers", "curate", "garbled_fraction", "image_size", "load_eval_set", "normalise_text",
           "perceptual_hash", "repeated_ngram", "standard_filters", "write_report"]

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
