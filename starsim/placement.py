"""Where each instance runs and how long a message takes on a link: what the simulator and
the real backend both derive from a scenario (one code for both)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from .scenario import LinkDirection, Scenario, parse_device_ref


def place(scenario: Scenario) -> tuple[list[str], list[str]]:
    """Unit names for the draft servers (``draft.fabric.servers`` of them) and for each
    target (in target order).

    A bare pool name hands out the pool's units round-robin (per pool, in file order, the
    draft servers first); ``NAME[k]`` pins unit k (server j of a fabric: unit k + j, modulo
    the pool's count). In one_for_one mode each target's draft sits on the target's unit and
    in autoregressive mode there is none: the list is empty.
    """
    next_unit: Counter = Counter()

    def assign(ref: str, offset: int = 0) -> str:
        pool, unit = parse_device_ref(ref)
        count = scenario.devices[pool].count
        if unit is None:
            unit = next_unit[pool] % count
            next_unit[pool] += 1
        return f"{pool}[{(unit + offset) % count}]"

    drafts = []
    if scenario.mode == "star":
        pinned = parse_device_ref(scenario.draft.device)[1] is not None
        drafts = [assign(scenario.draft.device, j if pinned else 0) for j in range(scenario.draft.fabric.servers)]
    targets = [assign(g.device) for _, _, g in scenario.target_instances()]
    return drafts, targets


def link_time(d: LinkDirection, rng: np.random.Generator, index: int = 0) -> Callable[[int], float]:
    """A closure ``nbytes -> seconds`` for one direction of target ``index``'s link."""
    lat = d.latency_s
    per_byte = 0.0 if d.bandwidth_bps is None else 8.0 / d.bandwidth_bps
    if d.jitter.is_constant:
        fixed = lat + d.jitter.mean()
        return lambda nbytes: fixed + nbytes * per_byte
    jitter = d.jitter.for_instance(index).draw0(rng)  # a C call for the usual kinds: this runs twice a round
    return lambda nbytes: lat + nbytes * per_byte + jitter()
