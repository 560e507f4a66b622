"""Progress for the long commands (training, synthesis, conversion, evaluation, tokenizer training, manifest
checks): on stderr, only by the main process, with log records printed around bars, never through them.

A bar redraws in place with carriage returns, which a terminal shows as one moving line and a log file
(`make demo > log 2>&1`, a CI log) keeps as thousands of frames. So `progress_bar` draws a tqdm bar only when
stderr is a terminal; anywhere else it prints a plain line every `every_percent` of the total (or every
`every_s` seconds when the total is unknown or slow to come), which reads well in a log and stays short.
Stdout stays what it was: tables and result lines that scripts and tests read."""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

EVERY_PERCENT = 10  # a plain progress line per this share of the total
EVERY_S = 60.0  # and at least one per this many seconds (the only kind when the total is unknown)


def is_main_process() -> bool:
    """RANK, as torchrun and accelerate launch set it: only rank 0 shows progress, so processes don't clash."""
    return os.environ.get("RANK", "0") == "0"


def bars_enabled() -> bool:
    """Whether a redrawing bar belongs here: on a terminal, in the main process (tokenizers' own bar asks)."""
    return is_main_process() and sys.stderr.isatty()


class PlainProgress:
    """What `progress_bar` gives off a terminal: tqdm's `update`, `set_postfix`, `close`, iteration and `with`,
    printing `desc: n/total (p%) [postfix]` lines without a carriage return: at each `every_percent` step of
    the total, every `every_s` seconds, and once at the end."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 initial: float = 0, unit: str = "it", stream: TextIO | None = None,
                 every_percent: float = EVERY_PERCENT, every_s: float = EVERY_S, **_: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.last_n = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every_percent, self.every_s = every_percent, every_s
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        crossed = False
        if self.total:
            step = self.total * self.every_percent / 100
            crossed = step > 0 and int(self.n / step) > int(self.last_n / step) and self.n < self.total
        if crossed or now - self.last_time >= self.every_s:
            self._line(now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self.last_n:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last_n, self.last_time = self.n, now
        count = f"{self.n:g}/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.n:g} {self.unit}"
        postfix = f" [{self.postfix}]" if self.postfix else ""
        print(f"{self.desc + ': ' if self.desc else ''}{count}, {now - self.start:.0f} s{postfix}", file=self.stream,
              flush=True)


def progress_bar(iterable: Iterable | None = None, enabled: bool | None = None,
                 **kwargs: Any) -> tqdm | PlainProgress:
    """Progress on stderr: a tqdm bar on a terminal, plain lines elsewhere (PlainProgress), nothing when
    `enabled` is False. `enabled=None` shows it in the main process only. tqdm's keyword arguments (total,
    desc, unit, initial, mininterval, ...) pass through; `every_percent` and `every_s` tune the plain lines."""
    enabled = is_main_process() if enabled is None else enabled
    every = {k: kwargs.pop(k) for k in ("every_percent", "every_s") if k in kwargs}
    if enabled and not sys.stderr.isatty():
        return PlainProgress(iterable, **every, **kwargs)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, disable=not enabled, **kwargs)


@contextmanager
def logs_around_bars() -> Iterator[None]:
    """While in this block, the root logger's console handler prints through `tqdm.write`, above the bars.
    Without one (a library caller, pytest's capture) logging is left as it is: tqdm's redirect would add one."""
    console = [h for h in logging.getLogger().handlers
               if isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)]
    if not console:
        yield
        return
    with logging_redirect_tqdm():
        yield
