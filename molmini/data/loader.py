"""The batches a training run reads: shards streamed in a resumable, shuffled order (molmini.data.stream), each
record formatted (molmini.data.formatter) and processed into model inputs by the model's processor, optionally
packed several to a row (molmini.data.packing), collated into padded tensors with what rides along (BatchInfo:
the stream's bad-record counts and positions for resume, the records' keys).

The path of one sample: shard_reader.py reads it from its shard into records.py's checked Record,
stream.py orders it, formatter.py chooses the conversation it teaches, processor.py turns image and text
into crops, token ids and labels, packing.py and the processor's collate make the batch, and model.py's
forward with loss.py turns it into the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from molmini.config import Config
from molmini.data.formatter import training_transform
from molmini.data.packing import pack_samples
from molmini.data.reader import SkipReport
from molmini.data.records import UnusableDataError
from molmini.data.stream import MixtureStream, ShardStream, StreamPosition


@dataclass
class BatchInfo:
    """What rides with a batch besides the model inputs: the stream's running bad-record counts and its
    positions (for resume), and the records' keys."""
    skipped: list[SkipReport]
    position: list[tuple]
    keys: list[str]


def next_batch(batches: Iterator[tuple]) -> tuple[dict[str, torch.Tensor], "BatchInfo"]:
    """The next batch; a DataLoader worker's UnusableDataError comes back as one, with its one-line message
    (the loader wraps it in the worker's traceback)."""
    try:
        return next(batches)
    except UnusableDataError as e:
        raise UnusableDataError(str(e).rpartition("UnusableDataError: ")[2].strip() or str(e)) from None


def make_loader(shards: list[str] | list[tuple[list[str], float]], processor, cfg: Config, rank: int, world: int,
                workers: int, *, shuffle: bool, resume: StreamPosition | None = None) -> torch.utils.data.DataLoader:
    """Batches of processed records from a list of shards, or from a weighted mixture of shard sets given as
    (shards, weight) pairs (`data.mixture`)."""
    transform = training_transform(processor, cfg.data.transcript_prob, cfg.data.train_questions)
    buffer = cfg.data.shuffle_buffer if shuffle else 0
    if shards and isinstance(shards[0], tuple):
        stream = MixtureStream(shards, transform, shuffle_buffer=buffer, seed=cfg.train.seed, rank=rank,
                               world_size=world, resume=resume)
    else:
        stream = ShardStream(shards, transform, shuffle_buffer=buffer, seed=cfg.train.seed, endless=True, rank=rank,
                             world_size=world, resume=resume)
    def collate(samples: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], BatchInfo]:
        rows = pack_samples(samples, cfg.data.max_length) if cfg.data.packing else samples
        batch = processor.collate(rows)
        info = BatchInfo(skipped=[x["skipped"] for x in samples], position=[x["position"] for x in samples],
                         keys=[x.get("key", "") for x in samples])
        batch.pop("keys")
        return batch, info

    return torch.utils.data.DataLoader(stream, batch_size=cfg.train.batch_size, num_workers=workers,
                                       collate_fn=collate, persistent_workers=workers > 0)
