"""A target instance: take a request, prefill, then speculative rounds until it is done.

The whole life of a target reads top to bottom in :meth:`Target.run`. One round is
send -> (link up + parse) -> draft engine -> (serialize + link down) -> verify -> accept.
Delays that nobody competes for are merged into one SimPy timeout; the timestamps of every
hop are still recorded exactly.
"""

from __future__ import annotations

from collections.abc import Callable

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


class Target:
    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        name: str,
        group: TargetGroup,
        unit: DeviceUnit,
        engine: DraftEngine | None,
        requests: Requests,
        rng: np.random.Generator,
        rec,
        *,
        acceptance: _Acceptance,
        tree_tokens: int,
        depth: int,
        hidden: bool,
        up: Callable[[int], float],
        down: Callable[[int], float],
        parse: Callable[[], float],
        serialize: Callable[[], float],
        send: Callable[[], float] | None = None,
        receive: Callable[[], float] | None = None,
        pause: Callable[[], float] | None,
        usage: ProfileUsage | None = None,
        fabric=None,
        controller=None,
        pipeline: bool = False,
        tree,
        general: bool = False,
    ):
        """Many parameters, on purpose: the run (``_simulate``'s ``_target``) wires each model
        piece in (its samplers, links, random stream, engine or fabric, controller), so that a
        target holds no knowledge of the scenario file; all but the first nine are by keyword."""
        self.env = env
        self.index = index
        self.name = name
        self.engine_name = f"target-{index}"
        self.unit = unit
        self.engine = engine
        self.requests = requests
        self.rec = rec
        # rows are appended packed (see Recorder): no Python objects kept per row
        self.payload: Payload = group.payload
        self.verify = timing_sampler(group.verify_time, rng, usage)
        self.prefill = timing_sampler(group.prefill_time, rng, usage)
        decode = group.decode_time
        self.decode = timing_sampler(decode, rng, usage) if decode is not None else None
        clock = lambda: env.now  # noqa: E731 - acceptance that changes during the run reads it
        self.accept = acceptance.sampler(rng, tree.shape(depth), clock) if not isinstance(acceptance, ByCategory) \
            else None
        # acceptance by category: each category's sampler; a request's is self.accept while it runs
        self.by_category = acceptance.samplers(rng, tree.shape(depth), requests.categories) \
            if isinstance(acceptance, ByCategory) else None
        # adaptive speculation draws each depth's acceptance from its own curve, on this stream
        self.accept_at = {depth: self.accept}
        self._acceptance, self._accept_rng, self._clock = acceptance, rng, clock
        self.fabric, self.controller, self.pipeline, self.tree = fabric, controller, pipeline, tree
        self.general = general  # sim.loops.general_loop_reason decides, for the whole run
        # the target's own message work (None: none) and its verify warm/cold curve (None: off)
        self.send_cpu, self.receive_cpu = send or _zero, receive or _zero
        self.has_msg_cpu = send is not None or receive is not None
        self.warm_cold = group.warm_cold
        # a deadline policy orders tasks by when this target's next token is due
        self.slo = group.tpot_slo_s if engine is not None and engine.policy.needs_deadline else None
        self.tree_tokens, self.depth, self.hidden = tree_tokens, depth, hidden
        self.up, self.down, self.parse, self.serialize = up, down, parse, serialize
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
            req = None if res is None else res.request()
            if req is not None:
                yield req
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
            req = res.request()
            yield req
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
        """:meth:`_speculate` where message work competes for cores, verifies warm up, the
        draft is a fabric of servers, the depth adapts or trees are pipelined.

        A round: the target builds and sends its request (its own work), the wire, the
        server parses it (the draft host's work), the engine, the server's reply (its work),
        the wire, the target receives it (its work), the verify (slowed by the idle gap
        since this target's last verify when the profile has a verify_idle curve). The
        rounds table stamps arrivals after the receiving side's parse, as a real run does.

        Fabric: the target pairs at the request's start; when its server fails under it, it
        pairs again and sends its whole context to the new server (the round starts over).
        Adaptive: the controller picks each round's depth; depth 0 is one decode step, with
        no draft request. Pipelined: the engine drafts the next tree as soon as this one is
        out, assuming it is accepted whole; on a hit (every draft token accepted, the request
        goes on) the next round verifies that tree as soon as it is here (its row's hops are
        the pipelined tree's: queued when the last tree was done); on a miss it is cancelled
        (draft time spent on it is wasted).

        About 120 lines, kept as one loop: a round's hops read in their order, and each hop
        split into a generator would cost a ``yield from`` per hop (tests/test_loops.py holds it
        to the fast loop's tables)."""
        env, cur = self.env, self.current
        fabric, ctl = self.fabric, self.controller
        engine = self.engine if fabric is None else fabric.engine_for(self.index)
        bytes_up = _BytesUp(self.payload, self.hidden)
        up, down, parse, serialize = self.up, self.down, self.parse, self.serialize
        send_cpu, receive_cpu, warm_cold = self.send_cpu, self.receive_cpu, self.warm_cold
        verify, tokens, depth = self.verify, self.tree_tokens, self.depth
        step = self.decode if self.decode is not None else verify
        index, host = self.index, self.unit.host
        task = Task(index, 0, None)
        ctx = prompt + 1
        new, generated = ctx, 1
        last_ve = env.now
        pre = None  # the pipelined tree for the next round (a hit), if any
        while generated < output:
            if engine is None:  # every draft server is down: the rest without speculation
                yield from self._decode(rows, prompt, output, ctx, generated)
                return
            hit = pre is not None and not pre.failed
            if hit:  # the pipelined tree's depth (the controller chose it a round ago)
                d = depth if pre.depth is None else pre.depth
            else:
                d = depth if ctl is None else ctl.depth(ctx)
            t_send = env.now
            if d == 0:  # no speculation this round: one decode step, no draft request
                vs, ve = yield from self._hold(0.0, step(1, ctx, 0))
                rows.decode(t_verify_start=vs, t_verify_end=ve, context_tokens=ctx)
                ctl.observe(0, 0, ve - t_send, ctx)
                last_ve = ve
                generated += 1
                ctx += 1
                new += 1  # the draft has not seen it yet
                cur.generated_tokens = generated
                continue
            toks = tokens if d == depth else self.tree.tokens_at(d)
            draft_host = engine.unit.host
            b_down = self.payload.bytes_down(toks)
            if hit:  # the tree was drafted during the last verify
                t = pre
                if not t.done.triggered:
                    yield t.done
                if t.failed:  # its server failed meanwhile: an ordinary round instead
                    pre = None
                    continue
                b_up = 0
                t_arrive = t_enq = t.submitted
                t_reply = t.end + serialize()
                ready = t_reply + down(b_down)
                if ready > env.now:
                    yield env.timeout(ready - env.now)
                yield from _work(env, host, receive_cpu())
            else:
                t = task
                b_up = bytes_up[new]
                yield from _work(env, host, send_cpu())
                t0, t_up = env.now, up(b_up)
                if draft_host is None:  # the wire and the parse in one wait, summed as _speculate does
                    yield env.timeout(t_up + parse())
                    t_arrive = t0 + t_up
                else:
                    yield env.timeout(t_up)
                    t_arrive = env.now
                    yield from _work(env, draft_host, parse())
                t_enq = env.now
                t.context, t.done, t.failed, t.next = ctx, env.event(), False, None
                if d != depth:
                    t.depth, t.tokens = d, toks
                if self.slo is not None:
                    t.deadline = token_due(cur.t_first_token, self.slo, generated)
                engine.submit(t)
                yield t.done
                if t.failed:  # the server failed with this request: pair again, resend everything
                    engine = fabric.after_failure(index) if fabric is not None else None
                    new = ctx
                    continue
                if draft_host is None and not self.has_msg_cpu:
                    lead = None  # the reply's way back is pure delay: waited with the verify, below
                else:
                    lead = 0.0
                    yield from _work(env, draft_host, serialize())
                    t_reply = env.now
                    yield env.timeout(down(b_down))
                    yield from _work(env, host, receive_cpu())
            pre = t.next
            t_end = t.end
            if fabric is not None:
                fabric.served(index, engine)
            if not hit and lead is None:
                # as _speculate sums them: serialize + wire down, then the verify, in one wait
                t_ser = serialize()
                t_down = down(b_down)
                lead = t_ser + t_down
                t_reply, t_back = t_end + t_ser, t_end + t_ser + t_down
            else:
                lead, t_back = 0.0, env.now
            dur = verify(toks + 1, ctx, d)
            if warm_cold is not None:
                dur *= warm_cold(t_back - last_ve)
            vs, ve = yield from self._hold(lead, dur)
            last_ve = ve
            k = self._accept(d) if d != depth else self.accept()
            e = emitted(k, generated, output)
            rows.tree(draft=engine.index, tree_tokens=toks, depth=d, bytes_down=b_down)
            rows.round(t_send=t.submitted if hit else t_send, t_draft_arrive=t_arrive, t_enqueue=t_enq,
                       t_draft_start=t.start, t_draft_end=t_end, t_reply_send=t_reply, t_target_arrive=t_back,
                       t_verify_start=vs, t_verify_end=ve, context_tokens=ctx, new_tokens=t.new_tokens, accepted=k,
                       emitted=e, bytes_up=b_up, draft_kv_bytes=t.kv_bytes)
            if ctl is not None:
                ctl.observe(d, k, ve - t_send, ctx)
            if pre is not None:
                # the simulator's trees are counts: a full acceptance took the main path and offers the bonus
                if pipelined_hit(k == d, generated + e < output) and not pre.failed:
                    engine.promote(pre)
                else:
                    engine.cancel(pre, ctx + k)
                    pre = None
            generated += e
            ctx += e
            new = e
            cur.generated_tokens = generated
        if pre is not None:
            engine.cancel(pre, ctx)
        if engine is not None:
            engine.free(index)
