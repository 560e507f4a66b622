"""The formatter: a record -> the conversation trained on, then the processor's model inputs.

Molmo keeps preprocessor, formatter and collator apart; this is the middle one. It decides what a record
teaches in each epoch: its question/answer pairs in a fresh order, and sometimes the image's transcript.
"""
from __future__ import annotations

import random
from typing import Any

from molmini.data.records import Record, RecordError

TRANSCRIBE_PROMPT = "Transcribe the text of this image."


def training_transform(processor, transcript_prob: float = 0.0, questions: bool = True):
    """Record -> model inputs; the order of a record's question/answer pairs is shuffled each time it is
    seen, so every question type is learned both as the first turn and after others. With probability
    `transcript_prob` a record's `meta.transcript` joins as a last exchange: dense supervision on what
    the image shows, which is what teaches a from-scratch model to read (shared reference).
    `questions=False` trains on the transcript alone, every time: caption pretraining."""

    def transform(record: Record, rng: random.Random) -> dict[str, Any]:
        pairs = [record.messages[i:i + 2] for i in range(0, len(record.messages) - 1, 2)]
        rng.shuffle(pairs)
        transcript = record.meta.get("transcript")
        if not questions:
            if not transcript:
                raise RecordError(f"record {record.key!r} has no meta.transcript to caption-train on "
                                  "(data.train_questions=false)", "no_transcript")
            pairs = []
        if transcript and (not questions or rng.random() < transcript_prob):
            # Last, so no question can copy its answer from the transcript (there is none at test time).
            pairs.append([{"role": "user", "content": TRANSCRIBE_PROMPT},
                          {"role": "assistant", "content": transcript}])
        messages = [dict(m) for pair in pairs for m in pair]
        return processor.process_record(record, messages)

    return transform
