"""A serving target's engine loop, for real: the simulator's step rules
(:class:`starsim.serving.StepScheduler`: FCFS admission, ``max_seqs``, the token budget, KV
capacity and preemption by recompute) deciding each step, a :class:`BatchVerifier` running it
in one forward.

:func:`serve_batch` runs requests that arrive at given steps, in this process, drafting each
decoding sequence's tree with ``draft_tree(sid, context)`` (a local drafter here; the draft
server's client over TCP in a star). It is what a real serving target does between its
network hops, and what the lossless tests and ``analysis/batch_target_bench.py`` drive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..records import Recorder, RequestRow, interval_row
from ..rules import emitted
from ..serving import Seq, StepScheduler, step_row
from .batch_verify import BatchVerifier, Chunk, Tree
from .speculation import TreeDraft

EMPTY = TreeDraft([], [], [])


@dataclass
class Served:
    """What :func:`serve_batch` gives back: each request's tokens (in request order), each
    step's batch (items in its forward), and over the run the sequences preempted, the prefill
    chunks, the speculative rounds and the draft tokens they accepted."""

    outputs: list[list[int]]
    batch: list[int] = field(default_factory=list)
    preempted: int = 0
    chunks: int = 0
    rounds: int = 0
    accepted: int = 0


def serve_batch(verifier: BatchVerifier, sched: StepScheduler, requests: list[tuple[int, list[int], int]],
                draft_tree: Callable[[int, list[int]], TreeDraft] | None = None,
                done: Callable[[int], None] | None = None, book: Book | None = None) -> Served:
    """Serve ``requests`` (``(step it arrives at, prompt ids, output tokens)``; request ``i``
    is sequence ``i``) until all are done. ``draft_tree(sid, context)``: the tree a decoding
    sequence verifies (None: plain decoding, one token a step); ``done(sid)``: told when a
    sequence ends or is preempted (a drafter frees its cache); ``book``: where the run's rows
    go (the simulator's steps, requests and intervals tables)."""
    prompts: dict[int, list[int]] = {}
    out = Served(outputs=[[] for _ in requests])
    todo = sorted(range(len(requests)), key=lambda i: requests[i][0])
    n = 0
    while todo or sched.outstanding:
        while todo and requests[todo[0]][0] <= n:
            rid = todo.pop(0)
            prompts[rid] = requests[rid][1]
            sched.add(Seq(rid, len(prompts[rid]), requests[rid][2], 0.0))
            if book is not None:
                book.arrived(rid, len(prompts[rid]), requests[rid][2])
        n += 1
        step = sched.plan()
        for s in step.preempted:
            verifier.remove(s.rid)
            if done is not None:
                done(s.rid)
        items = _items(verifier, step, prompts, out.outputs, draft_tree)
        if not items:
            continue
        out.batch.append(len(items))
        out.preempted += len(step.preempted)
        out.chunks += len(step.prefill)
        t0 = book.now() if book is not None else 0.0
        results = verifier.step(items)
        t1 = book.now() if book is not None else 0.0
        k = len(step.prefill)
        counts, trees, accepted = [], 0, 0
        for s, r in zip(step.verify, results[k:]):
            e = emitted(r.accepted, len(out.outputs[s.rid]), s.output)
            out.outputs[s.rid] += r.emitted[:e]
            counts.append(e)
            trees += bool(r.tree_tokens)
            accepted += r.accepted
        out.rounds += trees
        out.accepted += accepted
        for (s, _), r in zip(step.prefill, results[:k]):
            if r is not None:
                out.outputs[s.rid].append(r)
        finished = sched.finish(step, counts)
        if book is not None:
            book.stepped(step, t0, t1, sched.capacity, trees, accepted, counts, finished)
        for s in finished:
            verifier.remove(s.rid)
            if done is not None:
                done(s.rid)
    return out


class Book:
    """A serving target's rows, as the simulator writes them for a serving target: a steps
    row per step (:func:`starsim.serving.step_row`), a requests row per request (arrival,
    admission, first token, finish) and one interval per step (``prefill``, ``verify`` or
    ``decode``, as the simulator names it); times from ``now`` (seconds)."""

    def __init__(self, rec: Recorder, target: int, device: str, now: Callable[[], float]):
        self.rec, self.target, self.device, self.now = rec, target, device, now
        if rec.steps is None:
            rec.steps = []
        self.rows: dict[int, RequestRow] = {}
        self.steps = 0

    def arrived(self, rid: int, prompt: int, output: int) -> None:
        self.rows[rid] = RequestRow(request=rid, target=self.target, prompt_tokens=prompt, output_tokens=output,
                                    t_arrival=self.now())

    def stepped(self, step, t0: float, t1: float, capacity: float, trees: int, accepted: int, counts: list[int],
                finished: list[Seq]) -> None:
        """Step ``step`` ran from ``t0`` to ``t1``: its rows (``finished``: the requests it ended)."""
        for s, _ in step.prefill:
            row = self.rows[s.rid]
            if row.t_start != row.t_start:  # NaN: admitted by this step
                row.t_start = t0
            if s.prefilled and row.t_first_token != row.t_first_token:
                row.t_first_token = t1
        for s in (*step.verify, *(s for s, _ in step.prefill)):
            self.rows[s.rid].generated_tokens = s.generated
        self.rec.steps.append(step_row(self.target, self.steps, step, t0, t1, capacity, trees=trees,
                                       accepted=accepted, emitted=sum(counts), rounds=len(step.verify)))
        self.steps += 1
        kind = "verify" if trees else ("decode" if step.verify else "prefill")
        self.rec.intervals.append(interval_row(engine=f"target-{self.target}", device=self.device, kind=kind,
                                               target=self.target, start=t0, end=t1))
        for s in finished:
            row = self.rows.pop(s.rid)
            row.t_finish = t1
            self.rec.requests.append(row.row())


def _items(verifier: BatchVerifier, step, prompts: dict, outputs: list[list[int]], draft_tree) -> list:
    """A step's items: each prefill chunk (a sequence starting, or recomputing after a
    preemption, which removed its cache, gets a fresh one), then each decoding sequence's tree."""
    items: list[Chunk | Tree] = []
    for s, c in step.prefill:
        if s.computed == 0:
            verifier.add(s.rid, seed=s.rid)
        context = prompts[s.rid] + outputs[s.rid]
        items.append(Chunk(s.rid, context[s.computed: s.computed + c], s.computed + c >= s.todo))
    for s in step.verify:
        tree = EMPTY if draft_tree is None else draft_tree(s.rid, prompts[s.rid] + outputs[s.rid])
        items.append(Tree(s.rid, tree))
    return items
