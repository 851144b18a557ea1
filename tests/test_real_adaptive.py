"""Adaptive speculation in the real backend: shallower trees on request, depth 0 = a plain
step, every output still the target's own greedy one."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402

from starsim.real import protocol as P  # noqa: E402
from starsim.real.client import DraftClient  # noqa: E402
from starsim.real.server import DraftServer, ServerOptions  # noqa: E402
from starsim.real.speculation import Drafter, Verifier, target_generate  # noqa: E402
from starsim.real.worker import TargetWorker  # noqa: E402
from starsim.scenario import Tree  # noqa: E402


def test_a_shallower_tree_on_request(quick_models):
    tok, target, draft = quick_models
    prompt = tok.encode(CODE_PROMPTS[0]).ids
    ctx = prompt + [Verifier(target).prefill(prompt)]
    d = Drafter(draft, 4, 4, 16)
    full, _ = d.draft(0, ctx)
    assert max(full.depths) == 4 and len(full.tokens) == 16
    assert d.shape(None) == d.shape(4) == (4, 16)
    for depth in (1, 2, 3):
        tree, _ = d.draft(0, ctx, depth=depth)
        assert max(tree.depths) == depth
        assert len(tree.tokens) == Tree(top_k=4, depth=4, tokens=16).tokens_at(depth)  # as the simulator costs it
    # a batch with a shallower request drafts that one alone and the rest together, as draft would
    other = Drafter(draft, 4, 4, 16)
    got = other.draft_batch([(0, ctx), (1, ctx, 0.0, None, None, 2), (2, ctx)])
    assert [max(t.depths) for t, _ in got] == [4, 2, 4]
    assert got[0][0].tokens == full.tokens and got[1][0].tokens == d.draft(0, ctx, depth=2)[0].tokens
    with pytest.raises(ValueError, match="at least 1 deep"):
        d.draft(0, ctx, depth=0)


def test_the_server_takes_a_depth_and_refuses_a_bad_one(quick_models):
    tok, target, draft = quick_models
    prompt = tok.encode(CODE_PROMPTS[1]).ids
    ctx = prompt + [Verifier(target).prefill(prompt)]
    with DraftServer(Drafter(draft, 4, 4, 16)) as server:
        c = DraftClient(server.address)
        tree, _ = c.draft(ctx, True, depth=2)
        assert max(tree.depths) == 2
        c.close()
        bad = DraftClient(server.address)
        with pytest.raises(P.ProtocolError):
            bad.draft(ctx, True, depth=9)
        bad.sock.close()
        deadline = time.monotonic() + 5
        while not server.rejected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("depth must be an integer in 1..4" in line for line in server.rejected)


class _Script:
    """A controller that plays a fixed list of depths and keeps what it is told."""

    max_depth = 4

    def __init__(self, depths):
        self.depths, self.seen, self.i = depths, [], 0

    def depth(self, context):
        d = self.depths[self.i % len(self.depths)]
        self.i += 1
        return d

    def observe(self, depth, accepted, round_s, context):
        self.seen.append((depth, accepted))


def test_adaptive_rounds_are_lossless_and_recorded(quick_models):
    """Depths 0, 2, 4, 0, 0, 1 in turn: depth-0 rounds are plain steps (no draft, recorded
    with draft -1), the draft catches up with their tokens on the next request, and the
    output is the target's own greedy output."""
    tok, target, draft = quick_models
    prompt = tok.encode(CODE_PROMPTS[2]).ids
    script = _Script([0, 2, 4, 0, 0, 1])
    with DraftServer(Drafter(draft, 4, 4, 16)) as server:
        w = TargetWorker(0, target, DraftClient(server.address), time.monotonic(), controller=script)
        out = w.run_request(0, prompt, 40)
        w.close()
    assert out == target_generate(target, prompt, 40)
    rows = w.rounds
    depth_col, draft_col = 16, 3  # records.ROUND_COLUMNS: depth, draft
    zero = [r for r in rows if r[draft_col] == -1]
    assert zero and all(r[depth_col] == 0 and r[18] == 1 for r in zero)  # one token each
    spec = [r for r in rows if r[draft_col] >= 0]
    assert {r[depth_col] for r in spec} <= {1, 2, 4} and len({r[depth_col] for r in spec}) == 3
    assert [d for d, _ in script.seen] == [script.depths[i % 6] for i in range(len(rows))]


