"""The draft engine's batch: how long it waits for more tasks, and which it takes."""

from __future__ import annotations


def window_left(queued: int, most: int, until: float, now: float) -> float:
    """Seconds the engine still waits for a fuller batch: none once ``most`` tasks are queued
    or at ``until`` (the window opened when it first found fewer waiting than ``most``:
    ``until = now + batch.window_s``)."""
    return until - now if queued < most and now < until else 0.0


def take_batch(queue, most: int) -> list:
    """Up to ``most`` tasks from a policy ``queue``, in its order, skipping cancelled ones
    (pipelined trees nobody needs any more)."""
    tasks = []
    while queue and len(tasks) < most:
        t = queue.pop()
        if not t.cancelled:
            tasks.append(t)
    return tasks
