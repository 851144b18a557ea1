"""Where a target's requests come from: an open loop's arrival schedule, a closed loop's turns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple


class Arrival(NamedTuple):
    """Request ``request`` arrives at ``at``, ``wait`` after the one before it (0 for two at once)."""

    request: int
    at: float
    wait: float
    prompt: int
    output: int


def open_loop_arrivals(source: Iterable[tuple[float, int, int]], budget: int | None) -> Iterator[Arrival]:
    """An open loop's requests, ids in arrival order, from ``(time, prompt, output)`` draws, up to
    ``budget``. Times are stepped as a discrete-event clock steps (``at = before + (t - before)``,
    never back in time), so the simulator's clock, waiting ``wait`` each, lands on ``at`` bit for
    bit, and the real backend releases each request at the same float."""
    now = 0.0
    for rid, (t, prompt, output) in enumerate(source):
        if budget is not None and rid >= budget:
            return
        wait = t - now if t > now else 0.0
        if wait:
            now = now + wait
        yield Arrival(rid, now, wait, prompt, output)


def closed_loop_turn(served: int, prompts: int, repeat: bool, issued: int, budget: int | None) -> int | None:
    """A closed-loop target's next request, having ``served`` requests already: the index of its
    prompt in the set of ``prompts`` (each target goes through the set in order, from its
    start), or None when it has none (the run's ``budget`` of requests is ``issued``, or,
    without ``repeat``, the target went through the set). A user pauses (its think time)
    before each request but its first, after taking it: see :func:`pauses_first`."""
    if served >= prompts and not repeat:
        return None
    if budget is not None and issued >= budget:
        return None
    return served % prompts


def pauses_first(served: int) -> bool:
    """Whether a closed-loop user thinks before its next request: before every one but its first."""
    return served > 0
