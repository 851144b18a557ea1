"""A serving target of ``starsim execute``: one process that keeps a running batch of requests
(:class:`~starsim.real.serving_loop.ServingEngine`: the simulator's step rules, one batched
forward per step) on the run's clock.

Each step sends one multi-sequence draft request for all its decoding sequences
(:class:`TcpDrafts`, :meth:`~starsim.real.client.DraftClient.draft_seqs`): each sequence's
tokens new since its last request, its whole context when it starts (or restarts after a
preemption), and the sequences that left since (the server frees their draft state). The draft
server drafts them as one batched round, as the simulator's draft engine does. If the draft
server goes away the target decodes one token a step from then on, as a target without
serving falls back.

Requests, as the simulator's serving target takes them: a closed loop's ``concurrency`` users
per target (each takes its next request when its last one ends, pausing first as the workload
says, user k starting ``stagger_s`` after user k-1); an open loop's shared queue, taken from
whenever a slot is free (``router: first_free``), each request joining the batch at its
arrival time. No request is taken after the horizon; those taken are served to their end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..records import Recorder
from ..rules import pauses_first
from ..serving import StepScheduler
from ..streams import Stream, rng_for
from . import protocol as P
from .client import local_times
from .resources import Turn
from .run_requests import next_request
from .serving_loop import Book, Hops, ServingEngine

log = logging.getLogger("starsim.target")
# a step with nothing to run waits this long at most for its next arrival (seconds)
IDLE_POLL_S = 0.001


class TcpDrafts:
    """``draft_trees`` over a :class:`~starsim.real.client.DraftClient`: one multi-sequence
    request per step, its hops moved onto the target's clock (``clock0``: the run's start on
    this process's ``time.monotonic()``). ``sent``: called once a request is out (the target
    gives its unit back then, as a target without serving does)."""

    def __init__(self, client, clock0: float, temperature: float = 0.0, seed: int = 0, draft: int = 0,
                 sent=None):
        """``draft``: the draft server's index (the rounds rows' ``draft`` column)."""
        self.client, self.clock0, self.temperature, self.draft, self.sent = client, clock0, temperature, draft, sent
        self.rng = rng_for(seed, Stream.SAMPLING, draft)  # each request's seed (a sampled draft's)
        self.known: dict[int, int] = {}  # sid -> context tokens the draft server holds of it
        self.free: list[int] = []  # sequences gone since the last request
        self.lost_at: float | None = None

    def __call__(self, seqs: list[tuple[int, list[int]]]):
        if self.client is None:
            return None
        items = []
        for sid, ctx in seqs:
            n = self.known.get(sid)
            items.append((sid, ctx if n is None else ctx[n:], n is None))
        t_send = time.monotonic() - self.clock0
        seed = int(self.rng.integers(2**63)) if self.temperature > 0 else None
        try:
            trees, hdr = self.client.draft_seqs(items, free=self.free, temperature=self.temperature, seed=seed,
                                                sent=self.sent)
        except (P.ProtocolError, OSError) as e:
            self._lost(e)
            return None
        t_back = time.monotonic() - self.clock0
        self.free = []
        for sid, ctx in seqs:
            self.known[sid] = len(ctx)
        srv = local_times(hdr, self.client.clock_offset_s, self.clock0)  # the server's stamps, on our clock
        hops = Hops(t_send, srv["t_arrive"], srv["t_enqueue"], srv["t_draft_start"], srv["t_draft_end"],
                    srv["t_reply_send"], t_back, [int(n) for n in hdr["new_tokens"]], bytes_up=self.client.bytes_up,
                    bytes_down=self.client.bytes_down, kv_bytes=int(hdr["kv_bytes"]), draft=self.draft)
        return trees, hops

    def done(self, sid: int) -> None:
        """Sequence ``sid`` left the batch: the next request tells the server to free it."""
        if self.known.pop(sid, None) is not None:
            self.free.append(sid)

    def _lost(self, why: Exception) -> None:
        log.warning("draft server lost (%s): decoding without speculation", why)
        self.lost_at = time.monotonic() - self.clock0
        self.client = None


@dataclass
class ServingRun:
    """What a serving target recorded: its rows (steps included), outputs and fallback time."""

    rec: Recorder
    outputs: list[dict]
    fallback_at: float | None


def serve_requests(job, shared, model, client, taken) -> ServingRun:
    """Serve the target's requests (see the module docstring) from the run's start until the
    budget or the horizon ends; ``taken``: the run's record of requests in progress."""
    from .batch_verify import BatchVerifier
    from .models import eos_ids

    t0 = shared.clock0.value
    sv, tree = job.serving, job.tree
    rec = Recorder()
    book = Book(rec, job.index, job.unit, lambda: time.monotonic() - t0, tree=(tree[2], tree[1]),
                rounds=job.record_rounds)
    turn = Turn(job.unit_lock)
    drafts = TcpDrafts(client, t0, job.temperature, job.seed, sent=turn.give) if client is not None else None
    sched = StepScheduler(max_seqs=sv.max_seqs, budget=sv.max_batched_tokens, kv_capacity=sv.kv_tokens,
                          per_round=tree[2] + 1 if drafts is not None else 1, reserve_whole=sv.on_kv_full == "wait",
                          where=f"targets.{job.group}.serving")
    engine = ServingEngine(BatchVerifier(model, job.temperature), sched, draft_trees=drafts,
                           done=drafts.done if drafts is not None else None, book=book,
                           eos=eos_ids(model, job.src), turn=turn, seed=job.seed)
    feed = _Feed(job, shared, taken, engine, t0)
    try:
        while True:
            feed.take()
            feed.arrive()
            finished = engine.step()
            if finished is None:
                turn.give()
                if not feed.more():
                    break
                time.sleep(min(IDLE_POLL_S, max(0.0, feed.next_at() - book.now())))
                continue
            feed.finished(finished)
    finally:
        turn.give()
    rec.requests += book.unfinished()
    outputs = [{"request": rid, "target": job.index, "prompt": list(engine.prompts[rid]), "output": out}
               for rid, out in engine.served.outputs.items() if rid in feed.done]
    return ServingRun(rec, outputs, None if drafts is None else drafts.lost_at)


