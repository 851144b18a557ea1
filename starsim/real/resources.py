"""The resources a real run uses, as its scenario declares them: the CPU cores each role's
process and threads run on (a device pool's ``cpus``) and the turns that roles placed on one
unit take on it.

The simulator gives each unit to one task at a time (``slots`` at once), first come first
served, and lets the roles of different units run in parallel. A real run on a shared host
has neither unless it is made to: the OS spreads every thread over every core as it likes.
:func:`pin` puts the calling thread on its unit's cores (threads and processes it starts
later inherit them), and :class:`UnitLock` is the unit itself: a first-come-first-served
semaphore of ``slots`` places, shared by every process of the run, held around each
prefill, verify, decode step and draft on that unit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from ..errors import StarsimError


def available_cpus() -> frozenset[int]:
    """The cores this thread may run on (all of the machine's, unless a cgroup or a parent narrowed them)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset(range(os.cpu_count() or 1))
    return frozenset(os.sched_getaffinity(0))


def check_cpus(cpus: frozenset[int], what: str) -> None:
    """One line if ``cpus`` cannot be used here (before any process starts)."""
    if not hasattr(os, "sched_setaffinity"):
        raise StarsimError(f"{what}: declared cpus need Linux (os.sched_setaffinity); remove cpus to let the OS "
                           f"place the processes")
    missing = cpus - available_cpus()
    if missing:
        raise StarsimError(f"{what}: cores {sorted(missing)} are not available here (this process may use "
                           f"{sorted(available_cpus())})")


def pin(cpus: frozenset[int] | None) -> list[int]:
    """Run the calling thread (and what it starts from now on) on ``cpus``; None: leave it.
    Returns the cores it runs on now, for the run's provenance."""
    if cpus is not None:
        try:
            os.sched_setaffinity(0, cpus)
        except (AttributeError, OSError) as e:
            raise StarsimError(f"cannot run on cores {sorted(cpus)}: {e}") from None
    return sorted(available_cpus())


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[list[int]]:
    """:func:`pin` for a block, then the calling thread's cores as they were (a command run
    in-process, as the tests run them, must not leave its caller pinned)."""
    before = available_cpus()
    try:
        yield pin(cpus)
    finally:
        if cpus is not None:
            pin(before)


class UnitLock:
    """A device unit shared by several roles: at most ``slots`` of them hold it at once, in
    the order they asked (tickets), across the run's processes. Pass it to a process when
    starting it (it holds multiprocessing objects of ``ctx``).

    Each waiting ticket sleeps on its own semaphore (``users`` of them, one per role that can
    wait at once), and a holder leaving wakes only the ticket it lets in: a condition's
    notify_all would wake every waiter on the unit's core at each hand-over, and their
    re-checks would take that core from the role that just got it.

    A role that can die (a target process) says which it is with :meth:`bind` (one of
    ``roles``); when it dies, :meth:`release` gives its ticket back: held, the unit passes on;
    still waiting, its turn is skipped when it comes. Without that, one killed target would
    block every other role of its unit until the run's horizon."""

    def __init__(self, ctx, slots: int = 1, users: int = 64, roles: int = 0):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if users < 1:
            raise ValueError(f"users must be >= 1, got {users}")
        self.slots = slots
        self._mutex = ctx.Lock()
        self._next = ctx.RawValue("q", 0)  # the next ticket to hand out
        self._done = ctx.RawValue("q", 0)  # holders that have left
        # a ticket waits at most for the users ahead of it: tickets users + slots apart
        # never wait at once, so they can share a semaphore
        self._wake = [ctx.Semaphore(0) for _ in range(users + slots)]
        self._held = ctx.RawArray("q", [-1] * max(roles, 1))  # each bound role's ticket (-1: none)
        self._dead = ctx.RawArray("b", users + slots)  # tickets whose role died waiting
        self.role: int | None = None  # this process's role (bind)

    def bind(self, role: int) -> UnitLock:
        """This process is role ``role`` (0 <= role < ``roles``): its ticket is on record."""
        if not 0 <= role < len(self._held):
            raise ValueError(f"role {role} out of range 0..{len(self._held) - 1}")
        self.role = role
        return self

    def __enter__(self) -> UnitLock:
        with self._mutex:
            ticket = self._next.value
            self._next.value += 1
            if self.role is not None:
                self._held[self.role] = ticket
            # first come, first served, and never more than slots inside (holders leave in any order)
            wait = ticket >= self._done.value + self.slots
        if wait:
            self._wake[ticket % len(self._wake)].acquire()
        return self

    def __exit__(self, *exc) -> None:
        with self._mutex:
            if self.role is not None:
                self._held[self.role] = -1
            self._leave()

    def _leave(self) -> None:
        """A holder left (mutex held): let in the next ticket, skipping those whose role died."""
        self._done.value += 1
        while (let_in := self._done.value + self.slots - 1) < self._next.value:
            # it asked while the unit was full, so it waits (or is about to) on its semaphore
            k = let_in % len(self._wake)
            if not self._dead[k]:
                self._wake[k].release()
                return
            self._dead[k] = 0  # its role died waiting: it leaves as it would have come in
            self._done.value += 1

    def release(self, role: int) -> None:
        """Role ``role`` died (another process calls this): its ticket is given back."""
        with self._mutex:
            ticket = self._held[role]
            if ticket < 0:
                return
            self._held[role] = -1
            k = ticket % len(self._wake)
            if ticket < self._done.value + self.slots:  # let in: it held the unit, or was woken
                self._wake[k].acquire(block=False)  # a wake-up it never took must not let a later ticket in
                self._leave()
            else:
                self._dead[k] = 1


FREE = nullcontext()  # a unit nobody shares: holding it costs nothing


class Turn:
    """A role's hold on its unit that may span blocks: ``take`` (if not held), ``give`` (if
    held), given back at the end of a ``with``. A target takes its unit for a verify and gives
    it back once its next request is sent: on a CPU core the Python that turns a verify into
    that request runs on the same core, and left to the OS's time slices (milliseconds) it
    would wait behind the next role's verify."""

    def __init__(self, unit=FREE):
        self.unit, self.held = unit, False

    def take(self) -> None:
        if not self.held:
            self.unit.__enter__()
            self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self.unit.__exit__(None, None, None)

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc) -> None:
        self.give()
