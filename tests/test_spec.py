"""Tree speculative decoding with the offline pair: lossless, tag-indexed, prefix-cached."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402

from starsim.real.spec import Drafter, Verifier, greedy_generate, local_drafts, speculative_generate  # noqa: E402


@pytest.mark.parametrize("shape", [(4, 4, 16), (2, 3, 6), (6, 2, 8), (1, 5, 5)])
def test_lossless_greedy(quick_models, shape):
    tok, target, draft = quick_models
    drafter = Drafter(draft, *shape)
    for p in CODE_PROMPTS:
        ids = tok.encode(p).ids
        out, rounds = speculative_generate(target, local_drafts(drafter), ids, 48)
        assert out == greedy_generate(target, ids, 48), (p, shape)
        assert all(r.tree_tokens <= shape[2] and 0 <= r.accepted <= shape[1] for r in rounds)
        assert sum(len(r.emitted) for r in rounds) + 1 >= len(out)  # every token came from a round or the prefill


def test_target_as_its_own_draft_accepts_the_whole_depth(quick_models):
    tok, target, _ = quick_models
    drafter = Drafter(target, 4, 4, 16)
    ids = tok.encode(CODE_PROMPTS[0]).ids
    out, rounds = speculative_generate(target, local_drafts(drafter), ids, 41)
    assert out == greedy_generate(target, ids, 41)
    assert [r.accepted for r in rounds[:-1]] == [4] * (len(rounds) - 1)  # the top-1 chain is always kept


def test_tree_shape_and_prefix_cache(quick_models):
    tok, target, draft = quick_models
    drafter = Drafter(draft, 3, 4, 10)
    ids = tok.encode(CODE_PROMPTS[1]).ids
    v = Verifier(target)
    ctx = ids + [v.prefill(ids)]
    tree, new = drafter.draft(7, ctx)
    assert new == len(ctx)  # the first round encodes the whole context
    assert len(tree.tokens) == 10 and tree.depths == sorted(tree.depths)
    for i, p in enumerate(tree.parents):
        assert p < i and (p == -1) == (tree.depths[i] == 1) and (p == -1 or tree.depths[p] == tree.depths[i] - 1)
    r = v.verify(tree)
    ctx += r.emitted
    _, new = drafter.draft(7, ctx)
    assert new == len(r.emitted)  # later rounds encode only what the last round emitted
    drafter.free(7)
    assert 7 not in drafter.tags


def test_interleaved_tags_keep_their_own_state(quick_models):
    tok, target, draft = quick_models
    drafter = Drafter(draft, 4, 4, 16)
    prompts = [tok.encode(p).ids for p in CODE_PROMPTS[:2]]
    verifiers = [Verifier(target) for _ in prompts]
    outs = [[v.prefill(p)] for v, p in zip(verifiers, prompts)]
    while min(len(o) for o in outs) < 40:  # one round for each tag in turn, as the engine does
        for tag, (v, p, o) in enumerate(zip(verifiers, prompts, outs)):
            tree, _ = drafter.draft(tag, p + o)
            o += v.verify(tree).emitted
    for p, o in zip(prompts, outs):
        assert o[:40] == greedy_generate(target, p, 40)
