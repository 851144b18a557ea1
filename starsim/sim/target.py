"""A target instance: take a request, prefill, then speculative rounds until it is done.

The whole life of a target reads top to bottom in :meth:`Target.run`. One round is
send -> (link up + parse) -> draft engine -> (serialize + link down) -> verify -> accept.
Delays that nobody competes for are merged into one SimPy timeout; the timestamps of every
hop are still recorded exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import simpy

from ..acceptance import ByCategory, _Acceptance
from ..distributions import timing_sampler
from ..profiles import ProfileUsage
from ..records import RequestRow, RoundWriter
from ..rules import closed_loop_turn, emitted, pauses_first, pipelined_hit, token_due
from ..scenario import Payload, TargetGroup
from .devices import DeviceUnit
from .draft import DraftEngine, Task


class Requests:
    """Where targets get requests from, and the run-wide request budget."""

    def __init__(
        self,
        env: simpy.Environment,
        max_requests: int | None,
        prompt_set: list[tuple[int, int]] | None = None,
        repeat: bool = True,
        store: simpy.Store | None = None,
        categories: list[str | None] | None = None,
    ):
        self.env = env
        self.budget = max_requests
        self.issued = 0
        self.prompt_set = prompt_set
        self.repeat = repeat
        self.store = store
        # each prompt's category (acceptance by category): a request's, taken by its target
        self.categories, self.category_of = categories, {}

    def next_for(self, target: Target, pausing: bool | None = None):
        """Generator: waits as needed, returns ``(rid, arrival, prompt, output)`` or None.
        ``pausing``: whether a closed loop's user pauses first (None: after the target's first
        request; a serving target's users each pause after their own)."""
        if self.store is not None:  # open loop: arrivals queue for the first free target
            item = yield self.store.get()
            return item
        pset = self.prompt_set
        i = closed_loop_turn(target.served, len(pset), self.repeat, self.issued, self.budget)
        if i is None:
            return None
        rid = self.issued  # taken now: other targets take ids while this one pauses
        self.issued += 1
        if (pauses_first(target.served) if pausing is None else pausing) and target.pause is not None:
            yield self.env.timeout(target.pause())
        prompt, output = pset[i]
        if self.categories is not None:
            self.category_of[rid] = self.categories[i]
        return rid, self.env.now, prompt, output


def _zero(*_args) -> float:
    return 0.0


def _work(env: simpy.Environment, host, dur: float):
    """``dur`` seconds of CPU work: a share of ``host``'s cores, or a plain delay without one."""
    if host is not None:
        yield from host.run(dur)
    elif dur:
        yield env.timeout(dur)


class _BytesUp(dict):
    """``new tokens -> Payload.bytes_up(new, hidden)``, each count computed once: in the
    hot loop a lookup that hits is a C call, not a Python method call."""

    def __init__(self, payload: Payload, hidden: bool):
        super().__init__()
        self.payload, self.hidden = payload, hidden

    def __missing__(self, new: int) -> int:
        b = self[new] = self.payload.bytes_up(new, self.hidden)
        return b


class _Progress:
    """A request's state across the general loop's rounds: its context and the tokens the
    draft has not seen (``new``), tokens generated of ``output``, its engine, the pipelined
    tree for its next round (``pre``), and its last verify's end (warm/cold verifies)."""

    __slots__ = ("ctx", "new", "generated", "output", "engine", "pre", "last_ve")

    def __init__(self, ctx: int, output: int):
        self.ctx, self.new, self.generated, self.output = ctx, ctx, 1, output
        self.engine: DraftEngine | None = None
        self.pre: Task | None = None
        self.last_ve = 0.0


class _Hops(NamedTuple):
    """A round's draft side: its task, the bytes it sent up, when it reached the draft and was
    queued, when the reply left (None: not yet known) and the wait before the verify (None:
    the reply's way back is pure delay, waited with the verify)."""

    task: Task
    b_up: int
    t_arrive: float
    t_enq: float
    t_reply: float | None
    lead: float | None


