"""The draft server's state, without a clock: what the simulator's engine and the real server
both keep, written once.

- :class:`DraftCaches`: each target's (tag's) draft KV cache, in tokens, in use order; the
  tokens a round must encode (only those not cached, with prefix caching); and, under a
  memory limit, least-recently-used eviction of other tags' caches.
- :class:`PipelineStats`: pipelined trees that hit, missed, and the draft time the misses wasted.

The simulator drives them from SimPy processes (times from its clock), the real server from
its engine and connection threads (under its lock); neither reads a clock here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class DraftCaches:
    """Tokens cached per tag, least recently used first.

    ``take(tag, context)`` is a round's start: the tag's cache then holds its whole
    ``context``, and the round encodes ``context`` minus what was cached (everything without
    ``prefix_cache``). With ``capacity_bytes`` (``bytes_per_token`` each), other tags' caches
    are then dropped, oldest use first, until the caches fit (the tag in use is never
    dropped, even alone over the limit); ``on_evict(tag)`` hears of each drop."""

    __slots__ = ("held", "prefix_cache", "bytes_per_token", "capacity_bytes", "on_evict")

    def __init__(self, *, prefix_cache: bool = True, bytes_per_token: int = 0, capacity_bytes: int | None = None,
                 on_evict: Callable[[int], None] | None = None):
        self.held: dict[int, int] = {}  # tag -> cached tokens; insertion order = use order
        self.prefix_cache, self.bytes_per_token, self.capacity_bytes = prefix_cache, bytes_per_token, capacity_bytes
        self.on_evict = on_evict

    def take(self, tag: int, context: int) -> int:
        """A round for ``tag`` over ``context`` tokens starts: the tokens it must encode."""
        cached = self.hold(tag, context)
        if not self.prefix_cache:
            return context
        return context - cached if context > cached else 0

    def hold(self, tag: int, context: int) -> int:
        """``tag`` now holds ``context`` tokens and is the most recently used (other tags'
        caches dropped to fit); what it held before. (The real server's drafter counts its
        new tokens itself, by token ids: it calls this, not :meth:`take`.)"""
        held = self.held
        cached = held.pop(tag, 0)  # popped and set again: the tag is now the most recent
        held[tag] = context
        if self.capacity_bytes is not None:
            self._fit()
        return cached

    def take_many(self, pairs) -> list[int]:
        """:meth:`take` for each ``(tag, context)`` in order (a batched round's sequences)."""
        if self.capacity_bytes is not None or not self.prefix_cache:
            return [self.take(tag, ctx) for tag, ctx in pairs]
        held, out = self.held, []
        pop, add = held.pop, out.append
        for tag, ctx in pairs:  # take's two dict operations, inline
            cached = pop(tag, 0)
            held[tag] = ctx
            add(ctx - cached if ctx > cached else 0)
        return out

    def _fit(self) -> None:
        held, per, cap = self.held, self.bytes_per_token, self.capacity_bytes
        total = sum(held.values()) * per
        while total > cap and len(held) > 1:
            old = next(iter(held))
            total -= held.pop(old) * per
            if self.on_evict is not None:
                self.on_evict(old)

    def cut(self, tag: int, valid: int) -> None:
        """Only the first ``valid`` tokens of ``tag``'s cache still hold (a pipelined tree missed)."""
        if tag in self.held:
            self.held[tag] = min(self.held[tag], valid)

    def free(self, tag: int) -> None:
        """``tag``'s session ended: its cache is released."""
        self.held.pop(tag, None)

    def clear(self) -> None:
        """The server went away: every cache with it."""
        self.held.clear()


@dataclass
class PipelineStats:
    """Pipelined drafting's outcome: trees the target used whole (``hits``), trees dropped or
    wasted because it did not (``misses``), and the draft seconds spent on those (``wasted_s``)."""

    hits: int = 0
    misses: int = 0
    wasted_s: float = 0.0



def pipeline_totals(stats: list[PipelineStats]) -> tuple[int, int, float]:
    """(hits, misses, wasted_s) of several engines together, for the run's metadata."""
    return sum(s.hits for s in stats), sum(s.misses for s in stats), sum(s.wasted_s for s in stats)
