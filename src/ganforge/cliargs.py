"""Argument parsing shared by every sub-command: one-line errors and numbers checked at parse time.

argparse's own errors print the usage block and then the error; here they are one line,
``ganforge: error: argument --seed: ...`` with exit code 2, like every other user error. Every
numeric option has a ``type=`` from this module, so a value out of range is refused before any
work starts, with the range in the message.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from ganforge.config import SEED_LIMIT
from ganforge.errors import GanforgeWarning


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (sub-parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ganforge: error: {message} (see `{self.prog} --help`)\n")


def whole(low: int, high: int | None = None, high_text: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high)`` (no upper bound when ``high`` is None)."""
    span = f"in [{low}, {high_text or high})" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (give one {span})") from None
        if value < low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number {span}")
        return value

    parse.__name__ = "whole number"
    return parse


def real(low: float = 0.0, strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number ``> low`` (``strict``) or ``>= low``."""
    span = f"> {low:g}" if strict else f">= {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (give a finite one {span})") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: give a finite number {span}")
        return value

    parse.__name__ = "number"
    return parse


SEED = whole(0, SEED_LIMIT, "2**63")
POSITIVE = whole(1)
NON_NEGATIVE = whole(0)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show ganforge's own warnings as ``ganforge: warning: ...`` (one line, no source excerpt); others as usual."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if issubclass(category, GanforgeWarning):
            print(f"ganforge: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
