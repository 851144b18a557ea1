"""A target's seat in an M-for-N draft fabric: which server it uses, when it keeps it and when
it leaves it (the choice of a new one is the fabric's pairing policy, :mod:`starsim.pairing`)."""

from __future__ import annotations

from ..pairing import NoDraftServer, Pairing


class Seat:
    """One target's pairing. A target pairs at its first request; at each later request's
    start it keeps its server unless that one is down or, with ``repair_queue``, the server's
    last reply said more than that many tasks were waiting (a target learns a server's queue
    only from its replies); when its server fails under it, it pairs again at once. With every
    server down it has none (``server`` None) and gives its load back. ``repairs`` counts the
    moves to another server. The caller holds the board's lock, if it has one."""

    __slots__ = ("index", "pairing", "repair_queue", "server", "waiting", "repairs")

    def __init__(self, index: int, pairing: Pairing, repair_queue: int | None = None):
        self.index, self.pairing, self.repair_queue = index, pairing, repair_queue
        self.server: int | None = None
        self.waiting = 0  # tasks waiting at the paired server, as its last reply said
        self.repairs = 0

    def keeps(self) -> bool:
        """Whether the paired server is kept for the request starting now."""
        saturated = self.repair_queue is not None and self.waiting > self.repair_queue
        return bool(self.pairing.alive[self.server]) and not saturated

    def begin(self) -> int | None:
        """At a request's start: the server to use (None: every server is down)."""
        if self.server is not None and self.keeps():
            return self.server
        return self.pair(leave=self.server is not None)

    def pair(self, leave: bool = True) -> int | None:
        """Pair again now (``leave``: another server than this one, if any other is live)."""
        cur = self.server
        try:
            j = self.pairing.pair(self.index, cur, leave=leave and cur is not None)
        except NoDraftServer:
            if cur is not None:
                self.pairing.unpair(cur)
            self.server = None
            return None
        if cur is not None and j != cur:
            self.repairs += 1
        if j != cur:
            self.waiting = 0  # nothing heard from the new server yet
        self.server = j
        return j

    def served(self, waiting: int) -> None:
        """A reply came from the paired server, saying ``waiting`` tasks were queued there."""
        self.waiting = waiting

    def leave(self) -> None:
        """The target's session ends: its load is given back."""
        if self.server is not None:
            self.pairing.unpair(self.server)
            self.server = None
