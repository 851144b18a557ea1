"""A serving target's engine loop, for real: the simulator's step rules
(:class:`starsim.serving.StepScheduler`: FCFS admission, ``max_seqs``, the token budget, KV
capacity and preemption by recompute) deciding each step, a :class:`BatchVerifier` running it
in one forward.

:class:`ServingEngine` runs one step at a time: the step's plan, one draft request for all its
decoding sequences (``draft_trees``: a local drafter's batch here, the draft server's
multi-sequence request over TCP in a star, :mod:`starsim.real.serving_worker`), one forward,
the outcome and its rows (:class:`Book`). :func:`serve_batch` drives it with requests that
arrive at given steps, in this process: what the lossless tests and
``analysis/batch_target_bench.py`` run; ``starsim execute`` drives it on the run's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..records import Recorder, RequestRow, RoundWriter, interval_row
from ..rules import emitted
from ..serving import Seq, Step, StepScheduler, step_row
from .batch_verify import BatchVerifier, Chunk, Tree
from .resources import Turn
from .speculation import TreeDraft

EMPTY = TreeDraft([], [], [])


@dataclass
class Hops:
    """A step's draft request, on the target's clock (seconds): sent, at the draft server,
    queued, drafted, its reply sent and back; per sequence, the context tokens the draft
    encoded; the request's and reply's bytes, the draft KV held and the draft server's index."""

    t_send: float
    t_arrive: float
    t_enqueue: float
    t_draft_start: float
    t_draft_end: float
    t_reply: float
    t_back: float
    new_tokens: list[int]
    bytes_up: int = 0
    bytes_down: int = 0
    kv_bytes: int = 0
    draft: int = 0


# ``draft_trees([(sid, context), ...])``: each decoding sequence's tree, in order, and the
# request's hops (None: the draft is gone, every sequence decodes one token this step)
DraftTrees = Callable[[list[tuple[int, list[int]]]], tuple[list[TreeDraft], Hops] | None]


def local_drafts(drafter, now: Callable[[], float] = time.monotonic, temperature: float = 0.0,
                 seed: Callable[[int, list[int]], int | None] | None = None) -> DraftTrees:
    """``draft_trees`` from a :class:`~starsim.real.speculation.Drafter` in this process: one
    :meth:`~starsim.real.speculation.Drafter.draft_batch` per step (no network: its hops are
    the draft's own start and end); ``seed(sid, context)``: a sampled tree's seed."""

    def draft_trees(seqs):
        t0 = now()
        done = drafter.draft_batch([(sid, ctx, temperature, None if seed is None else seed(sid, ctx))
                                    for sid, ctx in seqs])
        t1 = now()
        return [t for t, _ in done], Hops(t0, t0, t0, t0, t1, t1, t1, [n for _, n in done])

    return draft_trees


@dataclass
class Served:
    """What an engine did: each request's tokens (by request id), each step's batch (items in
    its forward), and over the run the sequences preempted, the prefill chunks, the
    speculative rounds and the draft tokens they accepted."""

    outputs: dict[int, list[int]] = field(default_factory=dict)
    batch: list[int] = field(default_factory=list)
    preempted: int = 0
    chunks: int = 0
    rounds: int = 0
    accepted: int = 0


