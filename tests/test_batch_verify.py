"""The batched target (starsim.real.batch_verify): many sequences in one forward per step,
scheduled by the simulator's own step rules (starsim.serving.StepScheduler), each sequence's
greedy output identical to the target decoding it alone, whatever joins or leaves the batch."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402

from starsim.real.batch_verify import BatchVerifier, Chunk, Tree  # noqa: E402
from starsim.real.speculation import Drafter, TreeDraft, target_generate  # noqa: E402
from starsim.rules import emitted  # noqa: E402
from starsim.serving import Seq, StepScheduler  # noqa: E402

EMPTY = TreeDraft([], [], [])


def serve(target, drafter, requests, *, max_seqs: int, budget: int | None = None, kv: int | None = None,
          temperature: float = 0.0):
    """Run ``requests`` (``(step it arrives at, prompt ids, output tokens)``) through one
    batched target; returns (each request's tokens, the batch size of each step, the
    sequences preempted, the prefill chunks)."""
    per_round = (drafter.max_nodes + 1) if drafter is not None else 1
    sched = StepScheduler(max_seqs=max_seqs, budget=budget, kv_capacity=kv, per_round=per_round,
                          reserve_whole=False)
    bv = BatchVerifier(target, temperature)
    prompts, outs, sizes = {}, {}, []
    preempted = chunks = 0
    todo = sorted(enumerate(requests), key=lambda x: x[1][0])
    n = 0
    while todo or sched.outstanding:
        while todo and todo[0][1][0] <= n:
            rid, (_, prompt, output) = todo.pop(0)
            prompts[rid], outs[rid] = prompt, []
            sched.add(Seq(rid, len(prompt), output, 0.0))
        n += 1
        step = sched.plan()
        for s in step.preempted:
            bv.remove(s.rid)
        preempted += len(step.preempted)
        chunks += len(step.prefill)
        items = []
        for s, c in step.prefill:
            if s.computed == 0:
                bv.remove(s.rid)
                bv.add(s.rid, seed=s.rid)
            context = prompts[s.rid] + outs[s.rid]
            items.append(Chunk(s.rid, context[s.computed: s.computed + c], s.computed + c >= s.todo))
        for s in step.verify:
            tree = EMPTY if drafter is None else drafter.draft(s.rid, prompts[s.rid] + outs[s.rid], temperature,
                                                               seed=1000 * s.rid + len(outs[s.rid]))[0]
            items.append(Tree(s.rid, tree))
        if not items:
            continue
        sizes.append(len(items))
        results = bv.step(items)
        counts = []
        for it, r, s in zip(items[len(step.prefill):], results[len(step.prefill):], step.verify):
            e = emitted(r.accepted, len(outs[it.sid]), s.output)
            outs[it.sid] += r.emitted[:e]
            counts.append(e)
        for (s, _), r in zip(step.prefill, results):
            if r is not None:
                outs[s.rid].append(r)
        for s in sched.finish(step, counts):
            bv.remove(s.rid)
            if drafter is not None:
                drafter.free(s.rid)
    return [outs[i] for i in range(len(requests))], sizes, preempted, chunks


def _prompts(tok, k: int) -> list[list[int]]:
    return [tok.encode(CODE_PROMPTS[i % 3] * (1 + i % 2)).ids for i in range(k)]


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_batched_speculation_is_lossless_as_sequences_join_and_leave(quick_models, batch):
    tok, target, draft = quick_models
    prompts = _prompts(tok, batch + 2)
    outputs = [24 + 7 * (i % 3) for i in range(len(prompts))]
    # half arrive at once, the rest one a step later each: they join a running batch, and
    # requests of different lengths leave it at different steps
    reqs = [(0 if i < len(prompts) // 2 else i, p, o) for i, (p, o) in enumerate(zip(prompts, outputs))]
    got, sizes, _, _ = serve(target, Drafter(draft, 4, 4, 16), reqs, max_seqs=batch)
    for (_, p, o), g in zip(reqs, got):
        assert g == target_generate(target, p, o)
    assert max(sizes) == min(batch, len(reqs))


def test_chunked_prefill_and_plain_decoding_are_lossless(quick_models):
    """A token budget smaller than the prompts: prefills go in chunks beside decoding sequences."""
    tok, target, _ = quick_models
    prompts = _prompts(tok, 5)
    reqs = [(i, p, 12) for i, p in enumerate(prompts)]
    got, _, _, chunks = serve(target, None, reqs, max_seqs=4, budget=7)
    for (_, p, o), g in zip(reqs, got):
        assert g == target_generate(target, p, o)
    assert chunks > len(reqs)  # some prefill took several steps


def test_a_preempted_sequence_recomputes_and_stays_lossless(quick_models):
    """A KV capacity that cannot hold every sequence: the newest is preempted, recomputes its
    context as a prefill later, and its output is unchanged."""
    tok, target, draft = quick_models
    prompts = _prompts(tok, 4)
    reqs = [(0, p, 20) for p in prompts]
    kv = sum(len(p) for p in prompts[:2]) + 2 * 40 + 30
    got, _, preempted, _ = serve(target, Drafter(draft, 4, 4, 16), reqs, max_seqs=4, kv=kv)
    for (_, p, o), g in zip(reqs, got):
        assert g == target_generate(target, p, o)
    assert preempted > 0


def test_bad_steps_are_refused(quick_models):
    _, target, _ = quick_models
    bv = BatchVerifier(target)
    bv.add(0)
    with pytest.raises(ValueError, match="no root"):
        bv.step([Tree(0, EMPTY)])
    with pytest.raises(ValueError, match="empty prefill chunk"):
        bv.step([Chunk(0, [])])
    with pytest.raises(ValueError, match="at most one item"):
        bv.step([Chunk(0, [1]), Chunk(0, [2])])
    with pytest.raises(ValueError, match="already running"):
        bv.add(0)


def test_batched_sampling_keeps_the_target_distribution(quick_models):
    """At temperature > 0, tokens sampled at batch 4 follow the target's own distribution (the
    probability-integral-transform test of test_sampling.py)."""
    from test_sampling import _ks_pvalue

    tok, target, draft = quick_models
    prompts = [tok.encode(CODE_PROMPTS[i % 3]).ids for i in range(12)]
    reqs = [(i // 4, p, 40) for i, p in enumerate(prompts)]
    got, sizes, _, _ = serve(target, Drafter(draft, 4, 4, 16), reqs, max_seqs=4, temperature=0.8)
    assert all(len(g) == 40 for g in got) and max(sizes) == 4
    p_value, n = _ks_pvalue(target, list(zip(prompts, got)), 0.8)
    assert n > 400 and p_value > 1e-3
