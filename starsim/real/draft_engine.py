"""The draft server's engine: the one thread that owns the draft model.

Connections hand it tasks (:meth:`DraftEngine._submit`) and wait; it takes them from a queue
under the same policy registry as the simulator (at most one outstanding task per target,
since a target waits for its reply) and drafts each with the server's
:class:`~starsim.real.speculation.Drafter`, stamping every busy interval on the server's
clock. With ``batch_max > 1`` it drafts up to that many waiting tasks at once
(:meth:`Drafter.draft_batch`, the simulator's ``draft.batch``), after waiting up to
``batch_window_s`` for more when fewer are waiting; each batch is one busy interval.

A multi-sequence task (a target that decodes many sequences asks for all their trees in one
request, :mod:`starsim.real.protocol`) is one task in the queue, holding a :class:`Part` per
sequence; the engine drafts every part of every task it takes in one
:meth:`Drafter.draft_batch` call (one busy interval, its new tokens summed).

Pipelining (the simulator's ``draft.pipeline``): after a greedy tree, the engine drafts the
next one for the context plus that tree's main path; a target whose next request is that path
and a bonus token among the new tree's root children gets the subtree under it at once (a
hit); otherwise the pipelined tree is dropped (a miss).

Draft memory, one book: the drafter's per-tag state (:attr:`Drafter.tags`: each tag's KV
tensors and the token ids they hold) is the record of what a tag has cached. It alone says
what a round encodes, by comparing token ids: a new request keeps the prefix it shares with
the last one, a missed pipelined tree the part of its path the target accepted, which a count
of tokens cannot tell. Under ``memory_bytes`` the engine also keeps a
:class:`~starsim.draft_state.DraftCaches`, for what the simulator decides the same way: the
tags in use order and which to drop (its ``on_evict`` frees the drafter's state), told at each
round's start what the tag holds (``hold``: its whole context, as the drafter's cache does).
A multi-sequence task's sequences are held under their own keys ``(tag, sid)`` (the drafter's
and the book's); an eviction is recorded under the tag. The simulator's ``take`` and ``cut``
stand in for the drafter's comparison by counting tokens; the server needs neither. Without a
memory limit there is no book but the drafter's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple

from ..draft_state import DraftCaches, PipelineStats
from ..models.kv import kv_bytes_per_token
from ..policies import make_policy
from ..rules import pipelined_hit, take_batch, wasted_draft_s, window_left
from .resources import pin
from .server_options import ServerOptions
from .speculation import Drafter, TreeDraft

log = logging.getLogger("starsim.draft_server")


class Busy(NamedTuple):
    """A busy interval of the draft engine, on the server's clock: one task or one batch
    (``tag``: its first task's; ``new_tokens``: the context tokens it encoded)."""

    tag: int
    start: float
    end: float
    new_tokens: int


class Eviction(NamedTuple):
    """A tag's draft cache dropped for draft memory, ``at`` the start of the round it made room for."""

    tag: int
    at: float


@dataclass
class Part:
    """One sequence to draft: a single-sequence task's own, or one of a multi-sequence task's
    (``key``: the drafter's state key, the tag or ``(tag, sid)``)."""

    key: Hashable
    context: list[int]
    seed: int | None = None
    hidden: list | None = None
    tree: TreeDraft | None = None
    new_tokens: int = 0
    error: str | None = None


def _tag_of(key: Hashable) -> int:
    """The tag a drafter key belongs to (a multi-sequence key is ``(tag, sid)``)."""
    return key[0] if isinstance(key, tuple) else key


@dataclass
class Task:
    """A tree to draft for a tag, or (``parts``) one per sequence of a multi-sequence request,
    or (neither ``context`` nor ``parts``) the tag's draft state to free. ``free``: drafter keys
    to free first (a multi-sequence request's ended sequences, or a closed tag's)."""

    target: int  # the tag (policies order tasks by ``target``)
    context: list[int] | None
    temperature: float = 0.0
    seed: int | None = None
    hidden: list | None = None  # EAGLE: the target's features, one row per context token, in chunks
    done: threading.Event = field(default_factory=threading.Event)
    tree: TreeDraft | None = None
    new_tokens: int = 0
    start: float = 0.0
    end: float = 0.0
    error: str | None = None
    deadline: float = math.inf  # on the server's clock: when the target's next token is due (edf)
    depth: int | None = None  # a shallower tree than the drafter's (adaptive speculation); None: the full one
    # pipelined drafting: a tree drafted ahead (``pre``) for the context plus ``path``, the last
    # tree's main path; ``taken``: the engine popped it; ``missed``: the target did not accept
    # that path (its draft time is wasted); ``cancelled``: missed before the engine took it
    pre: bool = False
    path: list[int] | None = None
    taken: bool = False
    missed: bool = False
    cancelled: bool = False
    t_enqueue: float = 0.0
    batch: int = 1  # tasks in the forward it was drafted in (a missed one wasted its share)
    parts: list[Part] | None = None  # a multi-sequence task's sequences (``context`` is None)
    free: list = field(default_factory=list)

    def drafts(self) -> list[Part]:
        """What the engine drafts for this task: its parts, or one for its own context."""
        if self.parts is not None:
            return self.parts
        return [Part(self.target, self.context, self.seed, self.hidden)]

    def collect(self, parts: list[Part]) -> None:
        """Take the drafted ``parts`` (from :meth:`drafts`): a single task's tree, new tokens
        and error; a multi-sequence task's summed new tokens and first error."""
        if self.parts is None:
            self.tree = parts[0].tree
        self.new_tokens = sum(p.new_tokens for p in parts)
        error = next((p.error for p in parts if p.error), None)
        if error is not None:
            self.error = error


def main_path(tree: TreeDraft) -> list[int]:
    """The tokens of a tree's most likely path: its deepest level's first node (levels are
    breadth first, best first) and that node's ancestors, root side first."""
    if not tree.tokens:
        return []
    deepest = max(tree.depths)
    node = tree.depths.index(deepest)
    path = []
    while node >= 0:
        path.append(tree.tokens[node])
        node = tree.parents[node]
    return path[::-1]


def subtree(tree: TreeDraft, token: int) -> TreeDraft | None:
    """The part of ``tree`` under its root child ``token`` (None: no such child), rooted there:
    what a pipelined tree drafted before the bonus token was known offers once it is."""
    top = next((i for i, (p, t) in enumerate(zip(tree.parents, tree.tokens)) if p < 0 and t == token), None)
    if top is None:
        return None
    keep, index = [], {}
    for i, p in enumerate(tree.parents):  # parents come first: one pass finds every descendant
        if p == top or p in index:
            index[i] = len(keep)
            keep.append(i)
    parents = [-1 if tree.parents[i] == top else index[tree.parents[i]] for i in keep]
    return TreeDraft([tree.tokens[i] for i in keep], parents, [tree.depths[i] - 1 for i in keep])


class DraftEngine:
    """The engine of :class:`~starsim.real.server.DraftServer` (a mixin: the server is one
    object, its door, engine and connections threads of it).

    Owns the ``drafter``, its ``options`` (:class:`ServerOptions`), the policy ``queue``, the
    busy ``intervals``, the ``evictions``, the pipelined tasks and ``pipeline_stats``, and the
    draft's ``kv_bytes_per_token``. Reads from the server ``cv`` (the one lock, shared with the
    connections), ``stop``, ``cpus``, ``unit``, ``limits.timeout_s``, ``contexts`` (the tags
    still connected) and ``_now()`` (its clock).
    """

    def _init_engine(self, drafter: Drafter, options: ServerOptions, weights: dict[int, float]) -> None:
        """The engine's state: ``weights`` (tag -> weight, filled as targets connect) feed the policy."""
        self.drafter, self.options = drafter, options
        self.queue = make_policy(options.policy, weights)
        self.intervals: list[Busy] = []  # the engine's busy time
        self.affinity: list[int] = []  # the engine's cores, as it runs
        self.evictions: list[Eviction] = []
        self._dropped: list[int] = []  # tags evicted for the batch being drafted
        self._pre: dict[int, Task] = {}  # tag -> its pipelined task
        self.pipeline_stats = PipelineStats()
        # K and V of every layer, in the model's dtype: what one cached token costs the draft
        self.kv_bytes_per_token = kv_bytes_per_token(drafter.model.config, drafter.model.dtype.itemsize)
        # the tags' use order and evictions under draft memory (see the module docstring)
        self.caches = None if options.memory_bytes is None else DraftCaches(
            bytes_per_token=self.kv_bytes_per_token, capacity_bytes=options.memory_bytes, on_evict=self._evict)

    # ------------------------------------------------------------------ the engine thread

    def _engine_loop(self) -> None:
        # The only thread that touches the draft model: tasks and frees come through the queue.
        self.affinity = pin(self.cpus)
        while (tasks := self._next_tasks()) is not None:
            batch = []
            for task in tasks:
                for key in task.free:
                    self._free(key)
                if task.context is None and task.parts is None:  # a free request: the tag's session ended
                    self._free(task.target)
                    task.done.set()
                elif task.parts == []:  # a multi-sequence request that only frees
                    task.start = task.end = self._now()
                    task.done.set()
                else:
                    batch.append(task)
            parts = [t.drafts() for t in batch]
            if self.caches is not None:
                for p in (p for ps in parts for p in ps):  # room first, as the simulator evicts at a round's start
                    self.caches.hold(p.key, len(p.context))
            if batch:
                self._draft(batch, parts)
            # stamped with the start of the round they made room for (as the simulator's)
            self.evictions += [Eviction(tag=tag, at=batch[0].start) for tag in self._dropped]
            self._dropped = []
            if self.options.pipeline:
                for task in batch:
                    self._after(task)

    def _next_tasks(self) -> list[Task] | None:
        """The tasks to draft next, in the policy's order, as the simulator forms a batch: with
        fewer than ``batch_max`` waiting, after waiting up to ``batch_window_s`` for more
        (None: the server stops)."""
        most, window = self.options.batch_max, self.options.batch_window_s
        with self.cv:
            while not self.queue and not self.stop.is_set():
                self.cv.wait(0.2)
            if self.stop.is_set():
                return None
            if window > 0 and len(self.queue) < most:
                until = time.monotonic() + window
                while not self.stop.is_set() and (left := window_left(len(self.queue), most, until,
                                                                      time.monotonic())) > 0:
                    self.cv.wait(left)
                if self.stop.is_set():
                    return None
            tasks = take_batch(self.queue, most)
            for t in tasks:
                t.taken = True
        return tasks

    def _free(self, key: Hashable) -> None:
        """A key's draft state goes (engine thread): a closed tag's, or an ended sequence's."""
        self.drafter.free(key)
        if self.caches is not None:
            self.caches.free(key)

    def _evict(self, key: Hashable) -> None:
        """``key``'s draft cache is dropped for draft memory (engine thread)."""
        self.drafter.free(key)
        self._dropped.append(_tag_of(key))

    def _draft(self, tasks: list[Task], parts: list[list[Part]]) -> None:
        """Every part of ``tasks`` (``parts``: each task's :meth:`Task.drafts`) in one draft: one
        :meth:`Drafter.draft` for a single part, else one :meth:`Drafter.draft_batch`. Each task
        gets the draft's start and end, and the draft one busy interval (the first task's tag,
        the new tokens of all), as in the simulator. If a batch fails, each part is drafted
        again alone, so that only a part that fails by itself reports an error (to its target)."""
        jobs = [(p, t) for t, ps in zip(tasks, parts) for p in ps]
        with self.unit:
            start = self._now()
            self._draft_parts(jobs)
            end = self._now()
        for t, ps in zip(tasks, parts):
            t.collect(ps)
        self.intervals.append(Busy(tag=tasks[0].target, start=start, end=end,
                                   new_tokens=sum(p.new_tokens for p, _ in jobs)))
        for t in tasks:
            t.start, t.end, t.batch = start, end, len(tasks)
            t.done.set()

    def _draft_parts(self, jobs: list[tuple[Part, Task]]) -> None:
        """Draft each ``(part, its task)``, batched when several; if the batch fails, one by one
        (see :meth:`_draft`). A pipelined guess (``task.pre``) is not observed for ranks."""
        if len(jobs) > 1:
            try:
                done = self.drafter.draft_batch([(p.key, p.context, t.temperature, p.seed, p.hidden, t.depth,
                                                  not t.pre) for p, t in jobs])
            except Exception:  # noqa: BLE001 - retried one by one below
                log.warning("batched draft of %d sequences failed; drafting them one by one", len(jobs),
                            exc_info=True)
            else:
                for (p, _), (tree, new) in zip(jobs, done):
                    p.tree, p.new_tokens = tree, new
                return
        for p, t in jobs:
            try:
                p.tree, p.new_tokens = self.drafter.draft(p.key, p.context, t.temperature, p.seed, p.hidden,
                                                          t.depth, not t.pre)
            except Exception as e:  # noqa: BLE001 - a failed draft is reported to that target only
                p.error = f"draft failed: {type(e).__name__}: {e}"

    # ------------------------------------------------------------------ a connection's side

    def _submit(self, task: Task) -> Task:
        """Queue ``task`` and wait for the engine to do it (a comm thread); a server that stops,
        or no draft within ``timeout_s``, leaves it with an error."""
        with self.cv:
            self.queue.push(task)
            self.cv.notify()
        timeout_s = self.limits.timeout_s
        give_up = time.monotonic() + timeout_s
        while not task.done.wait(0.2):  # wake up to notice a server that is stopping
            if self.stop.is_set():
                task.error = "draft server stopping"
                break
            if time.monotonic() > give_up:
                task.error = f"no draft within {timeout_s} s"
                break
        return task

    # ------------------------------------------------------------------ pipelining

    def _pipelinable(self, task: Task) -> bool:
        return (task.tree is not None and task.tree.tokens and task.error is None and task.temperature == 0
                and not self.drafter.needs_hidden)

    def _follow(self, task: Task) -> None:
        """Queue ``task``'s target's next tree, for its context plus ``task``'s main path (lock held)."""
        path = main_path(task.tree)
        nxt = Task(task.target, task.context + path, pre=True, path=path, depth=task.depth, deadline=task.deadline)
        nxt.t_enqueue = self._now()
        self._pre[task.target] = nxt
        self.queue.push(nxt)
        self.cv.notify()

    def _after(self, task: Task) -> None:
        """Pipelining, after the engine drafted ``task`` (engine thread): a missed pipelined
        tree's time is wasted; a plain tree gets its successor queued."""
        with self.cv:
            if task.pre:
                if task.missed:
                    self.pipeline_stats.wasted_s += wasted_draft_s(task.start, task.end, 1, task.batch)
            elif self._pipelinable(task) and task.target in self.contexts:
                self._follow(task)

    def _take_pipelined(self, tag: int, ids: list[int]) -> tuple[TreeDraft, Task] | None:
        """A DRAFT_REQUEST's tokens ``ids`` against the tag's pipelined tree: (the subtree the
        target gets, the pipelined task) on a hit, None on a miss or without one (comm thread)."""
        with self.cv:
            pre = self._pre.pop(tag, None)
        if pre is None:
            return None
        took_path = len(ids) == len(pre.path) + 1 and ids[:-1] == pre.path
        sub = None
        if took_path:  # the tree must be drafted to tell whether it offers the bonus token
            give_up = time.monotonic() + self.limits.timeout_s
            while not pre.done.wait(0.2) and not self.stop.is_set() and time.monotonic() < give_up:
                pass
            sub = subtree(pre.tree, ids[-1]) if pre.done.is_set() and pre.tree is not None else None
        # a request came after the pipelined tree's round: that request went on
        if pipelined_hit(took_path, True, bool(sub is not None and sub.tokens)):
                with self.cv:
                    self.pipeline_stats.hits += 1
                    pre.context = pre.context + ids[-1:]
                    pre.tree = sub
                    if self._pipelinable(pre):
                        self._follow(pre)  # and the next one, from where this one goes
                return sub, pre
        with self.cv:
            self._drop(pre)
        return None

    def _drop_pipelined(self, tag: int) -> None:
        """The tag's pipelined tree, if any, is of no use (a new request, or the tag is gone)."""
        with self.cv:
            old = self._pre.pop(tag, None)
            if old is not None:
                self._drop(old)

    def _drop(self, pre: Task) -> None:
        """A pipelined tree missed (lock held): dropped if the engine has not taken it, else its
        draft time is wasted (now, or by :meth:`_after` when it ends)."""
        self.pipeline_stats.misses += 1
        pre.missed = True
        if not pre.taken:
            pre.cancelled = True  # dropped before it cost anything
        elif pre.done.is_set():
            self.pipeline_stats.wasted_s += wasted_draft_s(pre.start, pre.end, 1, pre.batch)
