"""Progress bars for the long commands (evaluation, tokenizer training, manifest checks): drawn on stderr,
only on a terminal and only by the main process, with log records printed around them, never through them.
Stdout stays what it was: tables and result lines that scripts and tests read."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def bars_enabled() -> bool:
    """A bar redraws in place, so it is drawn on a terminal only (a log file or CI log would get every redraw),
    and by the main process only (RANK, as torchrun and accelerate launch set it), so processes don't clash."""
    return os.environ.get("RANK", "0") == "0" and sys.stderr.isatty()


def progress_bar(iterable: Iterable | None = None, enabled: bool | None = None, **kwargs) -> tqdm:
    """`tqdm` on stderr; `enabled=None` draws it where `bars_enabled` says a bar belongs."""
    enabled = bars_enabled() if enabled is None else enabled
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, disable=not enabled, **kwargs)


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