@dataclass(frozen=True)
class Wiring:
    """What a target is wired to in its run: the environment, where it records (``rec``), where
    its requests come from, the profile usage it reports into, and whether the run takes the
    general loops (:func:`starsim.sim.loops.general_loop_reason`)."""

    env: simpy.Environment
    rec: Any
    requests: Requests
    usage: ProfileUsage | None = None
    general: bool = False


@dataclass(frozen=True)
class Hops:
    """A round's way to the draft and back, as samplers: the link up and down (seconds for
    ``bytes``), the server's parse and serialize, the target's own send and receive work
    (None: none)."""

    up: Callable[[int], float]
    down: Callable[[int], float]
    parse: Callable[[], float]
    serialize: Callable[[], float]
    send: Callable[[], float] | None = None
    receive: Callable[[], float] | None = None


@dataclass(frozen=True)
class Speculation:
    """How a target speculates: the acceptance model and the draft tree, whether requests carry
    hidden states (EAGLE), and the run's draft features: a fabric of servers, an adaptive
    controller, pipelined trees."""

    acceptance: _Acceptance
    tree: Any
    hidden: bool = False
    fabric: Any = None
    controller: Any = None
    pipeline: bool = False


class Target:
    def __init__(self, wiring: Wiring, index: int, name: str, group: TargetGroup, unit: DeviceUnit,
                 engine: DraftEngine | None, rng: np.random.Generator, *, spec: Speculation, hops: Hops,
                 pause: Callable[[], float] | None = None):
        """The run builds each piece (``_simulate``'s ``_target``), so that a target holds no
        knowledge of the scenario file: its samplers, links, random stream, engine or fabric."""
        env, requests, usage = wiring.env, wiring.requests, wiring.usage
        acceptance, tree, depth = spec.acceptance.for_target(index), spec.tree, spec.tree.depth
        self.env = env
        self.index = index
        self.name = name
        self.engine_name = f"target-{index}"
        self.unit = unit
        self.engine = engine
        self.requests = requests
        self.rec = wiring.rec
        # rows are appended packed (see Recorder): no Python objects kept per row
        self.payload: Payload = group.payload
        self.verify = timing_sampler(group.verify_time.for_instance(index), rng, usage)
        self.prefill = timing_sampler(group.prefill_time.for_instance(index), rng, usage)
        decode = group.decode_time
        self.decode = timing_sampler(decode.for_instance(index), rng, usage) if decode is not None else None
        clock = lambda: env.now  # noqa: E731 - acceptance that changes during the run reads it
        self.accept = acceptance.sampler(rng, tree.shape(depth), clock) if not isinstance(acceptance, ByCategory) \
            else None
        # acceptance by category: each category's sampler; a request's is self.accept while it runs
        self.by_category = acceptance.samplers(rng, tree.shape(depth), requests.categories) \
            if isinstance(acceptance, ByCategory) else None
        # adaptive speculation draws each depth's acceptance from its own curve, on this stream
        self.accept_at = {depth: self.accept}
        self._acceptance, self._accept_rng, self._clock = acceptance, rng, clock
        self.fabric, self.controller, self.pipeline, self.tree = spec.fabric, spec.controller, spec.pipeline, tree
        self.general = wiring.general  # sim.loops.general_loop_reason decides, for the whole run
        # the target's own message work (None: none) and its verify warm/cold curve (None: off)
        self.send_cpu, self.receive_cpu = hops.send or _zero, hops.receive or _zero
        self.has_msg_cpu = hops.send is not None or hops.receive is not None
        self.warm_cold = group.warm_cold
        # a deadline policy orders tasks by when this target's next token is due
        self.slo = group.tpot_slo_s if engine is not None and engine.policy.needs_deadline else None
        self.tree_tokens, self.depth, self.hidden = tree.tokens, depth, spec.hidden
        self.bytes_up = _BytesUp(self.payload, spec.hidden)
        self.up, self.down, self.parse, self.serialize = hops.up, hops.down, hops.parse, hops.serialize
        self.pause = pause
        self.served = 0
        # the request in progress, kept so an unfinished one can still be reported at the end
        self.current: RequestRow | None = None

    # ------------------------------------------------------------------ device use

    def _hold(self, lead: float, dur: float):
        """Wait ``lead`` (no device), then hold the device for ``dur``; returns (start, end). (A
        round's device interval is written with its row: see RoundWriter.)"""
        env, res, host = self.env, self.unit.resource, self.unit.host
        if host is not None:
            if lead:
                yield env.timeout(lead)
            req = None if res is None else (yield from self.unit.acquire(env))
            start = env.now
            yield from host.run(dur)
            end = env.now
            if req is not None:
                res.release(req)
        elif res is None:
            t0 = env.now
            yield env.timeout(lead + dur)
            start, end = t0 + lead, env.now
        else:
            if lead:
                yield env.timeout(lead)
            req = yield from self.unit.acquire(env)
            start = env.now
            yield env.timeout(dur)
            res.release(req)
            end = env.now
        return start, end

    def _prefill(self, prompt: int):
        """The request's prefill on the device, recorded as a ``prefill`` interval; returns (start, end)."""
        start, end = yield from self._hold(0.0, self.prefill(prompt, 0, 0))
        self.rec.interval_writer(engine=self.engine_name, device=self.unit.name, kind="prefill")(
            target=self.index, start=start, end=end)
        return start, end

    # ------------------------------------------------------------------ life

    def run(self):
        while True:
            req = yield from self.requests.next_for(self)
            if req is None:
                return
            rid, arrival, prompt, output = req
            if self.by_category is not None:
                self.accept = self.by_category[self.requests.category_of.pop(rid)]
            self.served += 1
            self.current = cur = RequestRow(request=rid, target=self.index, prompt_tokens=prompt,
                                            output_tokens=output, t_arrival=arrival, t_start=self.env.now)
            _, first = yield from self._prefill(prompt)
            cur.generated_tokens, cur.t_first_token = 1, first
            rows = RoundWriter(self.rec, target=self.index, request=rid, engine=self.engine_name, device=self.unit.name)
            if self.engine is None:
                yield from self._decode(rows, prompt, output)
            else:
                yield from self._speculate(rows, prompt, output)
            self.current = None
            cur.t_finish = self.env.now
            self.rec.requests.append(cur.row())

    def _decode(self, rows: RoundWriter, prompt: int, output: int, ctx: int | None = None, generated: int = 1):
        """Autoregressive baseline: one token per step (also the rest of a request whose draft
        servers are all down: from context ``ctx``, ``generated`` tokens in)."""
        env, decode, cur = self.env, self.decode, self.current
        step = decode if decode is not None else self.verify
        free = self.unit.free
        decoded = rows.decode
        ctx = prompt + 1 if ctx is None else ctx
        while generated < output:
            dur = step(1, ctx, 0)
            if free:  # the _hold fast path, inlined (see _speculate)
                vs = env.now
                yield env.timeout(dur)
                ve = vs + dur
            else:
                vs, ve = yield from self._hold(0.0, dur)
            decoded(t_verify_start=vs, t_verify_end=ve, context_tokens=ctx)
            generated += 1
            ctx += 1
            cur.generated_tokens = generated

    def _speculate(self, rows: RoundWriter, prompt: int, output: int):
        """Speculative rounds until the request is done.

        The hot loop of the simulator, so: methods bound once, one reusable task per target
        (it has at most one outstanding), and clock values computed rather than read back:
        a process resumed by its own ``timeout(d)`` at time ``t`` is at ``t + d`` exactly
        (SimPy schedules it at ``now + delay``), and one resumed by the draft task's done
        event is at the task's end. The times are the same floats ``env.now`` would give.

        A run with anything else (:func:`starsim.sim.loops.general_loop_reason`) takes the
        general path, :meth:`_speculate_shared`."""
        engine = self.engine
        if self.general:
            yield from self._speculate_shared(rows, prompt, output)
            return
        env, cur = self.env, self.current
        timeout, new_event, submit = env.timeout, env.event, engine.submit
        bytes_up = _BytesUp(self.payload, self.hidden)
        up, down, parse, serialize = self.up, self.down, self.parse, self.serialize
        verify, accept, tokens, depth = self.verify, self.accept, self.tree_tokens, self.depth
        index, draft_index, free, slo = self.index, engine.index, self.unit.free, self.slo
        spoke = rows.round
        b_down = self.payload.bytes_down(tokens)
        rows.tree(draft=draft_index, tree_tokens=tokens, depth=depth, bytes_down=b_down)
        task = Task(index, 0, None)
        ctx = prompt + 1  # the prefill's token is part of the context the draft must see
        new, generated = ctx, 1
        now = env.now
        while generated < output:
            t_send = now
            b_up = bytes_up[new]
            t_up = up(b_up)
            hop = t_up + parse()
            yield timeout(hop)
            t_enq = t_send + hop
            done = new_event()
            task.context, task.done = ctx, done
            if slo is not None:
                task.deadline = token_due(cur.t_first_token, slo, generated)
            submit(task)
            yield done
            t_end = task.end
            t_ser = serialize()
            t_down = down(b_down)
            lead, dur = t_ser + t_down, verify(tokens + 1, ctx, depth)
            if free:  # the _hold fast path, inlined
                yield timeout(lead + dur)
                vs, ve = t_end + lead, t_end + (lead + dur)
            else:
                vs, ve = yield from self._hold(lead, dur)
            k = accept()
            e = emitted(k, generated, output)
            spoke(t_send=t_send, t_draft_arrive=t_send + t_up, t_enqueue=t_enq, t_draft_start=task.start,
                  t_draft_end=t_end, t_reply_send=t_end + t_ser, t_target_arrive=t_end + t_ser + t_down,
                  t_verify_start=vs, t_verify_end=ve, context_tokens=ctx, new_tokens=task.new_tokens, accepted=k,
                  emitted=e, bytes_up=b_up, draft_kv_bytes=task.kv_bytes)
            generated += e
            ctx += e
            new = e
            cur.generated_tokens = generated
            now = ve
        engine.free(index)

    def _accept(self, depth: int) -> int:
        """Accepted draft tokens of a round ``depth`` deep (adaptive depths: one curve each)."""
        f = self.accept_at.get(depth)
        if f is None:
            f = self.accept_at[depth] = self._acceptance.sampler(self._accept_rng, self.tree.shape(depth), self._clock)
        return f()

    def _speculate_shared(self, rows: RoundWriter, prompt: int, output: int):
        """:meth:`_speculate` for every run :func:`~starsim.sim.loops.general_loop_reason` names:
        message work that competes for cores, warm/cold verifies, a fabric of servers, adaptive
        depths, pipelined trees.

        A round: the target builds and sends its request (its own work), the wire, the
        server parses it (the draft host's work), the engine, the server's reply (its work),
        the wire, the target receives it (its work), the verify (slowed by the idle gap
        since this target's last verify when the profile has a verify_idle curve). The
        rounds table stamps arrivals after the receiving side's parse, as a real run does.

        Fabric: the target pairs at the request's start; when its server fails under it, it
        pairs again and sends its whole context to the new server (the round starts over).
        Adaptive: the controller picks each round's depth; depth 0 is one decode step
        (:meth:`_plain_step`). Pipelined: the engine drafts the next tree as soon as this one
        is out, assuming it is accepted whole; on a hit (:func:`starsim.rules.pipelined_hit`)
        the next round verifies that tree as soon as it is here (:meth:`_pipelined_hops`);
        on a miss it is cancelled (draft time spent on it is wasted)."""
        fabric = self.fabric
        st = _Progress(prompt + 1, output)
        st.last_ve = self.env.now
        st.engine = self.engine if fabric is None else fabric.engine_for(self.index)
        task = Task(self.index, 0, None)
        while st.generated < output:
            if st.engine is None:  # every draft server is down: the rest without speculation
                yield from self._decode(rows, prompt, output, st.ctx, st.generated)
                return
            hit = st.pre is not None and not st.pre.failed
            if hit:  # the pipelined tree's depth (the controller chose it a round ago)
                d = self.depth if st.pre.depth is None else st.pre.depth
            else:
                d = self.depth if self.controller is None else self.controller.depth(st.ctx)
            t_send = self.env.now
            if d == 0:
                yield from self._plain_step(rows, st, t_send)
                continue
            toks = self.tree_tokens if d == self.depth else self.tree.tokens_at(d)
            b_down = self.payload.bytes_down(toks)
            if hit:
                hops = yield from self._pipelined_hops(st, b_down)
            else:
                hops = yield from self._request_hops(task, st, d, toks, b_down)
            if hops is not None:
                yield from self._verify_round(rows, st, hops, d, toks, b_down, t_send, hit)
        if st.pre is not None:
            st.engine.cancel(st.pre, st.ctx)
        if st.engine is not None:
            st.engine.free(self.index)

    def _plain_step(self, rows: RoundWriter, st: _Progress, t_send: float):
        """Adaptive depth 0: one decode step, no draft request (the draft sees its token with
        the next request)."""
        vs, ve = yield from self._hold(0.0, (self.decode or self.verify)(1, st.ctx, 0))
        rows.decode(t_verify_start=vs, t_verify_end=ve, context_tokens=st.ctx)
        self.controller.observe(0, 0, ve - t_send, st.ctx)
        st.last_ve = ve
        st.generated += 1
        st.ctx += 1
        st.new += 1
        self.current.generated_tokens = st.generated

    def _pipelined_hops(self, st: _Progress, b_down: int):
        """A hit: the tree drafted during the last verify, once it is done and down the wire.
        Returns its hops, or None when its server failed meanwhile (the round starts over,
        as an ordinary one)."""
        t = st.pre
        if not t.done.triggered:
            yield t.done
        if t.failed:
            st.pre = None
            return None
        t_reply = yield from self._pipelined_reply(t, b_down)
        return _Hops(t, 0, t.submitted, t.submitted, t_reply, 0.0)

    def _request_hops(self, t: Task, st: _Progress, d: int, toks: int, b_down: int):
        """An ordinary round's draft request: the target's send work, the wire up, the server's
        parse, the engine, and (when it is not pure delay, waited with the verify instead) the
        reply's way back. Returns its hops, or None when the server failed with it (the target
        pairs again and will send its whole context)."""
        env, engine = self.env, st.engine
        b_up = self.bytes_up[st.new]
        t_arrive, t_enq = yield from self._way_up(engine, b_up)
        t.context, t.done, t.failed, t.next = st.ctx, env.event(), False, None
        # the task is reused: a full-depth round after a shallower one must not keep its depth
        t.depth, t.tokens = (d, toks) if d != self.depth else (None, None)
        if self.slo is not None:
            t.deadline = token_due(self.current.t_first_token, self.slo, st.generated)
        engine.submit(t)
        yield t.done
        if t.failed:
            st.engine = self.fabric.after_failure(self.index) if self.fabric is not None else None
            st.new = st.ctx
            return None
        if engine.unit.host is None and not self.has_msg_cpu:
            return _Hops(t, b_up, t_arrive, t_enq, None, None)  # the way back: waited with the verify
        t_reply = yield from self._way_back(engine, b_down)
        return _Hops(t, b_up, t_arrive, t_enq, t_reply, 0.0)

    # ------------------------------------------------------------------ a draft request's hops (both loops'
    # general paths and the serving target's)

    def _way_up(self, engine: DraftEngine, b_up: int):
        """A draft request's way to ``engine``: the target's send work, the wire up, the
        server's parse (the wire and the parse in one wait when the draft's host shares no
        cores, summed as :meth:`_speculate` does). Returns (reached the server, queued)."""
        env = self.env
        yield from _work(env, self.unit.host, self.send_cpu())
        t0, t_up = env.now, self.up(b_up)
        if engine.unit.host is None:
            yield env.timeout(t_up + self.parse())
            return t0 + t_up, env.now
        yield env.timeout(t_up)
        t_arrive = env.now
        yield from _work(env, engine.unit.host, self.parse())
        return t_arrive, env.now

    def _way_back(self, engine: DraftEngine, b_down: int):
        """The reply's way back when some of it competes for cores: the server's serialize, the
        wire down, the target's receive work. Returns when the reply left the server."""
        env = self.env
        yield from _work(env, engine.unit.host, self.serialize())
        t_reply = env.now
        yield env.timeout(self.down(b_down))
        yield from _work(env, self.unit.host, self.receive_cpu())
        return t_reply

    def _delay_back(self, t_end: float, b_down: int) -> tuple[float, float, float]:
        """The reply's way back as pure delay, waited with the verify (as :meth:`_speculate` sums
        it: serialize + wire down): (the wait before the verify, the reply leaves, it is here)."""
        t_ser = self.serialize()
        t_down = self.down(b_down)
        return t_ser + t_down, t_end + t_ser, t_end + t_ser + t_down

    def _pipelined_reply(self, t: Task, b_down: int):
        """A pipelined tree's reply: serialized when it was drafted, down the wire (waited only
        if it is not here yet), received. Returns when it left the server."""
        env = self.env
        t_reply = t.end + self.serialize()
        ready = t_reply + self.down(b_down)
        if ready > env.now:
            yield env.timeout(ready - env.now)
        yield from _work(env, self.unit.host, self.receive_cpu())
        return t_reply

    def _verify_round(self, rows: RoundWriter, st: _Progress, h: _Hops, d: int, toks: int, b_down: int,
                      t_send: float, hit: bool):
        """The round's verify, its acceptance, its rows, and the pipelined tree's fate."""
        t, engine, ctx = h.task, st.engine, st.ctx
        st.pre = t.next
        t_end = t.end
        if self.fabric is not None:
            self.fabric.served(self.index, engine)
        if h.lead is None:
            lead, t_reply, t_back = self._delay_back(t_end, b_down)
        else:
            lead, t_reply, t_back = 0.0, h.t_reply, self.env.now
        dur = self.verify(toks + 1, ctx, d)
        if self.warm_cold is not None:
            dur *= self.warm_cold(t_back - st.last_ve)
        vs, ve = yield from self._hold(lead, dur)
        st.last_ve = ve
        k = self._accept(d) if d != self.depth else self.accept()
        e = emitted(k, st.generated, st.output)
        rows.tree(draft=engine.index, tree_tokens=toks, depth=d, bytes_down=b_down)
        rows.round(t_send=t.submitted if hit else t_send, t_draft_arrive=h.t_arrive, t_enqueue=h.t_enq,
                   t_draft_start=t.start, t_draft_end=t_end, t_reply_send=t_reply, t_target_arrive=t_back,
                   t_verify_start=vs, t_verify_end=ve, context_tokens=ctx, new_tokens=t.new_tokens, accepted=k,
                   emitted=e, bytes_up=h.b_up, draft_kv_bytes=t.kv_bytes)
        if self.controller is not None:
            self.controller.observe(d, k, ve - t_send, ctx)
        if st.pre is not None:
            # the simulator's trees are counts: a full acceptance took the main path and offers the bonus
            if pipelined_hit(k == d, st.generated + e < st.output) and not st.pre.failed:
                engine.promote(st.pre)
            else:
                engine.cancel(st.pre, ctx + k)
                st.pre = None
        st.generated += e
        st.ctx += e
        st.new = e
        self.current.generated_tokens = st.generated
