"""Packing: several processed records in one sequence of up to `data.max_length` tokens, so a batch of
short records is not mostly padding.

Each record of a packed row keeps its own segment id (1, 2, ...) and position ids restarting at 0, so the
model's block-diagonal causal mask (model.annotation_mask: a token sees its own segment only, padding is
segment -1) and its rotary positions make every record compute exactly what it would alone. Labels are
concatenated as they are: a record's first token carries no label, so no loss crosses a boundary, and the
loss is still normalised by the global batch's answer tokens. Packing happens within each loader batch
(first-fit decreasing), so the stream, its resume positions and the samples per step are unchanged: the
same records, in fewer and fuller rows. Raise `train.batch_size` to use the room it frees.
"""
from __future__ import annotations

from typing import Any, Sequence

from molmini.data.processor import _stack_images


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the samples in each row: first-fit decreasing, ties in the stream's order, rows in the
    order of their first sample. A sample longer than `capacity` gets a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, left in enumerate(room):
            if lengths[i] <= left:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return sorted((sorted(row) for row in rows), key=lambda row: row[0])


def pack_samples(samples: Sequence[dict[str, Any]], capacity: int) -> list[dict[str, Any]]:
    """Merge processed samples (molmini's processor output) into packed samples the processor's collate
    pads into a batch: one segment per record, positions restarting per record, images joined in order."""
    for s in samples:
        if "segment_ids" in s:
            raise ValueError("data.packing needs model.multi_annotation=turns: a masked multi-annotation sample has "
                             "its own segments (its shared prefix is segment 0, seen by all of them)")
    packed = []
    for row in pack_rows([len(s["input_ids"]) for s in samples], capacity):
        group = [samples[i] for i in row]
        merged: dict[str, Any] = {"input_ids": [], "labels": [], "segment_ids": [], "position_ids": []}
        for segment, s in enumerate(group, start=1):
            n = len(s["input_ids"])
            merged["input_ids"] += s["input_ids"]
            merged["labels"] += s["labels"]
            merged["segment_ids"] += [segment] * n
            merged["position_ids"] += list(range(n))
        merged.update(_stack_images(group), key="+".join(s.get("key", "") for s in group))
        packed.append(merged)
    return packed


def padding_fraction(lengths: Sequence[int], rows: Sequence[Sequence[int]]) -> float:
    """The share of a batch's token slots that are padding when `rows` are padded to the longest row."""
    longest = max(sum(lengths[i] for i in row) for row in rows)
    return 1.0 - sum(lengths) / (longest * len(rows))
