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

from ..rules import emitted
from ..serving import Seq, StepScheduler
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
                done: Callable[[int], None] | None = None) -> Served:
    """Serve ``requests`` (``(step it arrives at, prompt ids, output tokens)``; request ``i``
    is sequence ``i``) until all are done. ``draft_tree(sid, context)``: the tree a decoding
    sequence verifies (None: plain decoding, one token a step); ``done(sid)``: told when a
    sequence ends or is preempted (a drafter frees its cache)."""
    prompts: dict[int, list[int]] = {}
    out = Served(outputs=[[] for _ in requests])
    todo = sorted(range(len(requests)), key=lambda i: requests[i][0])
    n = 0
    while todo or sched.outstanding:
        while todo and requests[todo[0]][0] <= n:
            rid = todo.pop(0)
            prompts[rid] = requests[rid][1]
            sched.add(Seq(rid, len(prompts[rid]), requests[rid][2], 0.0))
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
        results = verifier.step(items)
        k = len(step.prefill)
        counts = []
        for s, r in zip(step.verify, results[k:]):
            e = emitted(r.accepted, len(out.outputs[s.rid]), s.output)
            out.outputs[s.rid] += r.emitted[:e]
            counts.append(e)
            out.rounds += bool(r.tree_tokens)
            out.accepted += r.accepted
        for (s, _), r in zip(step.prefill, results[:k]):
            if r is not None:
                out.outputs[s.rid].append(r)
        for s in sched.finish(step, counts):
            verifier.remove(s.rid)
            if done is not None:
                done(s.rid)
    return out


def _items(verifier: BatchVerifier, step, prompts: dict, outputs: list[list[int]], draft_tree) -> list:
    """A step's items: each prefill chunk (a sequence starting, or recomputing after a
    preemption, gets a fresh cache), then each decoding sequence's tree."""
    items: list[Chunk | Tree] = []
    for s, c in step.prefill:
        if s.computed == 0:
            verifier.remove(s.rid)
            verifier.add(s.rid, seed=s.rid)
        context = prompts[s.rid] + outputs[s.rid]
        items.append(Chunk(s.rid, context[s.computed: s.computed + c], s.computed + c >= s.todo))
    for s in step.verify:
        tree = EMPTY if draft_tree is None else draft_tree(s.rid, prompts[s.rid] + outputs[s.rid])
        items.append(Tree(s.rid, tree))
    return items
