"""Argument types for the command line's numbers: a flag's value must be finite and in range,
or argparse refuses it (exit 2, the flag named), never a NaN that runs on quietly (``--trace-s
nan`` wrote an empty trace with exit 0)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(lo: float = -math.inf, hi: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """A float type for ``add_argument(type=...)``: finite, ``lo <= x <= hi`` (``lo < x`` with
    ``above``)."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if x < lo or (above and x == lo) or x > hi:
            low = f"> {lo:g}" if above else f">= {lo:g}"
            want = low if hi == math.inf else f"{low} and <= {hi:g}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return x

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


seconds = number(0.0)  # a duration or a time on a run's clock
