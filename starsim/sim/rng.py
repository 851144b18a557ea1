"""Random streams that draw ahead in blocks and still give exactly the one-at-a-time values.

A numpy ``Generator`` call costs ~0.5 us from Python, more than the rest of a simulated
hop, while a block of a thousand values costs about as much as three single calls.
:class:`AheadRng` stands in for a stream's Generator and serves the scalar draws that
samplers make (:data:`FAST`, positional scalar parameters) from blocks. Those methods take
positional parameters and ``size`` only (so the hot path builds no keyword dict).

Why the values are the same: numpy fills a block by calling the same C routine once per
element, in order, with that element's parameters (array parameters broadcast element by
element), so ``rng.lognormal(m, s, size=n)`` is n calls of ``rng.lognormal(m, s)``, and
``rng.lognormal([m1, m2], [s1, s2])`` is ``lognormal(m1, s1)`` then ``lognormal(m2, s2)``
(tests/test_sim_rng.py checks every method). The stream first watches a few calls
unbuffered to learn their cycle (one signature, or a short cycle of one method with
different parameters, e.g. parse and serialize times alternating), then draws blocks of
that cycle. The generator state before each block is kept: a call that breaks the cycle
(other parameters, another method, keyword arguments) rewinds the stream to it, redraws
only the values already handed out and is served directly. Any sequence of calls
therefore gets exactly what the plain Generator would give; only speed depends on the
cycle being regular, and a stream that keeps breaking it stops drawing ahead.
"""

from __future__ import annotations

import numpy as np

# Methods served from blocks, with how many scalar parameters each takes (positionally).
FAST = {
    "random": 0,
    "standard_normal": 0,
    "standard_exponential": 0,
    "exponential": 1,
    "uniform": 2,
    "normal": 2,
    "lognormal": 2,
}
LEARN_CALLS = 6  # calls watched before drawing ahead (enough to see a cycle of up to 3)
MAX_CYCLE = 3
MAX_MISSES = 3  # broken cycles before the stream stops drawing ahead for good
FIRST_BLOCK, MAX_BLOCK = 32, 4096  # values per block: doubles from first to max


class AheadRng:
    """A numpy ``Generator`` whose scalar draws come from blocks drawn ahead (see module doc).

    For a stream that samplers draw scalars from: the :data:`FAST` methods are served from
    blocks; any other attribute is the wrapped Generator's, used after giving back the
    values drawn ahead."""

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        methods, self._interrupt, self.drawing_ahead = _stream(rng)
        self.__dict__.update(methods)

    def __getattr__(self, name: str):
        attr = getattr(self._rng, name)
        if not callable(attr):
            self._interrupt()
            return attr

        def call(*args, **kw):
            self._interrupt()
            return attr(*args, **kw)

        return call


def _stream(rng: np.random.Generator):
    """The FAST methods of one stream; ``interrupt()``, for any other use of the Generator;
    and ``drawing_ahead()``. Their state lives in closure cells: one call per draw."""
    vals: list[float] = []  # values drawn ahead; vals[k] is served next
    expected: list[tuple] = []  # expected[i]: the parameters of the call that gets vals[i]
    method_ahead = ""  # ... of this method (a cycle is of one method)
    k = n = 0  # next value, values drawn ahead
    saved: dict | None = None  # generator state before the current block
    cycle: list[tuple] | None = None  # the calls (name, args) being drawn ahead, in order
    history: list[tuple] = []  # calls watched while learning
    block = FIRST_BLOCK
    misses = 0

    def method(name: str):
        # Positional parameters and ``size`` only (what samplers use): no ``**kw`` dict to
        # build on the hot path.
        def draw(*args, size=None):
            nonlocal k
            if k < n and expected[k] == args and name is method_ahead and size is None:  # drawn ahead
                k += 1
                return vals[k - 1]
            return call(name, args, size)

        draw.__name__ = name
        return draw

    def call(name: str, args: tuple, size):
        nonlocal k
        sig = (name, args)
        if cycle is not None and k == n and sig == cycle[0] and size is None:  # next block
            refill()
            k = 1
            return vals[0]
        give_back()
        if size is not None:
            value = getattr(rng, name)(*args, size=size)
            sig = None  # a block cannot reproduce it
        else:
            value = getattr(rng, name)(*args)
        if misses < MAX_MISSES:
            learn(sig if sig is not None and len(args) <= FAST[name] and _scalars(args) else None)
        return value

    def learn(sig: tuple | None) -> None:
        """Watch one unbuffered call; after LEARN_CALLS of them, draw ahead if they cycle."""
        nonlocal history, cycle, misses
        if sig is None:
            history = []
            misses += 1
            return
        history.append(sig)
        if len(history) < LEARN_CALLS:
            return
        h, history = history, []
        for p in range(1, MAX_CYCLE + 1):
            if all(h[i] == h[i - p] for i in range(p, len(h))) and _one_method(h[:p]):
                cycle = h[len(h) - p :]  # the next call repeats h[len(h) - p]
                return
        misses += 1

    def refill() -> None:
        nonlocal vals, expected, method_ahead, n, saved, block
        n = max(1, block // len(cycle)) * len(cycle)  # whole cycles: a block starts at cycle[0]
        block = min(2 * block, MAX_BLOCK)
        saved = rng.bit_generator.state
        vals = draw_cycle(n)
        expected, method_ahead = [a for _, a in cycle] * (n // len(cycle)), cycle[0][0]

    def draw_cycle(m: int) -> list[float]:
        """The values of the next ``m`` calls of the cycle, in one numpy call."""
        name, args = cycle[0]
        f = getattr(rng, name)
        if len(cycle) == 1:
            return f(*args, size=m).tolist()
        reps = -(-m // len(cycle))  # array parameters: element i is call i (see module doc)
        return f(*(np.tile([a[j] for _, a in cycle], reps)[:m] for j in range(len(args)))).tolist()

    def give_back() -> None:
        """Rewind over the values drawn ahead and not used (redraw the used ones); if a cycle
        was being drawn ahead, count a miss and learn again."""
        nonlocal vals, expected, k, n, cycle, history, misses
        if k < n:
            rng.bit_generator.state = saved
            if k:
                draw_cycle(k)
        if cycle is not None:
            misses += 1
            cycle, history = None, []
        vals, expected, k, n = [], [], 0, 0

    def interrupt() -> None:
        nonlocal history
        give_back()
        history = []  # the call that interrupts is part of no cycle

    return {name: method(name) for name in FAST}, interrupt, lambda: cycle is not None


def _scalars(args: tuple) -> bool:
    return all(type(a) in (float, int) for a in args)


def _one_method(sigs: list[tuple]) -> bool:
    """A cycle drawn in one numpy call: one signature, or one method with all parameters given."""
    name, args = sigs[0]
    return len(sigs) == 1 or all(s[0] == name and len(s[1]) == FAST[name] for s in sigs)
