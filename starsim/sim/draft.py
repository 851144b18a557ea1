"""The draft server's inference engine: one process that owns the draft device.

Communication (receive, parse, reply) is per target and lives in the target's process as
pure delays, because each target has its own thread on the real server; only the engine
is shared. The engine keeps tag-indexed state (the draft KV length of each target) so
that, with prefix caching, only tokens not yet cached are encoded.
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from ..distributions import timing_sampler
from ..draft_state import DraftCaches, PipelineStats
from ..policies import make_policy
from ..profiles import ProfileUsage
from ..records import Recorder
from ..rules import take_batch, wasted_draft_s, window_left
from ..scenario import Draft
from .devices import DeviceUnit


class Task:
    """One draft request: target ``target`` wants a tree for a context of ``context`` tokens.

    ``depth``/``tokens``: the tree of this round (None: the scenario's tree; adaptive
    speculation sets them). ``pre``: a pipelined tree, drafted ahead assuming the target's
    last tree is accepted whole; ``next``: the pipelined tree the engine started right after
    this one. ``failed``: the engine's server failed before the tree was sent. ``seqs``: a
    serving target's batched request, ``(tag, context)`` per sequence (None: one, tagged by
    the target); ``context`` is then the longest and ``seq_new`` each one's new tokens.
    ``missed``: a pipelined batch's sequences whose last tree was not accepted whole, after it
    started, ``(tag, valid tokens)`` each: their share of its forward is wasted.
    """

    __slots__ = ("target", "context", "done", "start", "end", "new_tokens", "kv_bytes", "deadline",
                 "depth", "tokens", "pre", "next", "failed", "cancelled", "valid", "submitted", "seqs", "seq_new",
                 "missed", "batch")

    def __init__(self, target: int, context: int, done: simpy.Event | None):
        self.target = target
        self.context = context
        self.done = done
        self.deadline = math.inf  # when the target's next token is due (deadline policies)
        self.depth = self.tokens = None
        self.pre, self.next, self.failed, self.cancelled = False, None, False, False
        self.start = self.end = None
        self.valid = self.submitted = 0
        self.seqs = self.seq_new = self.missed = None
        self.batch = 1  # sequences in the forward it was drafted in

    @property
    def size(self) -> int:
        """Sequences it drafts for."""
        return 1 if self.seqs is None else len(self.seqs)


class DraftEngine:
    """Pulls tasks from its policy queue, one at a time; records a busy interval each."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        name: str,
        unit: DeviceUnit,
        cfg: Draft,
        rng: np.random.Generator,
        rec: Recorder,
        usage: ProfileUsage | None = None,
        weights: dict[int, float] | None = None,
        general: bool = False,
    ):
        """Ten parameters: the engine's environment, identity and device, its configuration, its
        random stream, where it records, and three options of the run (profile usage, wfq
        weights, the general loop); each is used as it is."""
        self.env = env
        self.index = index
        self.name = name
        self.unit = unit
        self.cfg = cfg
        self.policy = make_policy(cfg.policy, weights)
        # Either a tree cost plus an encode cost per new token, or one measured whole-round
        # model of (new tokens, context), optionally slowed by the idle gap before it.
        spec = cfg.time if cfg.round_time is None else cfg.round_time
        self.draft_time = timing_sampler(spec.for_instance(index), rng, usage)
        self.whole_round = cfg.round_time is not None
        self.warm_cold = cfg.warm_cold
        self.rec = rec
        self.log_draft = rec.interval_writer(engine=name, device=unit.name, kind="draft")
        # each target's draft KV cache, prefix caching and LRU eviction (shared with the real server)
        self.caches = DraftCaches(prefix_cache=cfg.prefix_cache, bytes_per_token=cfg.kv_bytes_per_token,
                                  capacity_bytes=cfg.memory_bytes, on_evict=self._evicted)
        self._wake: simpy.Event | None = None
        b = cfg.batch
        self.batch_max, self.batch_window = b.max, b.window_s
        self.batch_time = timing_sampler(b.time, rng, usage) if b.max > 1 else None
        # a queued task starts this long after the one before it ended (None: at once)
        ta = cfg.turnaround_time
        self.turnaround = timing_sampler(ta.for_instance(index), rng, usage) if ta is not None else None
        self.rng, self.usage = rng, usage
        self.running: tuple | list = ()  # the tasks being drafted now (run_general)
        self.dead = False  # the server failed (draft.fabric.failures)
        self.pipeline_stats = PipelineStats()
        # the generator of the engine's process: StarSD's loop, or the general one
        self.general = general  # sim.loops.general_loop_reason decides, for the whole run
        self.life = self.run_general() if self.general else self.run()
        self.process = env.process(self.life)

    def submit(self, task: Task) -> None:
        if self.dead:  # a failed server answers nothing
            task.failed = True
            task.done.succeed()
            return
        self.policy.push(task)
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()

    def free(self, tag: int) -> None:
        """End of a target's session: its draft KV cache is released."""
        self.caches.free(tag)

    def _evicted(self, tag) -> None:
        # an instant "evict" interval: the report's memory-over-time curve drops the tag here
        # (a serving target's sequence is tagged (target, request))
        now, target = self.env.now, tag[0] if isinstance(tag, tuple) else tag
        self.rec.interval_writer(engine=self.name, device=self.unit.name, kind="evict")(target=target, start=now,
                                                                                       end=now)

    def run(self):
        # Clock values are computed, not read back (see Target._speculate): after its own
        # ``timeout(d)`` from ``start`` the engine is at ``start + d`` exactly.
        env, policy, take = self.env, self.policy, self.caches.take
        # Without a memory limit, DraftCaches.take is two dict operations, done inline here (the
        # hot path; tests/test_loops.py holds this loop to run_general, which calls take).
        held = self.caches.held if self.cfg.memory_bytes is None and self.cfg.prefix_cache else None
        timeout, new_event, pop = env.timeout, env.event, policy.pop
        draft_time, res, host = self.draft_time, self.unit.resource, self.unit.host
        whole_round, warm_cold, turnaround = self.whole_round, self.warm_cold, self.turnaround
        log = self.log_draft
        tree = self.cfg.tree
        tokens, depth = tree.tokens, tree.depth
        encode, kv_per_token = self.cfg.encode_per_token_s, self.cfg.kv_bytes_per_token
        now = last_end = env.now
        while True:
            while not policy:  # a Fifo is a deque: C truth test
                self._wake = wake = new_event()
                yield wake
                now = env.now
            task = pop()
            if turnaround is not None:  # the server's hand-off of the task to the engine
                yield timeout(turnaround(0.0, 0.0, 0.0))
                now = env.now
            if res is not None:
                req = yield from self.unit.acquire(env)
                now = env.now
            start = now
            target, ctx = task.target, task.context
            if held is not None:
                cached = held.get(target, 0)
                held[target] = ctx
                new = ctx - cached if ctx > cached else 0
            else:
                new = take(target, ctx)
            if whole_round:
                dur = draft_time(new, ctx, depth)
                if warm_cold is not None:
                    dur *= warm_cold(start - last_end)
            else:
                dur = encode * new + draft_time(tokens, ctx, depth)
            if host is None:
                yield timeout(dur)
                end = start + dur
            else:  # a share of the host's cores: the task takes longer while others run
                yield from host.run(dur)
                end = env.now
            if res is not None:
                res.release(req)
            now = last_end = end
            task.start, task.end, task.new_tokens, task.kv_bytes = start, end, new, ctx * kv_per_token
            log(target=target, start=start, end=end)
            task.done.succeed()

    def _take(self, task: Task) -> int:
        """Account a task's prefix in its tag's cache (memory limit included); its new tokens
        (a batched request's: each sequence's, summed)."""
        if task.seqs is None:
            new = task.new_tokens = self.caches.take(task.target, task.context)
            return new
        task.seq_new = self.caches.take_many(task.seqs)
        new = task.new_tokens = sum(task.seq_new)
        return new

    def _round_cost(self, task: Task, last_end: float, start: float) -> float:
        """One target's round alone: encode its new tokens and draft its tree (see run)."""
        new, ctx = self._take(task), task.context
        depth = self.cfg.tree.depth if task.depth is None else task.depth
        if self.whole_round:
            dur = self.draft_time(new, ctx, depth)
            if self.warm_cold is not None:
                dur *= self.warm_cold(start - last_end)
            return dur
        tokens = self.cfg.tree.tokens if task.tokens is None else task.tokens
        return self.cfg.encode_per_token_s * new + self.draft_time(tokens, ctx, depth)

    def _batch_cost(self, tasks: list[Task], last_end: float, start: float) -> float:
        """One batched forward over every sequence of ``tasks``: ``batch.time(sequences, longest
        context, deepest tree)``, plus each sequence's prefix encoding (see run_general)."""
        cfg = self.cfg
        news = sum(self._take(t) for t in tasks)
        depth = max(cfg.tree.depth if t.depth is None else t.depth for t in tasks)
        n = sum(t.size for t in tasks)
        if self.batch_time is None:  # a serving target's batch under batch.max 1: made at its first use
            self.batch_time = timing_sampler(cfg.batch.time, self.rng, self.usage)
        dur = self.batch_time(n, max(t.context for t in tasks), depth) + cfg.encode_per_token_s * news
        if self.whole_round:  # batch.time is for 1 new token each: the rest encoded as one round would
            rt = cfg.round_time
            pairs = [p for t in tasks for p in ([(t.new_tokens, t.context)] if t.seqs is None
                                                else ((n, c) for n, (_, c) in zip(t.seq_new, t.seqs) if n > 1))]
            dur += sum(max(0.0, rt.mean(new, ctx, depth) - rt.mean(1, ctx, depth)) for new, ctx in pairs if new > 1)
        if self.warm_cold is not None:
            dur *= self.warm_cold(start - last_end)
        return dur

    # ------------------------------------------------------------------ pipelining, failure

    def _follow(self, task: Task, seqs: list | None = None) -> Task:
        """Start drafting ``task``'s target's next tree now, assuming ``task``'s tree is
        accepted whole (its ``depth`` tokens and the bonus one): the pipelined tree. A batched
        task's follows every sequence, or ``seqs``."""
        step = (self.cfg.tree.depth if task.depth is None else task.depth) + 1
        nxt = Task(task.target, task.context + step, self.env.event())
        if task.seqs is not None:
            nxt.seqs = [(tag, c + step) for tag, c in (task.seqs if seqs is None else seqs)]
            nxt.context = max(c for _, c in nxt.seqs)
        nxt.depth, nxt.tokens, nxt.pre, nxt.deadline = task.depth, task.tokens, True, task.deadline
        nxt.submitted = self.env.now
        task.next = nxt
        self.submit(nxt)
        return nxt

    def promote(self, pre: Task, valid: dict | None = None) -> None:
        """A hit: the target accepted its whole tree, so the pipelined ``pre`` is its next
        tree; the engine pipelines the one after it. A batched ``pre``: ``valid`` names the
        sequences that missed (tag -> the tokens the target accepted): :meth:`_miss`, and the
        one after follows the others only."""
        self.pipeline_stats.hits += pre.size - len(valid or ())
        if valid:
            self.miss(pre, valid)
        if not self.dead:
            self._follow(pre, [p for p in pre.seqs if p[0] not in valid] if valid and pre.seqs else None)

    def cancel(self, pre: Task, valid) -> None:
        """A miss: ``pre`` assumed tokens the target did not accept. Unstarted, it is dropped
        from the queue; started or done, its draft time is wasted and its cache is cut back
        to the ``valid`` tokens the target did accept (a batched task's: tag -> tokens)."""
        self.pipeline_stats.misses += pre.size
        pre.cancelled, pre.valid = True, valid
        if pre.end is not None:
            self._waste(pre)

    def miss(self, pre: Task, valid: dict) -> None:
        """Some of a ``pre``'s sequences missed (``valid``: tag -> accepted tokens).
        Unstarted, the server drops them from the batch; started, their share of the forward
        is wasted (now, or when it ends) and their caches are cut. All of them: :meth:`cancel`."""
        if len(valid) >= pre.size:
            self.cancel(pre, valid if pre.seqs is not None else next(iter(valid.values())))
            return
        self.pipeline_stats.misses += len(valid)
        if pre.start is None:
            pre.seqs = [p for p in pre.seqs if p[0] not in valid]
            pre.context = max(c for _, c in pre.seqs)
            return
        pre.missed = [*(pre.missed or ()), *valid.items()]
        if pre.end is not None:
            self._waste_missed(pre)

    def _waste_missed(self, task: Task) -> None:
        self.pipeline_stats.wasted_s += wasted_draft_s(task.start, task.end, len(task.missed), task.batch)
        for tag, valid in task.missed:
            self.caches.cut(tag, valid)
        task.missed = None

    def _waste(self, task: Task) -> None:
        self.pipeline_stats.wasted_s += wasted_draft_s(task.start, task.end, task.size, task.batch)
        if task.seqs is None:
            self.caches.cut(task.target, task.valid)
        else:
            for tag, _ in task.seqs:
                self.caches.cut(tag, task.valid.get(tag, 0))

    def fail(self) -> None:
        """The server goes away now: the tasks it holds (queued or being drafted) fail, its
        draft caches are lost, its process ends (see run_general)."""
        self.dead = True
        now = self.env.now
        failed = list(self.running)
        if failed:  # the busy time up to the failure is still busy time
            self.log_draft(target=failed[0].target, start=failed[0].start, end=now)
        while self.policy:
            failed.append(self.policy.pop())
        for t in failed:
            t.failed = True
            if not t.done.triggered:
                t.done.succeed()
        self.running = ()
        self.caches.clear()
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()

    def run_general(self):
        """The engine beyond StarSD's one-tree-at-a-time loop (``run``): batched drafting,
        per-round tree depths, pipelined trees and server failure.

        Batching: up to ``batch.max`` waiting tasks (in the policy's order) in one forward of
        ``batch.time(tasks, longest context, deepest tree)``, plus each task's prefix encoding
        at ``encode_per_token_s`` (with ``round_time``: what its new tokens beyond one add to a
        round, at the mean); with fewer waiting, it first waits up to ``batch.window_s``
        for more. A batch of one costs a plain round. Every task of a batch starts and ends
        with it; the draft's busy interval is recorded once per batch (its target: the batch's
        first task's). A pipelined tree cancelled before it starts is dropped unstarted."""
        env, policy, cfg = self.env, self.policy, self.cfg
        bmax, window = self.batch_max, self.batch_window
        res, host = self.unit.resource, self.unit.host
        log = self.log_draft
        kv_per_token, pipeline = cfg.kv_bytes_per_token, cfg.pipeline
        last_end = env.now
        while True:
            while not policy:
                self._wake = wake = env.event()
                yield wake
                if self.dead:
                    return
            if window > 0 and len(policy) < bmax:
                until = env.now + window
                while (left := window_left(len(policy), bmax, until, env.now)) > 0:
                    self._wake = wake = env.event()
                    yield wake | env.timeout(left)
                    if self.dead:
                        return
                self._wake = None
            tasks = take_batch(policy, bmax)
            if not tasks:
                continue
            if self.turnaround is not None:  # the server's hand-off of the batch to the engine
                yield env.timeout(self.turnaround(0.0, 0.0, 0.0))
            if res is not None:
                req = yield from self.unit.acquire(env)
            start = env.now
            for t in tasks:
                t.start = start
            self.running = tasks
            if len(tasks) == 1 and tasks[0].seqs is None:
                dur = self._round_cost(tasks[0], last_end, start)
            else:
                dur = self._batch_cost(tasks, last_end, start)
            if host is None:
                yield env.timeout(dur)
            else:
                yield from host.run(dur)
            if res is not None:
                res.release(req)
            if self.dead:  # failed while drafting: fail() has answered these tasks
                return
            self.running = ()
            end = last_end = env.now
            log(target=tasks[0].target, start=start, end=end)
            n = sum(t.size for t in tasks)
            for t in tasks:
                t.end, t.kv_bytes = end, (t.context if t.seqs is None else sum(c for _, c in t.seqs)) * kv_per_token
                t.batch = n
                if t.cancelled:  # its share of the batch is wasted
                    self._waste(t)
                    continue
                if t.missed:
                    self._waste_missed(t)
                if pipeline and not t.pre:
                    self._follow(t)
                t.done.succeed()
