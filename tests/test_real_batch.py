"""Batched drafting in the real backend: Drafter.draft_batch and the draft server's batches."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS, serve_targets  # noqa: E402

from starsim.real.client import DraftClient  # noqa: E402
from starsim.real.server import DraftServer, ServerLimits, ServerOptions  # noqa: E402
from starsim.real.speculation import Drafter, Verifier, target_generate  # noqa: E402

PROMPTS = [*CODE_PROMPTS, "x = 1\nif x:\n    return"]


def _same(a, b) -> bool:
    (ta, na), (tb, nb) = a, b
    return (ta.tokens, ta.parents, ta.depths, na) == (tb.tokens, tb.parents, tb.depths, nb)


@pytest.mark.parametrize("shape", [(4, 4, 16), (2, 3, 5), (3, 1, 3)])
def test_draft_batch_gives_each_tag_the_tree_draft_gives(quick_models, shape):
    """Tags of different context lengths, several rounds (1 + accepted new tokens each), a
    first round (the whole prompt) and a later one in one batch: the same trees and new-token
    counts as one draft per tag, and each tag's cache is its context again afterwards."""
    tok, target, draft = quick_models
    one, many = Drafter(draft, *shape), Drafter(draft, *shape)
    prompts = [tok.encode(p).ids for p in PROMPTS]
    verifiers = [Verifier(target) for _ in prompts]
    ctx = [p + [v.prefill(p)] for p, v in zip(prompts, verifiers)]
    for step in range(6):
        live = list(range(len(ctx))) if step != 1 else [0, 2]  # a batch of some tags only
        reqs = [(10 + t, ctx[t]) for t in live]
        alone = [one.draft(tag, c) for tag, c in reqs]
        batched = many.draft_batch(reqs)
        assert len(batched) == len(reqs)
        for a, b in zip(alone, batched):
            assert _same(a, b)
        for (tag, c), (tree, _) in zip(reqs, alone):
            assert many.tags[tag].cache.get_seq_length() == len(c)  # cropped back to the context
            ctx[tag - 10] = c + verifiers[tag - 10].verify(tree).emitted
    assert max(len(c) for c in ctx) > min(len(c) for c in ctx)  # right padding was exercised


def test_draft_batch_drafts_sampled_requests_one_by_one(quick_models):
    tok, _, draft = quick_models
    ctx = [tok.encode(p).ids for p in PROMPTS[:3]]
    reqs = [(0, ctx[0]), (1, ctx[1], 0.8, 7, None), (2, ctx[2], 0.0, None, None)]
    got = Drafter(draft, 4, 3, 10).draft_batch(reqs)
    ref = Drafter(draft, 4, 3, 10)
    want = [ref.draft(0, ctx[0]), ref.draft(1, ctx[1], 0.8, 7), ref.draft(2, ctx[2])]
    for a, b in zip(want, got):
        assert _same(a, b)
    assert got[1][0].probs is not None and (got[1][0].probs == want[1][0].probs).all()
    with pytest.raises(ValueError, match="one request per tag"):
        Drafter(draft, 4, 3, 10).draft_batch([(0, ctx[0]), (0, ctx[1])])


