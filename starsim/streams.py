"""Named random streams: every random draw in starsim comes from one of these, derived from the
scenario's seed, so adding a target (or a feature) does not shift anyone else's draws.

A stream is ``numpy.random.default_rng([seed, stream, index])``: ``index`` tells instances
apart (target i, draft server j). NumPy pads a short seed list with zeros, so index 0 of a
stream is also ``[seed, stream]``.
"""

from __future__ import annotations

import array
import itertools
import math
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import Any

import numpy as np


class Stream(IntEnum):
    WORKLOAD = 0  # prompt/output lengths and arrival times (one stream)
    DRAFT = 1  # a draft engine's round times (per engine)
    TARGET = 2  # a target's verify/prefill/decode times and acceptance draws (per target)
    LINK_UP = 3  # a target's link jitter, target -> draft (per target)
    LINK_DOWN = 4  # ... draft -> target (per target)
    COMM = 5  # the draft server's parse/serialize times for a target (per target)
    PAUSE = 6  # bursty pauses between a target's requests (per target)
    FABRIC = 7  # the simulator's pairing choices (one stream)
    PAIRING = 8  # a real target's own pairing choices (per target: real targets are separate processes)
    PROMPT_IDS = 9  # the real backend's prompt token ids (text slices or random ids)
    SAMPLING = 10  # a real target's token sampling and the seeds it sends its draft (per request id)
    HANDOVER = 11  # a device unit's turn handovers (per unit, in the order units are built)


def rng_for(seed: int, stream: Stream, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, int(stream), index])


FIRST_BLOCK, MAX_BLOCK = 32, 256  # values per block: a rarely used sampler draws few; 2 KB at most (cache)


# A lognormal's cv: beyond 100 its median is under 1% of its mean and, far beyond, draws
# round to 0 s (rounds that take no time, without end): no measured latency spreads so.
MAX_CV = 100.0


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """numpy's (mu, sigma) of the lognormal with this mean and coefficient of variation
    (std / mean): latencies are measured, and so given, as mean and cv."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


def draws(rng: np.random.Generator, method: str, *args: Any) -> Callable[[], Any]:
    """``next()`` of the successive values of ``rng.<method>(*args)``, drawn in blocks.

    A scalar numpy draw costs a microsecond or more in calls around it; a block of them
    costs about as much as three. The values are a deterministic function of the stream and
    of the order in which its samplers first need each block, which the simulation fixes;
    samplers sharing a stream take turns drawing whole blocks."""
    fill = getattr(rng, method)
    code = "q" if method == "integers" else "d"

    def blocks() -> Iterator[array.array]:
        m = FIRST_BLOCK
        while True:
            # a flat array.array (8 bytes a value, not a list of float objects): a thousand
            # targets' blocks stay small enough for the CPU caches
            yield array.array(code, fill(*args, size=m).astype("int64" if code == "q" else "float64").tobytes())
            m = min(2 * m, MAX_BLOCK)

    return itertools.chain.from_iterable(blocks()).__next__
