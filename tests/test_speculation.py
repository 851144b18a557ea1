"""Tree speculative decoding with the offline pair: lossless, tag-indexed, prefix-cached."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402

from starsim.real.speculation import (  # noqa: E402
    RANKS,
    Drafter,
    Verifier,
    local_drafts,
    speculative_generate,
    target_generate,
)


@pytest.mark.parametrize("shape", [(4, 4, 16), (2, 3, 6), (6, 2, 8), (1, 5, 5)])
def test_lossless_greedy(quick_models, shape):
    tok, target, draft = quick_models
    drafter = Drafter(draft, *shape)
    for p in CODE_PROMPTS:
        ids = tok.encode(p).ids
        out, rounds = speculative_generate(target, local_drafts(drafter), ids, 48)
        assert out == target_generate(target, ids, 48), (p, shape)
        assert all(r.tree_tokens <= shape[2] and 0 <= r.accepted <= shape[1] for r in rounds)
        assert sum(len(r.emitted) for r in rounds) + 1 >= len(out)  # every token came from a round or the prefill


def test_target_as_its_own_draft_accepts_the_whole_depth(quick_models):
    tok, target, _ = quick_models
    drafter = Drafter(target, 4, 4, 16)
    ids = tok.encode(CODE_PROMPTS[0]).ids
    out, rounds = speculative_generate(target, local_drafts(drafter), ids, 41)
    assert out == target_generate(target, ids, 41)
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
        assert o[:40] == target_generate(target, p, 40)


EAGLE_SPEC = """
name: tiny-eagle
target: {family: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2,
         num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 1024}
draft: {kind: eagle, num_hidden_layers: 1}
tree: {top_k: 3, depth: 3, tokens: 8}
"""


@pytest.fixture(scope="module")
def eagle_pair(tmp_path_factory):
    """A random-weight target and EAGLE head (timing-only models: acceptance near zero)."""
    import torch

    from starsim.models.specs import build_model, load_spec

    f = tmp_path_factory.mktemp("spec") / "tiny-eagle.yaml"
    f.write_text(EAGLE_SPEC)
    spec = load_spec(str(f))
    return build_model(spec, "target", "cpu", torch.float32).lm, build_model(spec, "draft", "cpu", torch.float32)


def test_eagle_head_drafts_from_the_targets_hidden_states(eagle_pair):
    import torch

    target, head = eagle_pair
    drafter = Drafter(head, 3, 3, 8)
    assert drafter.needs_hidden and drafter.off == 1
    prompt = list(range(5, 25))
    seen = []
    draft_next = local_drafts(drafter, tag=0)

    def spy(new, start, seed=None, hidden=None):
        assert hidden is not None and hidden.shape == (len(new), 64) and hidden.dtype == np.float16
        seen.append((list(new), hidden.copy(), start))
        return draft_next(new, start, seed, hidden)

    out, rounds = speculative_generate(target, spy, prompt, 30, hidden=True)
    assert out == target_generate(target, prompt, 30)  # lossless whatever the head drafts
    assert not seen[0][1][0].any()  # no feature before the prompt's first token
    assert all(len(r.emitted) == r.accepted + 1 for r in rounds) and len(drafter.tags[0].ids) > len(prompt)
    # the prefix cache holds what a fresh encoding of the whole context gives
    context = [t for new, _, _ in seen for t in new]
    feats = [h for _, h, _ in seen]
    with torch.inference_mode():
        cached, _, n_cached = drafter.encode(0, context, feats)
        fresh, _, n_fresh = drafter.encode(1, context, feats)
    assert n_cached < n_fresh == len(context) - 1  # EAGLE: one position per (feature, next token) pair
    assert torch.allclose(cached, fresh, atol=1e-4)
    with pytest.raises(ValueError, match="hidden states"):
        drafter.draft(2, context)


@pytest.mark.parametrize("shape", [(4, 4, 16), (3, 3, 5), (1, 4, 4)])
def test_ranks_the_target_took_match_its_rounds(quick_models, shape):
    """The drafter reads off each round's emitted tokens which of its ranked candidates the
    target took (``acceptance: {kind: ranked}``): a node at depth j was reached (and its
    candidates ranked) in every round that accepted >= j tokens, j below the depth; the last
    round of a request is never seen (no next context). Hits never exceed what was reached."""
    tok, target, draft = quick_models
    drafter = Drafter(draft, *shape)
    accepted = []
    for tag, p in enumerate(CODE_PROMPTS):
        draft_next = local_drafts(drafter, tag=tag)
        _, rounds = speculative_generate(target, draft_next, tok.encode(p).ids, 40)
        accepted += [r.accepted for r in rounds[:-1]]
    got = drafter.ranks
    depth = shape[1]
    want = [sum(a >= j for a in accepted) for j in range(depth)]
    assert got.reached == want[: len(got.reached)] and not any(want[len(got.reached):])  # counts grow as reached
    assert all(sum(h) <= n and len(h) == RANKS for n, h in zip(got.reached, got.hits))
    # the rank-0 child is always kept (its score is its level's best), so every hit there is accepted
    assert got.hits[0][0] <= got.reached[1] if len(got.reached) > 1 else got.hits[0][0] == 0
    # the confidence: every expanded node of an observed round, its candidates' log-probabilities best first
    assert got.expanded[0] == got.reached[0] and all(n == shape[0] * got.reached[0] for n in got.expanded[1:])
    assert all(row == sorted(row, reverse=True) and row[0] <= 0 for row in got.logp)


def test_batched_and_single_drafts_count_the_same_ranks(quick_models):
    tok, target, draft = quick_models
    prompts = [tok.encode(p).ids for p in CODE_PROMPTS[:2]]
    counts = []
    for batched in (False, True):
        drafter = Drafter(draft, 4, 3, 10)
        verifiers = [Verifier(target) for _ in prompts]
        ctxs = [ids + [v.prefill(ids)] for ids, v in zip(prompts, verifiers)]
        for _ in range(6):
            if batched:
                trees = [t for t, _ in drafter.draft_batch([(i, c) for i, c in enumerate(ctxs)])]
            else:
                trees = [drafter.draft(i, c)[0] for i, c in enumerate(ctxs)]
            for i, (v, tree) in enumerate(zip(verifiers, trees)):
                ctxs[i] = ctxs[i] + v.verify(tree).emitted
        counts.append(drafter.ranks.as_dict())
    single, batched = counts
    assert single["reached"][0] == 2 * 5
    for key in ("reached", "hits", "expanded"):
        assert single[key] == batched[key]
    # the batched forward's logits differ from one tag's in the last bits
    assert np.allclose(np.concatenate(single["logp"]), np.concatenate(batched["logp"]), rtol=1e-4, atol=1e-4)
