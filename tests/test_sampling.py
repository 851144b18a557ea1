"""Speculative sampling (temperature > 0) preserves the target's distribution.

Two checks: the acceptance rule on synthetic distributions, against the exact target
probabilities (chi-square); and the whole path with the quick pair, in process and over
TCP, by the randomized probability integral transform: if every emitted token is drawn
from the target's conditional given the tokens before it, its PIT value is uniform on
[0, 1) and independent of the others (Rosenblatt), which a KS test checks. A draft whose
tokens were all accepted (no rejection step) fails the same test, so it has the power to
tell.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from starsim.real.speculation import TreeDraft, draw_without_replacement, normalized, sample_tree_path


def _dist(rng, v, sharp=1.0):
    x = rng.gamma(sharp, size=v)
    return x / x.sum()


def _synthetic_round(rng, p_root, p_next, q_root, q_next, k1=3, k2=2):
    """Draw a depth-2 tree as the drafter does (children without replacement from q),
    verify it against the target's p; returns the emitted tokens."""
    q16_root = q_root.astype(np.float16)
    kids = draw_without_replacement(normalized(q16_root), k1, rng).tolist()
    tokens, parents, probs, nodes = list(kids), [-1] * len(kids), [q16_root], [-1]
    for i, x in enumerate(kids):
        q16 = q_next[x].astype(np.float16)
        grand = draw_without_replacement(normalized(q16), k2, rng).tolist()
        tokens += grand
        parents += [i] * len(grand)
        probs.append(q16)
        nodes.append(i)
    tree = TreeDraft(tokens, parents, [1 if p < 0 else 2 for p in parents], np.stack(probs), nodes)
    p_rows = np.stack([p_root] + [p_next[t] if parents[i] < 0 else p_next[0] for i, t in enumerate(tokens)])
    path, bonus = sample_tree_path(p_rows, tree, rng)
    return [tokens[c] for c in path] + [bonus]


def test_tree_acceptance_gives_the_target_distribution():
    rng = np.random.default_rng(7)
    v = 6
    p_root, q_root = _dist(rng, v), _dist(rng, v, 0.5)
    p_next = np.stack([_dist(rng, v) for _ in range(v)])
    q_next = np.stack([_dist(rng, v, 0.5) for _ in range(v)])
    n = 20_000
    first = np.zeros(v)
    second = np.zeros((v, v))
    accepted = 0
    for _ in range(n):
        out = _synthetic_round(rng, p_root, p_next, q_root, q_next)
        first[out[0]] += 1
        if len(out) > 1:
            second[out[0], out[1]] += 1
            accepted += 1
    assert stats.chisquare(first, n * p_root).pvalue > 1e-3
    x1 = int(second.sum(1).argmax())
    row = second[x1]
    assert stats.chisquare(row, row.sum() * p_next[x1]).pvalue > 1e-3
    assert accepted > n / 2  # the draft helps: most rounds accept a token


def test_a_draft_equal_to_the_target_is_always_accepted():
    rng = np.random.default_rng(0)
    v = 8
    p = _dist(rng, v).astype(np.float16)
    p64 = normalized(p)
    tree = TreeDraft([int(draw_without_replacement(p64, 1, rng)[0])], [-1], [1], p[None], [-1])
    for _ in range(200):
        path, _bonus = sample_tree_path(np.stack([p64, p64]), tree, rng)
        assert path == [0]


def test_draws_without_replacement_are_distinct_and_follow_q():
    rng = np.random.default_rng(1)
    q = np.array([0.5, 0.3, 0.2, 0.0])
    draws = [draw_without_replacement(q, 5, rng).tolist() for _ in range(4000)]
    assert all(len(d) == 3 and len(set(d)) == 3 and 3 not in d for d in draws)  # only the support
    firsts = np.bincount([d[0] for d in draws], minlength=4)
    assert stats.chisquare(firsts[:3], 4000 * q[:3]).pvalue > 1e-3


# ------------------------------------------------------------------ the real path

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _pit_values(target, prompt, out, temperature, rng):
    """Randomized PIT of each emitted token after the first under the target's conditional."""
    import torch

    ids = torch.tensor([prompt + out])
    with torch.inference_mode():
        logits = target(input_ids=ids).logits[0].double()
    p = (logits / temperature).softmax(-1).numpy()
    us = []
    for j in range(1, len(out)):
        row = p[len(prompt) + j - 1]
        x = out[j]
        below = row[:x].sum()
        us.append(below + rng.random() * row[x])
    return us


def _ks_pvalue(target, runs, temperature):
    rng = np.random.default_rng(123)
    us = []
    for prompt, out in runs:
        us += _pit_values(target, prompt, out, temperature, rng)
    return stats.kstest(us, "uniform").pvalue, len(us)


def test_speculative_sampling_matches_the_target_in_distribution(quick_models):
    from conftest import CODE_PROMPTS

    from starsim.real.speculation import Drafter, local_drafts, speculative_generate, target_generate

    tok, target, draft = quick_models
    temperature = 0.8
    drafter = Drafter(draft, 4, 4, 16)
    runs, rounds_all = [], []
    for seed in range(12):
        prompt = tok.encode(CODE_PROMPTS[seed % len(CODE_PROMPTS)]).ids
        out, rounds = speculative_generate(target, local_drafts(drafter, tag=seed, temperature=temperature), prompt,
                                           40, temperature=temperature, seed=seed)
        runs.append((prompt, out))
        rounds_all += rounds
        assert len(out) == 40
    p_spec, n = _ks_pvalue(target, runs, temperature)
    assert n > 400 and p_spec > 1e-3
    assert np.mean([r.accepted for r in rounds_all]) > 0.3  # speculation did something
    # same seed, same tokens
    prompt = tok.encode(CODE_PROMPTS[0]).ids
    again, _ = speculative_generate(target, local_drafts(Drafter(draft, 4, 4, 16), temperature=temperature), prompt,
                                    40, temperature=temperature, seed=0)
    assert again == runs[0][1]
    # the reference sampler passes too, and accepting every draft token fails: the test has power
    ref = [(tok.encode(CODE_PROMPTS[s % 3]).ids, None) for s in range(12)]
    ref = [(p, target_generate(target, p, 40, temperature=temperature, seed=s)) for s, (p, _) in enumerate(ref)]
    assert _ks_pvalue(target, ref, temperature)[0] > 1e-3
    biased = []
    for seed in range(12):
        prompt = tok.encode(CODE_PROMPTS[seed % 3]).ids
        biased.append((prompt, _accept_everything(drafter, target, prompt, 40, temperature, seed)))
    assert _ks_pvalue(target, biased, temperature)[0] < 1e-3


def _accept_everything(drafter, target, prompt, max_new, temperature, seed):
    """A wrong decoder: the sampled draft's first branch is taken whole, never checked."""
    from starsim.real.speculation import target_generate

    out = target_generate(target, prompt, 1, temperature=temperature, seed=seed)
    rng = np.random.default_rng(seed)
    while len(out) < max_new:
        tree, _ = drafter.draft(1000 + seed, prompt + out, temperature, int(rng.integers(2**63)))
        node, path = 0, []
        while node is not None:
            path.append(tree.tokens[node])
            node = next((i for i, p in enumerate(tree.parents) if p == node), None)
        out += path
    return out[:max_new]