class ServingEngine:
    """One serving target's engine (see the module docstring): ``add`` requests, ``step`` it.

    ``draft_trees``: the step's trees (None: plain decoding, one token a step); ``done(sid)``:
    told when a sequence ends or is preempted (its draft state can go); ``book``: where its
    rows go; ``eos``: token ids that end a request early (its tokens up to and including it);
    ``turn``: the target's unit (:class:`~starsim.real.resources.Turn`), taken for each forward
    (whoever drafts gives it back once the next request is out); ``seed``: sampling's."""

    def __init__(self, verifier: BatchVerifier, sched: StepScheduler, *, draft_trees: DraftTrees | None = None,
                 done: Callable[[int], None] | None = None, book: Book | None = None,
                 eos: frozenset[int] = frozenset(), turn: Turn | None = None, seed: int = 0):
        self.verifier, self.sched, self.draft_trees, self.done, self.book = verifier, sched, draft_trees, done, book
        self.eos, self.turn, self.seed = eos, turn if turn is not None else Turn(), seed
        self.prompts: dict[int, list[int]] = {}
        self.served = Served()

    def add(self, rid: int, prompt: list[int], output: int, arrival: float = 0.0, owner=None) -> Seq:
        """Queue request ``rid`` (``arrival``: when it arrived, on the book's clock)."""
        self.prompts[rid] = prompt
        self.served.outputs[rid] = []
        s = Seq(rid, len(prompt), output, arrival, owner)
        self.sched.add(s)
        if self.book is not None:
            self.book.arrived(rid, len(prompt), output, arrival)
        return s

    @property
    def outstanding(self) -> int:
        return self.sched.outstanding

    def step(self) -> list[Seq] | None:
        """Plan and run one step; the requests it finished (None: nothing to run)."""
        sched, out = self.sched, self.served
        step = sched.plan()
        for s in step.preempted:
            self._gone(s.rid)
        if not step:
            return None
        hops, trees = self._trees(step)
        items = self._items(step, trees)
        out.batch.append(len(items))
        out.preempted += len(step.preempted)
        out.chunks += len(step.prefill)
        self.turn.take()
        t0 = self._now()
        results = self.verifier.step(items)
        t1 = self._now()
        k = len(step.prefill)
        counts, accepted = [], []
        for s, r in zip(step.verify, results[k:]):
            e = self._until_eos(s, r.emitted[: emitted(r.accepted, len(out.outputs[s.rid]), s.output)])
            out.outputs[s.rid] += r.emitted[:e]
            counts.append(e)
            accepted.append(r.accepted)
        spec = trees is not None
        out.rounds += len(step.verify) if spec else 0
        out.accepted += sum(accepted)
        for (s, _), r in zip(step.prefill, results[:k]):
            if r is not None:
                out.outputs[s.rid].append(r)
                self._until_eos(s, [r])
        finished = sched.finish(step, counts)
        if self.book is not None:
            self.book.stepped(step, t0, t1, sched.capacity, hops, accepted, counts, finished)
        for s in finished:
            self._gone(s.rid)
        return finished

    def _now(self) -> float:
        return self.book.now() if self.book is not None else 0.0

    def _gone(self, rid: int) -> None:
        """A sequence left the batch (finished, or preempted: it recomputes later from nothing)."""
        self.verifier.remove(rid)
        if self.done is not None:
            self.done(rid)

    def _until_eos(self, s: Seq, tokens: list[int]) -> int:
        """Of ``tokens``, how many the request keeps: up to and including an end-of-sequence id,
        where it ends (its ``output`` cut there, so the scheduler finishes it)."""
        for j, t in enumerate(tokens):
            if t in self.eos:
                s.output = s.generated + j + 1
                return j + 1
        return len(tokens)

    def _trees(self, step: Step) -> tuple[Hops | None, list[TreeDraft] | None]:
        """The step's draft request for its decoding sequences: (its hops, their trees), or
        (None, None) without a draft."""
        if not step.verify or self.draft_trees is None:
            return None, None
        got = self.draft_trees([(s.rid, self.prompts[s.rid] + self.served.outputs[s.rid]) for s in step.verify])
        if got is None:
            return None, None
        trees, hops = got
        return hops, trees

    def _items(self, step: Step, trees: list[TreeDraft] | None) -> list[Chunk | Tree]:
        """A step's items: each prefill chunk (a sequence starting, or recomputing after a
        preemption, which removed its cache, gets a fresh one), then each decoding sequence's tree."""
        items: list[Chunk | Tree] = []
        for s, c in step.prefill:
            if s.computed == 0:
                self.verifier.add(s.rid, seed=(self.seed << 32) + s.rid)
            context = self.prompts[s.rid] + self.served.outputs[s.rid]
            items.append(Chunk(s.rid, context[s.computed: s.computed + c], s.computed + c >= s.todo))
        trees = trees if trees is not None else [EMPTY] * len(step.verify)
        items += [Tree(s.rid, t) for s, t in zip(step.verify, trees)]
        return items


def serve_batch(verifier: BatchVerifier, sched: StepScheduler, requests: list[tuple[int, list[int], int]],
                draft_trees: DraftTrees | None = None, done: Callable[[int], None] | None = None,
                book: Book | None = None) -> Served:
    """Serve ``requests`` (``(step it arrives at, prompt ids, output tokens)``; request ``i``
    is sequence ``i``) in this process until all are done (see :class:`ServingEngine`);
    ``outputs`` in request order."""
    engine = ServingEngine(verifier, sched, draft_trees=draft_trees, done=done, book=book)
    todo = sorted(range(len(requests)), key=lambda i: requests[i][0])
    n = 0
    while todo or engine.outstanding:
        while todo and requests[todo[0]][0] <= n:
            rid = todo.pop(0)
            engine.add(rid, requests[rid][1], requests[rid][2], book.now() if book is not None else 0.0)
        n += 1
        engine.step()
    out = engine.served
    out.outputs = [out.outputs[i] for i in range(len(requests))]
    return out


