"""Deduplication filters: exact copies (same image bytes) and near copies (perceptual hashes within a
Hamming radius, found through a banded index instead of comparing all pairs). They remember every record
they pass, so they run last in a curation (curate.standard_filters)."""
from __future__ import annotations

import hashlib

from data_pipelines.filters import DEFAULT_HASH_THRESHOLD, HASH_BITS, Filter, _phash_or_reason
from molmini.data.records import Record


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

    def band_values(self, value: int) -> list[int]:
        """The value of each band of `value`, in band order (`find` searches the bands in that order)."""
        return [(value >> shift) & mask for shift, mask in self._bands]

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


class ExactDuplicates(Filter):
    """Drops a record whose image bytes (sha256) equal those of a record seen before."""
    name = "exact_duplicates"
    judges_image = True

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
    judges_image = True

    def __init__(self, threshold: int = DEFAULT_HASH_THRESHOLD) -> None:
        super().__init__(threshold=threshold)
        self.threshold = threshold
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