def _wait(cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


def test_server_drafts_batches_for_concurrent_targets(quick_models):
    tok, target, draft = quick_models
    prompts = [tok.encode(p).ids for p in PROMPTS]
    calls = []
    drafter = Drafter(draft, 4, 4, 16)
    batch_fn = drafter.draft_batch
    drafter.draft_batch = lambda reqs: calls.append(len(reqs)) or batch_fn(reqs)
    options = ServerOptions(batch_max=4, batch_window_s=0.05)
    with DraftServer(drafter, options=options, limits=ServerLimits(timeout_s=30)) as server:
        results = serve_targets(server, target, prompts, 40)
        assert sorted(results) == [0, 1, 2, 3]
        for i, (out, _) in results.items():
            assert out == target_generate(target, prompts[i], 40)
        rounds = sum(len(r) for _, r in results.values())
        assert calls and max(calls) > 1 and max(calls) <= 4
        assert len(server.intervals) < rounds  # one busy interval per batch, not per round
        assert len(server.intervals) == rounds - sum(calls) + len(calls)
        assert sum(new for *_, new in server.intervals) >= rounds  # every round encodes its new tokens
        _wait(lambda: not server.drafter.tags)  # free requests still reach the engine
        assert not server.rejected


def test_server_batch_max_1_drafts_one_task_at_a_time(quick_models):
    tok, target, draft = quick_models
    prompts = [tok.encode(p).ids for p in PROMPTS[:2]]
    drafter = Drafter(draft, 4, 4, 16)

    def no_batches(reqs):
        raise AssertionError("batch_max=1 must not batch")

    drafter.draft_batch = no_batches
    with DraftServer(drafter, limits=ServerLimits(timeout_s=30)) as server:
        assert (server.options.batch_max, server.options.batch_window_s) == (1, 0.0)
        results = serve_targets(server, target, prompts, 32)
        for i, (out, _) in results.items():
            assert out == target_generate(target, prompts[i], 32)
        assert len(server.intervals) == sum(len(r) for _, r in results.values())  # one per round
        _wait(lambda: not server.drafter.tags)
        assert not server.rejected


def test_a_failed_batch_is_drafted_again_task_by_task(quick_models):
    tok, target, draft = quick_models
    prompts = [tok.encode(p).ids for p in PROMPTS[:3]]
    drafter = Drafter(draft, 4, 4, 16)

    def broken(reqs):
        raise RuntimeError("no batch today")

    drafter.draft_batch = broken
    options = ServerOptions(batch_max=3, batch_window_s=0.05)
    with DraftServer(drafter, options=options, limits=ServerLimits(timeout_s=30)) as server:
        results = serve_targets(server, target, prompts, 24)
        for i, (out, _) in results.items():
            assert out == target_generate(target, prompts[i], 24)
        assert not server.rejected


def test_batches_follow_the_policy_order():
    """Waiting tasks go into a batch in the policy's order (edf: the soonest deadline first)."""
    from starsim.calibrate.stack import _FixedDrafter

    gate = threading.Event()
    batches: list[list[int]] = []

    class Gated(_FixedDrafter):
        def draft(self, *a, **k):
            gate.wait(5)
            return super().draft(*a, **k)

        def draft_batch(self, reqs):
            batches.append([r[0] for r in reqs])
            return [self.draft(*r) for r in reqs]

    with DraftServer(Gated(64, 4, 2), options=ServerOptions(policy="edf", batch_max=2), vocab_size=64) as srv:
        clients = [DraftClient(srv.address) for _ in range(4)]
        threads = []

        def ask(i, due):
            clients[i].draft([1, 2, 3], start=True, deadline_in_s=due)

        threads.append(threading.Thread(target=ask, args=(0, None)))  # alone: blocks the engine
        threads[0].start()
        time.sleep(0.3)
        for i, due in ((1, 5.0), (2, 0.5), (3, 1.0)):
            threads.append(threading.Thread(target=ask, args=(i, due)))
            threads[-1].start()
        time.sleep(0.3)
        gate.set()
        for t in threads:
            t.join(5)
        assert batches == [[2, 3]]  # then 1 alone
        assert [tag for tag, *_ in srv.intervals] == [0, 2, 1]
        for c in clients:
            c.close()


def test_validate_rescales_the_batched_round_like_the_others():
    """`starsim validate --speed` scales every profile timing by the machine's speed now,
    the batched round (draft.batch.time) included."""
    from conftest import REPO

    from starsim import load_scenario
    from starsim.calibrate.compute import SPOT_OPS
    from starsim.validate import _profile_fields, scale_overrides

    path = REPO / "scenarios" / "real_cpu_batch.yaml"
    sc = load_scenario(path)
    assert sc.draft.batch.max == 4 and "draft.batch.time" in dict(_profile_fields(sc))
    assert "draft_batched" in SPOT_OPS
    scaled = load_scenario(path, scale_overrides(sc, {"draft.batch.time": 2.0}))
    assert scaled.draft.batch.time.mean(4, 100) == pytest.approx(2 * sc.draft.batch.time.mean(4, 100))
