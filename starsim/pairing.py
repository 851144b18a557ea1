"""M-for-N draft fabric: which draft server a target uses (``draft.fabric.pairing``).

A target is paired with one draft server at a time. It pairs when a request starts (so a
saturated server can be left between requests) and again at once when its server fails
(its draft state is gone: the new server encodes the whole context on the first round).
The simulator and the real backend use the same classes, over the same *load board*:
``loads[j]`` is the number of targets paired with server ``j`` now and ``alive[j]`` whether
it still serves. The real backend's board lives in shared memory, so the target processes
see each other's choices; the caller holds its lock around :meth:`Pairing.pair`.

- ``static``: target ``i`` uses server ``i mod M``; when that one is down, the next live
  one in index order (a fixed map, as a deployment that assigns targets by hand).
- ``least_loaded``: the live server with the fewest paired targets (lowest index on ties).
- ``power_of_two``: two distinct live servers drawn at random, the less loaded of the two
  (Mitzenmacher's power of two choices: near least-loaded without a global view).
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence, Sequence

import numpy as np

PAIRINGS: dict[str, type[Pairing]] = {}


def register(name: str) -> Callable[[type[Pairing]], type[Pairing]]:
    def deco(cls: type[Pairing]) -> type[Pairing]:
        PAIRINGS[name] = cls
        cls.name = name
        return cls

    return deco


class NoDraftServer(RuntimeError):
    """Every draft server of the fabric is down."""


class Pairing:
    """Chooses a live server for a target and keeps the load board up to date."""

    name = "abstract"

    def __init__(self, loads: MutableSequence[int], alive: Sequence[bool], rng: np.random.Generator | None = None):
        self.loads, self.alive = loads, alive
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def live(self, exclude: int | None = None) -> list[int]:
        out = [j for j in range(len(self.loads)) if self.alive[j] and j != exclude]
        if not out and exclude is not None and self.alive[exclude]:
            return [exclude]  # the only live server: stay
        return out

    def choose(self, target: int, live: list[int]) -> int:
        raise NotImplementedError

    def pair(self, target: int, current: int | None = None, leave: bool = False) -> int:
        """The server ``target`` uses from now on; ``current``: the one it used (its load is
        given back); ``leave``: choose another than ``current`` if any other is live."""
        live = self.live(current if leave else None)
        if not live:
            raise NoDraftServer("every draft server of the fabric is down")
        if current is not None:
            self.loads[current] -= 1
        j = self.choose(target, live)
        self.loads[j] += 1
        return j

    def unpair(self, server: int) -> None:
        self.loads[server] -= 1


@register("static")
class Static(Pairing):
    def choose(self, target: int, live: list[int]) -> int:
        m = len(self.loads)
        home = target % m
        return min(live, key=lambda j: (j - home) % m)  # home, else the next live one


@register("least_loaded")
class LeastLoaded(Pairing):
    def choose(self, target: int, live: list[int]) -> int:
        return min(live, key=lambda j: (self.loads[j], j))


@register("power_of_two")
class PowerOfTwo(Pairing):
    def choose(self, target: int, live: list[int]) -> int:
        if len(live) == 1:
            return live[0]
        a, b = self.rng.choice(len(live), size=2, replace=False)
        return min(live[a], live[b], key=lambda j: (self.loads[j], j))


def make_pairing(name: str, servers: int, rng: np.random.Generator | None = None,
                 loads: MutableSequence[int] | None = None, alive: Sequence[bool] | None = None) -> Pairing:
    return PAIRINGS[name](loads if loads is not None else [0] * servers,
                          alive if alive is not None else [True] * servers, rng)
