"""Argument types for the command line's numbers: a flag's value must be finite and in range,
or argparse refuses it (exit 2, the flag named), never a NaN that runs on quietly (``--trace-s
nan`` wrote an empty trace with exit 0)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from .errors import StarsimError


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


def cpu_list(text: str) -> frozenset[int]:
    """CPU cores as the kernel lists them (``1``, ``0,2``, ``0-3,8``), for ``add_argument(type=...)``."""
    from .scenario import MAX_CPU  # the bound a scenario's devices.POOL.cpus has

    cores: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi or lo)
            if not 0 <= a <= b <= MAX_CPU:
                raise ValueError
            cores.update(range(a, b + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected cores like 1, 0,2 or 0-3 (each 0..{MAX_CPU}), got {text!r}") from None
    return frozenset(cores)


def output_dir(out: Path | None, flag: str = "--out") -> Path | None:
    """``out`` if it can be a folder to write into (absent, or a folder); a one-line error if
    it is a file, before any work."""
    if out is not None and out.exists() and not out.is_dir():
        raise StarsimError(f"{flag} {out}: exists and is not a directory")
    return out


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")


def output_file(out: Path | None, example: str, flag: str = "--out") -> Path | None:
    """``out`` if it can be a file to write (not a folder); ``example``: a file name to suggest."""
    if out is not None and out.is_dir():
        raise StarsimError(f"{flag} {out}: is a directory; give the file to write, e.g. {out / example}")
    return out


def output_image(out: Path | None, flag: str = "--out") -> Path | None:
    """``out`` if it names an image matplotlib writes (checked before drawing)."""
    if output_file(out, "plot.png", flag) is None:
        return out
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise StarsimError(f"{flag} {out}: an image is written as one of {', '.join(IMAGE_SUFFIXES)}, "
                           f"not {out.suffix or 'a name without a suffix'}")
    return out
