"""Draft-engine scheduling policies: which waiting task the engine serves next.

A policy is a small class found by name (``draft.policy`` in the scenario). The engine
holds at most one outstanding task per target, so a queue never holds two tasks of one
target. Adding a policy: one class here (or in its own module) plus ``@register``.
"""

from __future__ import annotations

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


def make_policy(name: str) -> Policy:
    return POLICIES[name]()
