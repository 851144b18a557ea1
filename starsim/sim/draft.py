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
from ..policies import make_policy
from ..profiles import ProfileUsage
from ..records import Recorder, pack_interval
from ..scenario import Draft
from .devices import DeviceUnit


class Task:
    """One draft request: target ``target`` wants a tree for a context of ``context`` tokens."""

    __slots__ = ("target", "context", "done", "start", "end", "new_tokens", "kv_bytes", "deadline")

    def __init__(self, target: int, context: int, done: simpy.Event):
        self.target = target
        self.context = context
        self.done = done
        self.deadline = math.inf  # when the target's next token is due (deadline policies)


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
    ):
        self.env = env
        self.index = index
        self.name = name
        self.unit = unit
        self.cfg = cfg
        self.policy = make_policy(cfg.policy, weights)
        # Either a tree cost plus an encode cost per new token, or one measured whole-round
        # model of (new tokens, context), optionally slowed by the idle gap before it.
        spec = cfg.time if cfg.round_time is None else cfg.round_time
        self.draft_time = timing_sampler(spec, rng, usage)
        self.whole_round = cfg.round_time is not None
        self.warm_cold = cfg.warm_cold
        self.rec = rec
        self.kv: dict[int, int] = {}  # tag (target index) -> tokens in its draft KV cache
        self._wake: simpy.Event | None = None
        self.life = self.run()  # the generator of the engine's process
        self.process = env.process(self.life)

    def submit(self, task: Task) -> None:
        self.policy.push(task)
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()

    def free(self, tag: int) -> None:
        """End of a target's session: its draft KV cache is released."""
        self.kv.pop(tag, None)

    def run(self):
        # Clock values are computed, not read back (see Target._speculate): after its own
        # ``timeout(d)`` from ``start`` the engine is at ``start + d`` exactly.
        env, policy, kv = self.env, self.policy, self.kv
        timeout, new_event, pop = env.timeout, env.event, policy.pop
        draft_time, res, host = self.draft_time, self.unit.resource, self.unit.host
        whole_round, warm_cold = self.whole_round, self.warm_cold
        put_interval = self.rec.packed_intervals.extend  # packed rows: see Recorder
        key = self.rec.interval_key(self.name, self.unit.name, "draft")
        tree = self.cfg.tree
        tokens, depth = tree.tokens, tree.depth
        encode, prefix_cache = self.cfg.encode_per_token_s, self.cfg.prefix_cache
        kv_per_token = self.cfg.kv_bytes_per_token
        now = last_end = env.now
        while True:
            while not policy:  # a Fifo is a deque: C truth test
                self._wake = wake = new_event()
                yield wake
                now = env.now
            task = pop()
            if res is not None:
                req = res.request()
                yield req
                now = env.now
            start = now
            target, ctx = task.target, task.context
            new = ctx - kv.get(target, 0) if prefix_cache else ctx
            kv[target] = ctx
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
            put_interval(pack_interval(key, target, start, end))
            task.done.succeed()