@pytest.mark.parametrize("decode_s,expect_zero", [(1.0, False), (1e-6, True)])
def test_execute_with_adaptive_speculation(tmp_path, quick_pair, quick_models, decode_s, expect_zero):
    """execute with draft.adaptive.policy goodput: each target's controller costs rounds with
    the scenario's models, so a (modelled) 1 s decode step keeps speculation on and a free one
    turns it off after the first rounds; either way every output is the target's own."""
    import copy

    import yaml
    from conftest import CONST_STAR

    from starsim import load_scenario
    from starsim.real.execute import execute

    _, target, _ = quick_models
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0].update(count=2, decode_time=decode_s)
    sc["draft"]["adaptive"] = {"policy": "goodput", "probe_every": 4}
    sc.update(max_requests=4, duration_s=60.0, warmup_s=0.0, real={"pair": str(quick_pair)},
              workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 40})
    f = tmp_path / "adaptive.yaml"
    f.write_text(yaml.safe_dump(sc))
    res = execute(load_scenario(f))
    r, s = res.rounds, res.summary
    assert not s["provenance"]["failures"] and s["requests_completed"] == 4
    zero = (r["depth"] == 0) & (r["draft"] == -1)
    assert zero.any() == expect_zero
    if expect_zero:
        assert s["rounds_without_speculation"] > 0.5 and (r.loc[~zero, "draft"] >= 0).all()
    for o in res.outputs:
        assert o["output"] == target_generate(target, o["prompt"], 40, eos=target.config.eos_token_id)


def test_draft_memory_for_real_drops_the_least_recently_used_cache(quick_models):
    """memory_bytes with room for about one context: two targets in turn evict each other's
    draft cache, each evicted target's next request encodes its whole context again, and the
    outputs are still the target's own (the server keeps the tokens, only the cache goes)."""
    tok, target, draft = quick_models
    a, b = (tok.encode(p).ids for p in CODE_PROMPTS[:2])
    drafter = Drafter(draft, 4, 4, 16)
    # less than any cache: only the newest stays
    with DraftServer(drafter, options=ServerOptions(memory_bytes=1)) as server:
        ca, cb = DraftClient(server.address), DraftClient(server.address)
        va, vb = Verifier(target), Verifier(target)
        ctx = {0: a + [va.prefill(a)], 1: b + [vb.prefill(b)]}
        news = {0: [], 1: []}
        sent = {0: list(ctx[0]), 1: list(ctx[1])}
        for rnd in range(4):
            for tag, c, v in ((0, ca, va), (1, cb, vb)):
                tree, hdr = c.draft(sent[tag], start=rnd == 0)
                news[tag].append(hdr["new_tokens"])
                emitted = v.verify(tree).emitted
                ctx[tag] += emitted
                sent[tag] = emitted
        ca.close()
        cb.close()
        assert len(server.evictions) >= 6 and {t for t, _ in server.evictions} == {0, 1}
        # each later round re-encodes the whole context (the cache was dropped meanwhile)
        assert all(n >= len(a) for n in news[0][1:]) and all(n >= len(b) for n in news[1][1:])
    with DraftServer(Drafter(draft, 4, 4, 16)) as roomy:  # no limit: only the new tokens
        c = DraftClient(roomy.address)
        v = Verifier(target)
        tree, hdr = c.draft(a + [v.prefill(a)], start=True)
        tree2, hdr2 = c.draft(v.verify(tree).emitted)
        assert hdr2["new_tokens"] < len(a) and not roomy.evictions
        c.close()
    assert ctx[0][len(a):] == target_generate(target, a, len(ctx[0]) - len(a))
