"""Regenerate the synthetic samples shipped in ``traces/``, byte for byte.

    python traces/make_samples.py          # (re)write both files next to this script
    python traces/make_samples.py --check  # exit 1 if a shipped file differs from what it would write

Both files are **synthetic**: no row is copied from MT-Bench or from the Azure traces. The
shapes (per-category prompt lengths, answer lengths, arrival burstiness, the context-length
mixture) were chosen by eye to look like the public data; see ``traces/README.md``.

Only ``random.Random(seed).random()`` is used as a source of randomness, with the
transforms written out below, because Python guarantees that ``random()`` gives the same
sequence for the same seed across versions (numpy's and ``random``'s other samplers do not
promise that). Output is pure ASCII with fixed line endings, so the bytes are reproducible.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent

SEED_MTBENCH = 20240601
SEED_AZURE = 20231116

# MT-Bench has 8 categories of 10 first-turn questions, in this order. Per category: the
# median question length in tokens, the median answer length in tokens (a 7B chat model
# answering at temperature 0.5), and the log-space spread of each. ASSUMED shapes.
CATEGORIES = (
    # name        q_median q_sigma a_median a_sigma
    ("writing", 40, 0.45, 420, 0.35),
    ("roleplay", 58, 0.40, 330, 0.40),
    ("reasoning", 55, 0.60, 190, 0.55),
    ("math", 36, 0.55, 210, 0.50),
    ("coding", 34, 0.60, 360, 0.45),
    ("extraction", 180, 0.50, 150, 0.60),
    ("stem", 38, 0.35, 450, 0.30),
    ("humanities", 22, 0.35, 500, 0.25),
)
TEMPLATE_TOKENS = 40  # Vicuna system prompt + "USER: ... ASSISTANT:" around each question
MAX_NEW_TOKENS = 1024  # the usual EAGLE / MT-Bench generation cap

AZURE_ROWS = 300
AZURE_START = datetime(2023, 11, 16, 18, 0, 0, 0)


class Stream:
    """Samplers built on ``random()`` alone (reproducible across Python versions)."""

    def __init__(self, seed: int):
        self._r = random.Random(seed)

    def uniform(self) -> float:
        return self._r.random()

    def normal(self) -> float:
        # Box-Muller, one of the pair; 1 - u keeps the log argument in (0, 1]
        u1, u2 = 1.0 - self._r.random(), self._r.random()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.normal())

    def exponential(self, mean: float) -> float:
        return -mean * math.log(1.0 - self._r.random())


def mtbench_like_lengths() -> bytes:
    """80 rows ``prompt_tokens,output_tokens,category``, 10 per MT-Bench category, LF line endings."""
    s = Stream(SEED_MTBENCH)
    lines = ["prompt_tokens,output_tokens,category"]
    for name, q_med, q_sig, a_med, a_sig in CATEGORIES:
        for _ in range(10):
            q = max(8, round(s.lognormal(q_med, q_sig)))
            a = min(MAX_NEW_TOKENS, max(16, round(s.lognormal(a_med, a_sig))))
            lines.append(f"{TEMPLATE_TOKENS + q},{a},{name}")
    return ("\n".join(lines) + "\n").encode("ascii")


def _azure_timestamp(t: datetime) -> str:
    # The Azure trace writes 7 fractional digits (100 ns ticks), no time zone.
    ticks = t.microsecond * 10
    return t.strftime("%Y-%m-%d %H:%M:%S") + f".{ticks:07d}"


def azure_like_sample() -> bytes:
    """``TIMESTAMP,ContextTokens,GeneratedTokens`` rows in the Azure 2023 trace's exact format:
    CRLF line endings and no newline after the last row, like the upstream files."""
    s = Stream(SEED_AZURE)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    t = AZURE_START + timedelta(microseconds=round(s.uniform() * 1e6))
    for i in range(AZURE_ROWS):
        if i:
            # hyper-exponential gaps: mean ~0.18 s (about 5.5 requests/s), cv ~1.2 (bursty)
            gap = s.exponential(0.05) if s.uniform() < 0.3 else s.exponential(0.238)
            t += timedelta(microseconds=max(1, round(gap * 1e6)))
        # context: mostly a broad lognormal (median ~900), plus a cluster just above 4k
        # tokens (long pasted documents truncated at a 4k window)
        if s.uniform() < 0.12:
            ctx = 4000 + int(s.uniform() * 150)
        else:
            ctx = min(14000, max(2, round(s.lognormal(900, 0.75))))
        gen = min(1000, max(7, round(s.lognormal(135, 0.75))))
        rows.append(f"{_azure_timestamp(t)},{ctx},{gen}")
    return "\r\n".join(rows).encode("ascii")


SAMPLES = {
    "mtbench_like_lengths.csv": mtbench_like_lengths,
    "azure_like_sample.csv": azure_like_sample,
}


def render() -> dict[str, bytes]:
    """File name -> the exact bytes this script writes."""
    return {name: make() for name, make in SAMPLES.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    p.add_argument("--out", type=Path, default=HERE, help="directory to write to (default: traces/)")
    args = p.parse_args(argv)
    bad = 0
    for name, data in render().items():
        path = args.out / name
        if args.check:
            same = path.is_file() and path.read_bytes() == data
            print(f"{'ok' if same else 'DIFFERS'}  {path}")
            bad += not same
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
