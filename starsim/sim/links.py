"""Network links: one-way time of a message = latency + bytes / bandwidth + jitter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..scenario import LinkDirection


def link_time(d: LinkDirection, rng: np.random.Generator) -> Callable[[int], float]:
    """A closure ``nbytes -> seconds`` for one direction of one target's link."""
    lat = d.latency_s
    per_byte = 0.0 if d.bandwidth_bps is None else 8.0 / d.bandwidth_bps
    if d.jitter.is_constant:
        fixed = lat + d.jitter.mean()
        return lambda nbytes: fixed + nbytes * per_byte
    jitter = d.jitter.sampler(rng)
    return lambda nbytes: lat + nbytes * per_byte + jitter(0.0, 0.0, 0.0)
