"""A serving target in the simulator: one engine loop of steps (continuous batching).

Each step is one SimPy wait whatever the batch: the scheduler (:mod:`starsim.serving`, no
clock) picks the step's prefill chunks and decoding sequences; in the star, the target sends
one draft request for all its decoding sequences and the draft engine drafts them as one
batched round; then one forward verifies every tree and computes every chunk, priced by
the group's ``serving.step_time`` (or, without one, at ``max_seqs: 1``, by its prefill,
verify and decode times, which makes it StarSD's target exactly: tests/test_serving.py).
Requests come from users (a closed loop, ``workload.concurrency`` per target), from the
fleet's queue when a slot is free (``router: first_free``) or from the router.
"""

from __future__ import annotations

import math

import simpy

from ..records import RequestRow, RoundWriter
from ..rules import emitted, pauses_first, pipelined_hit, token_due
from ..scenario import Serving
from ..serving import Seq, Step, StepScheduler, step_row, tree_shape
from .draft import Task
from .target import Target


class _User:
    __slots__ = ("served", "done")

    def __init__(self):
        self.served, self.done = 0, None


class ServingTarget(Target):
    """A :class:`Target` that serves ``serving.max_seqs`` requests at once (see the module docstring)."""

    def __init__(self, *args, serving: Serving, users: int, where: str, record_rounds: bool = True, **kw):
        """As :class:`Target`, with the group's ``serving``, the closed loop's ``users`` per
        target (0: requests come from the fleet's queue or its router), the field path errors
        name and ``record_rounds`` (False: no rounds rows, the steps table carries the tokens)."""
        super().__init__(*args, **kw)
        self.record_rounds = record_rounds
        self.cfg = serving
        self.batched = serving.max_seqs > 1
        spec = self.engine is not None or self.fabric is not None
        self.sched = StepScheduler(max_seqs=serving.max_seqs, budget=serving.max_batched_tokens,
                                   kv_capacity=serving.kv_tokens, per_round=self.tree_tokens + 1 if spec else 1,
                                   reserve_whole=serving.on_kv_full == "wait", where=where)
        st = serving.step_time
        self.step_time = st.sampler(self._accept_rng) if st is not None else None
        self.users, self.sources = users, max(users, 1)
        self._wake: simpy.Event | None = None
        self._slot: simpy.Event | None = None
        self.steps = 0
        self._pre: dict[int, tuple[Task, object]] = {}  # request -> its pipelined tree and the engine drafting it
        self._accept_of: dict = {}  # request -> its acceptance sampler (acceptance by category)
        self._drafted: set[int] = set()  # requests that had a draft request (the fabric pairs at a new one)
        self.log_step = {k: self.rec.interval_writer(engine=self.engine_name, device=self.unit.name, kind=k)
                         for k in ("prefill", "verify", "decode")}

    # ------------------------------------------------------------------ requests in

    def processes(self, stagger_s: float = 0.0) -> list:
        """The generators to start: the engine loop, then its sources (users, ``stagger_s`` apart;
        the fleet feeder)."""
        if self.requests.store is None:
            return [self.run(), *(self._user(_User(), k * stagger_s) for k in range(self.users))]
        return [self.run(), self._feeder()]

    def _enqueue(self, rid: int, arrival: float, prompt: int, output: int, owner=None) -> None:
        s = Seq(rid, prompt, output, arrival, owner)
        s.tag = (self.index, rid) if self.batched else self.index
        if self.by_category is not None:  # its rounds draw from its prompt's category's model
            self._accept_of[rid] = self.by_category[self.requests.category_of.pop(rid)]
        s.row = RequestRow(request=rid, target=self.index, prompt_tokens=prompt, output_tokens=output,
                           t_arrival=arrival)
        self.sched.add(s)
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed()

    def _user(self, u: _User, start: float = 0.0):
        """One closed-loop user: from ``start``, a request, its answer, the next (a pause between,
        as the workload says)."""
        if start:
            yield self.env.timeout(start)
        while True:
            req = yield from self.requests.next_for(self, pausing=pauses_first(u.served))
            if req is None:
                break
            u.served += 1
            self.served += 1
            u.done = self.env.event()
            self._enqueue(*req, owner=u)
            yield u.done
        self._source_done()

    def _feeder(self):
        """``router: first_free``: take the fleet queue's next arrival whenever a slot is free."""
        while True:
            while self.sched.outstanding >= self.cfg.max_seqs:
                self._slot = self.env.event()
                yield self._slot
            item = yield self.requests.store.get()
            if item is None:
                break
            self.served += 1
            self._enqueue(*item)
        self._source_done()

    def receive(self, item) -> None:
        """The router sends an arrival ``(rid, arrival, prompt, output)``; None: no more."""
        if item is None:
            self._source_done()
        else:
            self.served += 1
            self._enqueue(*item)

    def _source_done(self) -> None:
        self.sources -= 1
        self._poke()

    def unfinished(self) -> list[tuple]:
        """Request rows of what it still holds when the run ends (running, then queued)."""
        return [s.row.row() for s in (*self.sched.running, *self.sched.waiting)]

    # ------------------------------------------------------------------ the engine loop

    def run(self):
        env, sched = self.env, self.sched
        fabric = self.fabric
        engine = self.engine if fabric is None else None  # paired at the first round (see _speculate_step)
        last_ve = env.now
        while True:
            step = sched.plan()
            if not step:
                if self.sources <= 0 and not sched.outstanding:
                    return
                self._wake = env.event()
                yield self._wake
                continue
            now = env.now
            if step.preempted and self._pre:
                self._drop_pipelined(step.preempted)
            for s in self._in(step):
                if math.isnan(s.row.t_start):
                    s.row.t_start = now
            hops = None
            if step.verify and (engine is not None or fabric is not None):
                engine, hops = yield from self._speculate_step(engine, step)
            vs, ve, kind = yield from self._forward(step, hops, last_ve)
            last_ve = ve  # the device is as warm after a prefill as after a verify
            self._outcomes(step, hops, engine, vs, ve, kind)

    @staticmethod
    def _in(step: Step) -> list[Seq]:
        return step.verify + [s for s, _ in step.prefill]

    def _speculate_step(self, engine, step: Step):
        """The step's draft request, paired through the fabric if there is one; on a server's
        failure, again to another one with every context (None: none left: the step decodes a
        token each). Returns (engine, hops).

        A target pairs when a request starts its rounds (as one without serving does at each
        request), keeping its server unless the fabric moves it; its requests share it."""
        fabric = self.fabric
        if fabric is not None and (engine is None or any(s.rid not in self._drafted for s in step.verify)):
            engine = self._paired(engine, step)
            self._drafted.update(s.rid for s in step.verify)
        while True:
            if engine is not None:
                hops = yield from self._draft(engine, step)
                if hops is not None:
                    return engine, hops
                engine = fabric.after_failure(self.index) if fabric is not None else None
                for s in step.verify:
                    s.new = s.ctx
            if engine is None:  # a token each, not a tree
                q = self.sched.per_round
                step.shape = sum((tree_shape(1, s.ctx) + tree_shape(q, s.ctx).times(-1) for s in step.verify),
                                 step.shape)
                return None, None

    def _paired(self, engine, step: Step):
        """The fabric's engine for this step; a new one has none of the sequences' caches."""
        new = self.fabric.engine_for(self.index)
        if new is not engine and new is not None:
            for s in step.verify:
                s.new = s.ctx
        return new

    def _draft(self, engine, step: Step):
        """The step's trees: one draft request for the sequences without a pipelined tree
        (:meth:`_request`), then the pipelined ones (:meth:`_pipelined`). Returns the hops
        (``by``: each sequence's, in the step's order; ``lead``, ``t_back``), or None if its
        server failed."""
        pre: dict = {}
        fresh = [] if self._pre else step.verify  # nothing pipelined: every sequence asks
        for s in step.verify if self._pre else ():
            t, e = self._pre.pop(s.rid, (None, None))
            if t is not None and not t.failed and e is not engine:  # the fabric moved it: that tree is lost
                e.miss(t, {s.tag: 0})
            if t is None or t.failed or e is not engine:
                fresh.append(s)
            else:
                pre.setdefault(t, []).append(s)
        by, lead, hf = {}, 0.0, None
        if fresh:
            hf = yield from self._request(engine, fresh, defer=not pre)
            if hf is None:
                return None
            lead = hf["lead"]
            if not pre:  # every sequence's tree from this request: hops["by"] None, the i-th its i-th
                return {"by": None, "fresh": hf, "lead": lead, "t_back": hf["t_back"]}
            by.update((s.rid, (hf, j)) for j, s in enumerate(fresh))
        for t, seqs in pre.items():
            h = yield from self._pipelined(engine, t, seqs)
            if h is None:
                return None
            pos = {tag: j for j, (tag, _) in enumerate(t.seqs)} if self.batched else None
            by.update((s.rid, (h, pos[s.tag] if pos else 0)) for s in seqs)
        hops = [by[s.rid] for s in step.verify]
        return {"by": hops, "fresh": hf, "lead": lead, "t_back": max(h["t_back"] for h, _ in hops)}

    def _request(self, engine, seqs: list[Seq], defer: bool):
        """One draft request for ``seqs``: up the link, the engine (one batched round), the
        reply down (``defer``: a pure delay is waited with the forward, its ``lead``). Returns
        its hops, or None if its server failed."""
        env = self.env
        new, top, pairs = 0, 0, []
        add = pairs.append
        for s in seqs:  # one pass: the tokens the draft has not seen (sent now), the (tag, context) pairs
            new += s.new
            s.new = 0
            c = s.ctx
            add((s.tag, c))
            if c > top:
                top = c
        b_up = self.bytes_up[new]
        b_down = self._bytes_down(len(seqs))
        t_send = env.now
        t_arrive, t_enq = yield from self._way_up(engine, b_up)
        task = Task(self.index, 0, env.event())
        task.context = top
        if self.batched:
            task.seqs = pairs
        if self.slo is not None:
            task.deadline = min(token_due(s.row.t_first_token, self.slo, s.generated) for s in seqs)
        engine.submit(task)
        yield task.done
        if task.failed:
            return None
        if self.fabric is not None:
            self.fabric.served(self.index, engine)
        if defer and engine.unit.host is None and not self.has_msg_cpu:  # pure delay: waited with the forward
            lead, t_reply, t_back = self._delay_back(task.end, b_down)
        else:
            t_reply = yield from self._way_back(engine, b_down)
            lead, t_back = 0.0, env.now
        return {"task": task, "engine": engine, "t_send": t_send, "t_arrive": t_arrive, "t_enq": t_enq,
                "t_reply": t_reply, "t_back": t_back, "lead": lead, "b_up": b_up, "b_down": b_down}

    def _pipelined(self, engine, t: Task, seqs: list[Seq]):
        """The trees the engine drafted ahead for ``seqs`` (each accepted its last tree whole):
        waited for, then their reply down (as Target._speculate_shared's hit). None: its
        server failed meanwhile."""
        env = self.env
        if not t.done.triggered:
            yield t.done
        if t.failed:
            return None
        b_down = self._bytes_down(len(seqs))
        t_reply = yield from self._pipelined_reply(t, b_down)
        for s in seqs:  # the engine drafted it on their accepted tokens: nothing new to send
            s.new = 0
        return {"task": t, "engine": engine, "t_send": t.submitted, "t_arrive": t.submitted, "t_enq": t.submitted,
                "t_reply": t_reply, "t_back": env.now, "lead": 0.0, "b_up": 0, "b_down": b_down}

    def _bytes_down(self, n: int) -> int:
        """A reply carrying ``n`` sequences' trees, one header."""
        return self.payload.bytes_down(self.tree_tokens) * n - self.payload.header_bytes * (n - 1)

    def _forward(self, step: Step, hops: dict | None, last_ve: float):
        """The step's forward on the target's device; returns (start, end, interval kind)."""
        lead = hops["lead"] if hops is not None else 0.0
        spec = hops is not None
        if self.step_time is not None:
            dur = self.step_time(step.shape)
        elif step.verify:  # one sequence (max_seqs 1): the group's own ops, as a target without serving
            s = step.verify[0]
            if spec:
                dur = self.verify(self.tree_tokens + 1, s.ctx, self.depth)
            else:
                dur = (self.decode if self.decode is not None else self.verify)(1, s.ctx, 0)
        else:
            dur = self.prefill(step.prefill[0][1], 0, 0)
        if spec and self.warm_cold is not None:
            dur *= self.warm_cold(hops["t_back"] - last_ve)
        kind = "verify" if spec else ("decode" if step.verify else "prefill")
        vs, ve = yield from self._hold(lead, dur)
        return vs, ve, kind

    def _outcomes(self, step: Step, hops: dict | None, engine, vs: float, ve: float, kind: str) -> None:
        """Each sequence's tokens from the step: its acceptance drawn (a tree) or one token,
        its round row; the prefill chunks; the step's row and interval; finished requests out."""
        rows_on, spec, piped = self.record_rounds, hops is not None, self.pipeline
        by = hops["by"] if spec else None
        emits, hits, accepted = [], [], 0
        for i, s in enumerate(step.verify):
            left = s.output - s.generated
            if not spec:
                emits.append(1)
                if rows_on:
                    self._rows(s).decode(t_verify_start=vs, t_verify_end=ve, context_tokens=s.ctx)
                continue
            k = self.accept() if self.by_category is None else self._accept_of[s.rid]()
            e = emitted(k, s.generated, s.output)
            emits.append(e)
            accepted += k
            if piped:  # the simulator's trees are counts: a full acceptance took the main path and offers the bonus
                hits.append(None if pipelined_hit(k == self.depth, e < left) else s.ctx + k)  # None: a hit
            if not rows_on:
                continue
            h, j = by[i] if by is not None else (hops["fresh"], i)
            t = h["task"]
            rows = self._rows(s)
            rows.tree(draft=h["engine"].index, tree_tokens=self.tree_tokens, depth=self.depth, bytes_down=h["b_down"])
            rows.round(t_send=h["t_send"], t_draft_arrive=h["t_arrive"], t_enqueue=h["t_enq"],
                       t_draft_start=t.start, t_draft_end=t.end, t_reply_send=h["t_reply"],
                       t_target_arrive=h["t_back"], t_verify_start=vs, t_verify_end=ve, context_tokens=s.ctx,
                       new_tokens=t.new_tokens if t.seqs is None else t.seq_new[j], accepted=k,
                       emitted=e, bytes_up=h["b_up"], draft_kv_bytes=t.kv_bytes)
        if spec and piped:
            self._pipeline_outcomes(step, hops, hits)
        last = [s for s, c in step.prefill if s.computed + c >= s.todo]  # a chunk that ends a prefill
        total, rounds = sum(emits), len(emits)
        done = self.sched.finish(step, emits)
        for s in last:
            if s.generated == 1:
                s.row.t_first_token = ve
            else:  # a recompute's token (after a preemption): a round without a draft, so tokens add up
                total += 1
                rounds += 1
                if rows_on:
                    self._rows(s).decode(t_verify_start=vs, t_verify_end=ve, context_tokens=s.todo)
        if self.batched or kind == "prefill":
            self.log_step[kind](target=self.index, start=vs, end=ve)
        self._step_row(step, vs, ve, len(step.verify) if spec else 0, accepted, total, rounds)
        for s in self._in(step):
            s.row.generated_tokens = s.generated
        for s in done:
            self._accept_of.pop(s.rid, None)
            self._drafted.discard(s.rid)
            s.row.t_finish = ve
            self.rec.requests.append(s.row.row())
            if engine is not None:
                engine.free((self.index, s.rid) if self.batched else self.index)
            if s.owner is not None:
                s.owner.done.succeed()
        if done and self._slot is not None:
            slot, self._slot = self._slot, None
            slot.succeed()

    def _pipeline_outcomes(self, step: Step, hops: dict, hits: list[int | None]) -> None:
        """Pipelined trees after a step: each tree this step verified has its follow (drafted
        ahead for the same sequences); the sequences that accepted their tree whole and go
        on (``hits[i]`` None) verify it next, the follow of the others is cut back to the
        tokens they accepted (``hits[i]``; their share of it wasted), as Target._speculate_shared."""
        by = hops["by"] or [(hops["fresh"], i) for i in range(len(step.verify))]
        tasks: dict = {}
        for i, s in enumerate(step.verify):
            tasks.setdefault(by[i][0]["task"], []).append((s, hits[i]))
        engine = by[0][0]["engine"]
        for t, outcome in tasks.items():
            nxt = t.next
            if nxt is None:
                continue
            valid = {s.tag: v for s, v in outcome if v is not None}
            if len(valid) == len(outcome):
                engine.cancel(nxt, valid if self.batched else valid[self.index])
                continue
            engine.promote(nxt, valid if self.batched else None)
            for s, v in outcome:
                if v is None:
                    self._pre[s.rid] = (nxt, engine)

    def _drop_pipelined(self, seqs: list[Seq]) -> None:
        """Preempted sequences (their context recomputed later) lose their pipelined trees."""
        for s in seqs:
            t, engine = self._pre.pop(s.rid, (None, None))
            if t is not None:
                engine.miss(t, {s.tag: 0})

    def _rows(self, s: Seq) -> RoundWriter:
        if s.rows is None:
            s.rows = RoundWriter(self.rec, target=self.index, request=s.rid, engine=self.engine_name,
                                 device=self.unit.name, intervals=not self.batched)
        return s.rows

    def _step_row(self, step: Step, vs: float, ve: float, trees: int, accepted: int, emitted: int,
                  rounds: int) -> None:
        self.rec.steps.append(step_row(self.index, self.steps, step, vs, ve, self.sched.capacity, trees=trees,
                                       accepted=accepted, emitted=emitted, rounds=rounds))
        self.steps += 1
