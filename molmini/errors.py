"""How the command lines (train.py, `molmini`, `python -m data_pipelines`) report an error a user can fix.

A bad file, folder or value (OSError, ValueError and their kinds: FileNotFoundError, ConfigError,
ManifestError, ...) is one line on stderr, `error: ...`, and exit status 2, instead of a traceback whose
last line is the only part that matters. `--debug` or MOLMINI_DEBUG=1 lets it through, with its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

# What a user's input causes: the message of each names the input and, where it can, the fix.
USER_ERRORS = (OSError, ValueError)


def debugging(flag: bool = False) -> bool:
    """Whether tracebacks were asked for (`--debug`, or MOLMINI_DEBUG set to anything but 0)."""
    return flag or os.environ.get("MOLMINI_DEBUG", "0") not in ("", "0")


def run_reporting_errors(command: Callable[[], int], debug: bool = False) -> int:
    """Run `command`; a user error becomes `error: MESSAGE` on stderr and exit status 2."""
    try:
        return command()
    except USER_ERRORS as e:
        if debugging(debug):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def fraction(text: str) -> float:
    """An argparse type for a share of the input (--max-skipped-fraction of the data and eval commands): a
    number from 0 to 1, or argparse's one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value