class _Feed:
    """A serving target's requests in: taken from the run's shared counter (closed loop: by
    its users; open loop: while a slot is free), held until they arrive, then queued."""

    def __init__(self, job, shared, taken, engine: ServingEngine, t0: float):
        self.job, self.shared, self.taken, self.engine, self.t0 = job, shared, taken, engine, t0
        self.deadline = t0 + job.horizon
        self.closed = job.arrivals is None
        # closed loop: when each user may take its next request (None: it has one in flight)
        self.users = [k * job.stagger_s for k in range(job.users)] if self.closed else []
        self.user_served = [0] * len(self.users)
        self.pending: list[tuple[float, int, int, int | None]] = []  # (arrival, rid, prompt index, user)
        self.served = 0  # requests taken (the closed loop's turn counts them)
        self.spent = False  # no request left to take
        self.done: set[int] = set()
        self.think = job.pause.sampler(rng_for(job.seed, Stream.PAUSE, job.index)) if job.pause is not None else None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _next(self) -> tuple[int, int] | None:
        if self.spent or time.monotonic() >= self.deadline:
            self.spent = True
            return None
        got = next_request(self.job, self.shared.issued, self.served)
        if got is None:
            self.spent = True
        return got

    def take(self) -> None:
        """Take what the users (closed loop) or the free slots (open loop) ask for now."""
        now = self.now()
        if self.closed:
            for u, ready in enumerate(self.users):
                if ready is None or ready > now or (got := self._next()) is None:
                    continue
                rid, i = got
                pause = self.think(0.0, 0.0, 0.0) if pauses_first(self.user_served[u]) and self.think else 0.0
                self.users[u] = None
                self.user_served[u] += 1
                self._hold(now + pause, rid, i, u)
            return
        while self.engine.outstanding + len(self.pending) < self.job.serving.max_seqs and (got := self._next()):
            rid, i = got
            self._hold(self.job.arrivals[rid], rid, i, None)

    def _hold(self, at: float, rid: int, i: int, user: int | None) -> None:
        self.served += 1
        self.pending.append((at, rid, i, user))
        self.pending.sort()

    def arrive(self) -> None:
        """Requests whose arrival time has come join the engine's queue."""
        now = self.now()
        while self.pending and self.pending[0][0] <= now:
            at, rid, i, user = self.pending.pop(0)
            prompt, output = self.job.prompts[i]
            self.engine.add(rid, prompt, output, at, owner=user)
            self.taken.take(self.job.index, self.engine.book.rows[rid])

    def finished(self, seqs) -> None:
        for s in seqs:
            self.done.add(s.rid)
            self.taken.clear(self.job.index, s.rid)
            if s.owner is not None:
                self.users[s.owner] = self.now()

    def more(self) -> bool:
        """Whether anything may still come: a request held, one running, or one to take."""
        if self.pending or self.engine.outstanding:
            return True
        if self.closed:
            return not self.spent and any(u is not None for u in self.users)
        return not self.spent

    def next_at(self) -> float:
        """When the next thing may happen: a held request's arrival, or a user's next take."""
        times = [p[0] for p in self.pending] + [u for u in self.users if u is not None]
        return min(times, default=self.now() + IDLE_POLL_S)