class Book:
    """A serving target's rows, as the simulator writes them for a serving target: a steps
    row per step (:func:`starsim.serving.step_row`), a rounds row per sequence per step (a
    speculative round, or a decode), a requests row per request (arrival, admission, first
    token, finish) and one interval per step (``prefill``, ``verify`` or ``decode``, as the
    simulator names it); times from ``now`` (seconds)."""

    def __init__(self, rec: Recorder, target: int, device: str, now: Callable[[], float],
                 tree: tuple[int, int] = (0, 0), rounds: bool = True):
        """``tree``: the scenario's tree (tokens, depth), the rounds rows' tree columns;
        ``rounds`` False: no rounds rows (the scenario's ``record_rounds: false``)."""
        self.rec, self.target, self.device, self.now = rec, target, device, now
        self.tree_tokens, self.depth = tree
        if rec.steps is None:
            rec.steps = []
        self.rows: dict[int, RequestRow] = {}
        self.writers: dict[int, RoundWriter] | None = {} if rounds else None
        self.steps = 0

    def arrived(self, rid: int, prompt: int, output: int, at: float) -> None:
        self.rows[rid] = RequestRow(request=rid, target=self.target, prompt_tokens=prompt, output_tokens=output,
                                    t_arrival=at)

    def unfinished(self) -> list[tuple]:
        """Rows of the requests it holds still (running or queued)."""
        return [row.row() for row in self.rows.values()]

    def stepped(self, step: Step, t0: float, t1: float, capacity: float, hops: Hops | None, accepted: list[int],
                counts: list[int], finished: list[Seq]) -> None:
        """Step ``step`` ran from ``t0`` to ``t1``: its rows (``hops``: its draft request, None
        for plain decoding; ``accepted``, ``counts``: each decoding sequence's accepted and
        emitted tokens; ``finished``: the requests it ended)."""
        for s, _ in step.prefill:
            row = self.rows[s.rid]
            if row.t_start != row.t_start:  # NaN: admitted by this step
                row.t_start = t0
            if s.prefilled and row.t_first_token != row.t_first_token:
                row.t_first_token = t1
        rounds = self._rounds(step, t0, t1, hops, accepted, counts)
        for s in (*step.verify, *(s for s, _ in step.prefill)):
            self.rows[s.rid].generated_tokens = s.generated
        trees = len(step.verify) if hops is not None else 0
        self.rec.steps.append(step_row(self.target, self.steps, step, t0, t1, capacity, trees=trees,
                                       accepted=sum(accepted), emitted=sum(counts) + rounds - len(counts),
                                       rounds=rounds))
        self.steps += 1
        kind = "verify" if trees else ("decode" if step.verify else "prefill")
        self.rec.intervals.append(interval_row(engine=f"target-{self.target}", device=self.device, kind=kind,
                                               target=self.target, start=t0, end=t1))
        for s in finished:
            row = self.rows.pop(s.rid)
            row.t_finish = t1
            self.rec.requests.append(row.row())
            if self.writers is not None:
                self.writers.pop(s.rid, None)

    def _rounds(self, step: Step, t0: float, t1: float, hops: Hops | None, accepted: list[int],
                counts: list[int]) -> int:
        """The step's rounds rows, as the simulator's serving target writes them: a round per
        decoding sequence, and a decode for a recompute's first token after a preemption (a
        round without a draft, so tokens add up). Returns the step's rounds."""
        recomputed = [s for s, c in step.prefill if s.prefilled and s.generated > 1]
        if self.writers is None:
            return len(step.verify) + len(recomputed)
        for i, s in enumerate(step.verify):
            w = self._writer(s.rid)
            if hops is None:
                w.decode(t_verify_start=t0, t_verify_end=t1, context_tokens=s.ctx - counts[i])
                continue
            w.tree(draft=hops.draft, tree_tokens=self.tree_tokens, depth=self.depth, bytes_down=hops.bytes_down)
            w.round(t_send=hops.t_send, t_draft_arrive=hops.t_arrive, t_enqueue=hops.t_enqueue,
                    t_draft_start=hops.t_draft_start, t_draft_end=hops.t_draft_end, t_reply_send=hops.t_reply,
                    t_target_arrive=hops.t_back, t_verify_start=t0, t_verify_end=t1,
                    context_tokens=s.ctx - counts[i], new_tokens=hops.new_tokens[i], accepted=accepted[i],
                    emitted=counts[i], bytes_up=hops.bytes_up, draft_kv_bytes=hops.kv_bytes)
        for s in recomputed:
            self._writer(s.rid).decode(t_verify_start=t0, t_verify_end=t1, context_tokens=s.todo)
        return len(step.verify) + len(recomputed)

    def _writer(self, rid: int) -> RoundWriter:
        w = self.writers.get(rid)
        if w is None:
            w = self.writers[rid] = RoundWriter(self.rec, target=self.target, request=rid,
                                                engine=f"target-{self.target}", device=self.device, packed=False,
                                                intervals=False)
        return w
