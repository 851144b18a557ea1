"""The batched target (starsim.real.batch_verify): many sequences in one forward per step,
scheduled by the simulator's own step rules (starsim.serving.StepScheduler), each sequence's
greedy output identical to the target decoding it alone, whatever joins or leaves the batch."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402

from starsim.real.batch_verify import BatchVerifier, Chunk, Tree  # noqa: E402
from starsim.real.serving_loop import EMPTY, local_drafts, serve_batch  # noqa: E402
from starsim.real.speculation import Drafter, target_generate  # noqa: E402
from starsim.serving import StepScheduler  # noqa: E402


def serve(target, drafter, requests, *, max_seqs: int, budget: int | None = None, kv: int | None = None,
          temperature: float = 0.0):
    """Run ``requests`` (``(step it arrives at, prompt ids, output tokens)``) through one
    batched target; returns (each request's tokens, each step's batch size, the sequences
    preempted, the prefill chunks)."""
    per_round = (drafter.max_nodes + 1) if drafter is not None else 1
    sched = StepScheduler(max_seqs=max_seqs, budget=budget, kv_capacity=kv, per_round=per_round,
                          reserve_whole=False)
    draft = None if drafter is None else local_drafts(drafter, temperature=temperature,
                                                      seed=lambda sid, ctx: 1000 * sid + len(ctx))
    r = serve_batch(BatchVerifier(target, temperature), sched, requests, draft,
                    drafter.free if drafter is not None else None)
    return r.outputs, r.batch, r.preempted, r.chunks


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


def test_a_batched_target_writes_the_simulators_tables(quick_models):
    """With a Book, the loop writes a steps row per step, a requests row per request and an
    interval per step: the tables the metrics module reads from a simulated serving target."""
    import itertools

    from starsim.metrics import summarize
    from starsim.real.serving_loop import Book
    from starsim.records import Recorder

    tok, target, draft = quick_models
    prompts = _prompts(tok, 6)
    reqs = [(i // 2, p, 16) for i, p in enumerate(prompts)]
    drafter = Drafter(draft, 4, 4, 16)
    rec, ticks = Recorder(), itertools.count()
    book = Book(rec, 0, "cpu", lambda: 0.01 * next(ticks), tree=(16, 4))
    sched = StepScheduler(max_seqs=4, budget=None, kv_capacity=None, per_round=17, reserve_whole=False)
    served = serve_batch(BatchVerifier(target), sched, reqs, local_drafts(drafter, book.now), drafter.free, book)
    meta = {"source": "real", "mode": "star", "t_end": book.now(), "warmup_s": 0.0, "cooldown_s": 0.0,
            "window_s": 0.2, "draft_engines": [], "draft_device": "cpu", "record_rounds": True,
            "targets": [{"index": 0, "name": "t-0", "device": "cpu"}]}
    records = rec.finish(meta)
    steps, requests = records.steps, records.requests
    assert len(steps) == len(served.batch) and steps["running"].max() == 4
    assert steps["emitted"].sum() + len(reqs) == sum(len(o) for o in served.outputs) == 16 * len(reqs)
    assert steps["accepted"].sum() == served.accepted and steps["trees"].sum() == served.rounds
    rounds = records.rounds  # a row per sequence per step, as the simulator's serving target writes
    assert len(rounds) == steps["rounds"].sum() and rounds["accepted"].sum() == served.accepted
    assert (rounds["emitted"].sum() + len(reqs)) == 16 * len(reqs)
    assert (requests["generated_tokens"] == 16).all() and requests["t_finish"].notna().all()
    assert (requests["t_arrival"] <= requests["t_start"]).all()
    assert (requests["t_start"] < requests["t_first_token"]).all()
    assert (requests["t_first_token"] < requests["t_finish"]).all()
    s = summarize(records)
    assert s["requests_completed"] == len(reqs) and s["serving"] is not None
