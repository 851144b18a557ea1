"""Draft-engine scheduling policies: which waiting task the engine serves next.

A policy is a small class found by name (``draft.policy`` in the scenario). The engine
holds at most one outstanding task per target, so a queue never holds two tasks of one
target. Tasks have a ``target`` (its index, a tag on the real server) and, for policies
that ask for it (``needs_deadline``), a ``deadline``: the time by which that target must
emit its next token to keep its TPOT objective. Per-target parameters (``weight``,
``tpot_slo_s``) come from the scenario's target groups. Adding a policy: one class here
(or in its own module) plus ``@register``.

- ``fifo``: first come, first served (StarSD's global queue).
- ``round_robin``: the waiting targets in turn, by index, after the one served last.
- ``wfq``: weighted fair queueing (start-time fair queueing): under saturation each
  target gets draft rounds in proportion to its ``weight``.
- ``edf``: earliest deadline first on each task's deadline (SLO-aware): the target closest
  to missing its TPOT objective goes first; targets without one come after, in FIFO order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Callable
from typing import Any

POLICIES: dict[str, type[Policy]] = {}


def register(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def deco(cls: type[Policy]) -> type[Policy]:
        POLICIES[name] = cls
        cls.name = name
        return cls

    return deco


class Policy:
    """A queue of tasks with the policy's order. Tasks have at least a ``target`` attribute."""

    name = "abstract"
    needs_deadline = False  # tasks must carry ``deadline`` (see the module doc)

    def __init__(self, weights: dict[int, float] | None = None) -> None:
        self.weights = weights if weights is not None else {}  # by reference: a server adds tags later

    def push(self, task: Any) -> None:
        raise NotImplementedError

    def pop(self) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


@register("fifo")
class Fifo(deque, Policy):
    """First come, first served (StarSD's global queue).

    A deque itself, so that push, pop and len (the engine calls each once per round) are
    C calls rather than Python methods."""

    push = deque.append
    pop = deque.popleft

    def __init__(self, weights: dict[int, float] | None = None) -> None:
        deque.__init__(self)
        self.weights = weights if weights is not None else {}  # by reference: a server adds tags later


@register("round_robin")
class RoundRobin(Policy):
    """The waiting targets in turn: the next index after the one served last, wrapping. (A
    target may have more than one task waiting, e.g. a pipelined tree and its round: they
    are served in its turns, oldest first.)"""

    def __init__(self, weights: dict[int, float] | None = None) -> None:
        super().__init__(weights)
        self.waiting: dict[int, deque] = {}
        self.order: list[int] = []  # waiting targets, sorted
        self.last = -1
        self.count = 0

    def push(self, task: Any) -> None:
        q = self.waiting.get(task.target)
        if q is None:
            q = self.waiting[task.target] = deque()
            insort(self.order, task.target)
        q.append(task)
        self.count += 1

    def pop(self) -> Any:
        i = bisect_right(self.order, self.last)
        i = i if i < len(self.order) else 0
        t = self.order[i]
        q = self.waiting[t]
        task = q.popleft()
        if not q:
            del self.waiting[t]
            self.order.pop(i)
        self.last = t
        self.count -= 1
        return task

    def __len__(self) -> int:
        return self.count


@register("wfq")
class WeightedFair(Policy):
    """Start-time fair queueing over targets, one draft round as the unit of service.

    A task's start tag is ``max(V, F[target])`` and its finish tag ``start + 1/weight``;
    the engine serves the smallest finish tag, and the virtual time V is the start tag of
    the task last served. A target that keeps a task waiting gets rounds in proportion to
    its weight; one that comes back after a pause does not bank credit (its start tag is at
    least V)."""

    def __init__(self, weights: dict[int, float] | None = None) -> None:
        super().__init__(weights)
        self.heap: list[tuple[float, int, float, Any]] = []
        self.finish: dict[int, float] = {}
        self.v = 0.0
        self.seq = itertools.count()

    def push(self, task: Any) -> None:
        start = max(self.v, self.finish.get(task.target, 0.0))
        end = start + 1.0 / self.weights.get(task.target, 1.0)
        self.finish[task.target] = end
        heapq.heappush(self.heap, (end, next(self.seq), start, task))

    def pop(self) -> Any:
        _, _, start, task = heapq.heappop(self.heap)
        self.v = start
        return task

    def __len__(self) -> int:
        return len(self.heap)


@register("edf")
class EarliestDeadline(Policy):
    """Earliest deadline first on ``task.deadline`` (inf: no objective, served after, FIFO)."""

    needs_deadline = True

    def __init__(self, weights: dict[int, float] | None = None) -> None:
        super().__init__(weights)
        self.heap: list[tuple[float, int, Any]] = []
        self.seq = itertools.count()

    def push(self, task: Any) -> None:
        d = getattr(task, "deadline", math.inf)
        heapq.heappush(self.heap, (math.inf if d is None else d, next(self.seq), task))

    def pop(self) -> Any:
        return heapq.heappop(self.heap)[2]

    def __len__(self) -> int:
        return len(self.heap)


def make_policy(name: str, weights: dict[int, float] | None = None) -> Policy:
    return POLICIES[name](weights)
