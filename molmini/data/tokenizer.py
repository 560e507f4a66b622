"""Tokenizers: a BPE trained on the training text for from-scratch LMs, or a pretrained LM's own, both
carrying molmini's special tokens (chat roles and image layout)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

from molmini.data.chat_format import MOLMINI_CHAT_TEMPLATE
from molmini.data.reader import BadRecords, no_usable_record, read_records
from molmini.progress import bars_enabled

if TYPE_CHECKING:
    from molmini.config import Config

PAD = "<pad>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # ends every turn; generation stops on it
IMAGE_START = "<im_start>"
IMAGE_END = "<im_end>"
IMAGE_PATCH = "<im_patch>"  # one per pooled image feature; replaced by that feature in the model
# Ends each row of pooled patches, so the LM sees the grid's shape. The token keeps Molmo's name for it
# (`<im_col>`, "column separator"), which saved tokenizers hold; the constant says what it does.
IMAGE_ROW_END = "<im_col>"
SPECIAL_TOKENS = [PAD, USER, ASSISTANT, END, IMAGE_START, IMAGE_END, IMAGE_PATCH, IMAGE_ROW_END]


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, split_digits: bool = False,
                        progress: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (any string still encodes), with molmini's special tokens.
    `split_digits`: every digit is a token of its own, as in Llama's and Qwen's tokenizers, so a number
    is read and written digit by digit (ten shared classes) instead of each value being a token.
    `progress`: the trainer's own bars on stderr (texts read, merges)."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=END)
    fast.chat_template = MOLMINI_CHAT_TEMPLATE  # saved with the tokenizer; see molmini/data/chat_format.py
    return fast


def add_special_tokens(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Add molmini's tokens to a pretrained LM's tokenizer (the LM's embeddings must then be resized). Its
    own chat template and pad token stay: turns are laid out in the LM's format (molmini/data/chat_format.py)."""
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS
                                                                if t not in tokenizer.get_vocab()]},
                                 replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    # The tokenizer is its own files alone: a blank config keeps AutoTokenizer from reading config.json, a molmini
    # model config that names remote code (molmini/auto/classes.py), which it would ask whether to run.
    tok = AutoTokenizer.from_pretrained(path, config=PretrainedConfig())
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer at {path!r} lacks molmini's special tokens {missing}; "
                         "it was not saved by molmini (use molmini.data.tokenizer.add_special_tokens first)")
    return tok


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


# ---- the tokenizer of a run ----------------------------------------------------------------------------

def iter_shard_texts(shards: list[str], transcripts: bool = False) -> Iterator[str]:
    """Every message of every usable record (and its meta.transcript if asked), read through the record
    reader (images stay undecoded); the bad records are left to the stream, which counts and reports them.
    No usable record at all stops here, before a tokenizer is trained on nothing."""
    bad = BadRecords(on_skip=lambda skip: None)
    found = False
    for record in read_records(shards, bad):
        found = True
        yield from (m["content"] for m in record.messages)
        if transcripts and record.meta.get("transcript"):
            yield record.meta["transcript"]
    if not found:
        raise no_usable_record("no readable record to train the tokenizer on", shards, bad)


def build_tokenizer(cfg: "Config", train_shards: list[str]):
    """The run's tokenizer: the pretrained LM's own (with molmini's special tokens), or a BPE trained on the
    training shards' text (and transcripts when the run trains on them)."""
    if cfg.model.lm.name_or_path:
        return add_special_tokens(AutoTokenizer.from_pretrained(cfg.model.lm.name_or_path))
    texts = iter_shard_texts(train_shards, transcripts=cfg.data.transcript_prob > 0 or not cfg.data.train_questions)
    return train_bpe_tokenizer(texts, cfg.model.tokenizer.vocab_size, cfg.model.tokenizer.split_digits,
                               progress=bars_enabled())  # every process trains it; the main one shows it
