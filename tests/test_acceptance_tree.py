"""Tree-aware acceptance (``kind: ranked``): a tree's marginal curve against brute-force
enumeration of what the target can do on small trees, the marginal kinds as its special case,
and the one-line notices where a curve does not fit the tree."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from starsim.acceptance import Conditional, Marginal, Ranked, Shape, tree_marginal
from starsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent


def _at(table, d, r):
    """Depth d (1-based), rank r (0-based); past the table: its last row; past a row: 0."""
    row = table[min(d, len(table)) - 1]
    return row[r] if r < len(row) else 0.0


def _eagle2_tree(q, shape: Shape, conf=None) -> list[tuple[int, ...]]:
    """The kept nodes as rank paths, grown the long way: every path's score is the product of
    the draft's confidence (``q`` where none) along it; level 1 is the root's top_k; each next
    level the best top_k children of the level before (the first in order on ties, as a stable
    sort); then the best ``tokens`` of all (shallower first on ties)."""
    k, depth, tokens = shape
    c = conf or q
    score = {(r,): _at(c, 1, r) for r in range(k)}
    level = list(score)
    for d in range(2, depth + 1):
        kids = [(*n, r) for n in level for r in range(k)]
        for kid in kids:
            score[kid] = score[kid[:-1]] * _at(c, d, kid[-1])
        level = sorted(kids, key=lambda n: -score[n])[:k]
        for kid in set(kids) - set(level):
            del score[kid]
    return sorted(score, key=lambda n: (-score[n], len(n)))[:tokens]


def _enumerate(q, shape: Shape, nodes: list[tuple[int, ...]]) -> list[float]:
    """P(accepted >= j) by enumerating the target's choice at every depth (a rank, or none of
    the draft's candidates) and walking the kept tree."""
    k, depth, _ = shape
    kept = set(nodes)
    choices = list(range(k)) + [None]
    marg = [0.0] * depth
    for outcome in itertools.product(choices, repeat=depth):
        prob, path, accepted = 1.0, (), 0
        for d, r in enumerate(outcome, start=1):
            row = q[min(d, len(q)) - 1]
            prob *= (1.0 - sum(row[:k])) if r is None else (row[r] if r < len(row) else 0.0)
        for r in outcome:  # the walk: stop at a choice that is not a kept child
            if r is None or (*path, r) not in kept:
                break
            path = (*path, r)
            accepted += 1
        for j in range(accepted):
            marg[j] += prob
    return marg


@st.composite
def _table_and_tree(draw):
    k = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 3))
    most = sum(k**i for i in range(1, depth + 1))
    tokens = draw(st.integers(depth, most))
    rows = draw(st.integers(1, 3))
    q = []
    for _ in range(rows):
        width = draw(st.integers(1, 4))
        w = draw(st.lists(st.floats(0, 1), min_size=width + 1, max_size=width + 1))
        total = sum(w) or 1.0
        q.append([x / total for x in w[:width]])  # the last share is "none of the candidates"
    conf = None
    if draw(st.booleans()):  # the draft's own confidence, which need not follow q
        conf = [sorted(draw(st.lists(st.floats(0.01, 1), min_size=1, max_size=4)), reverse=True)
                for _ in range(draw(st.integers(1, 3)))]
    return q, Shape(k, depth, tokens), conf


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_table_and_tree())
def test_tree_marginal_equals_brute_force_enumeration(case):
    q, shape, conf = case
    got = tree_marginal(tuple(map(tuple, q)), shape, None if conf is None else tuple(map(tuple, conf)))
    want = _enumerate(q, shape, _eagle2_tree(q, shape, conf))
    assert got == pytest.approx(want, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(got, got[1:]))  # a marginal curve: non-increasing


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=6), st.integers(1, 5), st.integers(1, 6))
def test_the_best_rank_alone_is_the_conditional_curve(c, k, depth):
    """Where only the draft's best candidate is ever accepted, the tree's shape does not matter:
    ``kind: ranked`` with one column is ``kind: conditional`` on any tree."""
    ranked = Ranked(kind="ranked", ranked=[[x] for x in c])
    shape = Shape(k, depth, depth)
    want = Conditional(kind="conditional", curve=c + [c[-1]] * max(0, depth - len(c))).marginal(shape)
    assert ranked.marginal(shape) == pytest.approx(want, abs=1e-12)


def test_a_chain_is_the_marginal_curve_it_implies():
    m = Marginal(curve=[0.9, 0.63, 0.378])
    chain = Ranked(kind="ranked", ranked=[[0.9], [0.7], [0.6]])
    assert chain.marginal(Shape(1, 3, 3)) == pytest.approx(m.marginal(Shape(1, 3, 3)))


def test_bigger_trees_accept_more_and_smaller_less():
    q = Ranked(kind="ranked", ranked=[[0.55, 0.2, 0.1, 0.05], [0.6, 0.2, 0.08, 0.04], [0.62, 0.2, 0.08, 0.03]])
    mean = lambda k, d, t: sum(q.marginal(Shape(k, d, t)))  # noqa: E731
    assert mean(4, 4, 20) < mean(10, 5, 59)  # the example: the smaller tree accepts less
    assert mean(4, 4, 8) < mean(4, 4, 12) < mean(4, 4, 16)
    assert mean(4, 2, 8) < mean(4, 3, 8 + 4)
    assert mean(1, 4, 4) < mean(2, 4, 8)


def test_a_row_summing_past_one_is_refused(tmp_path):
    p = tmp_path / "s.yaml"
    sc = yaml.safe_load((ROOT / "scenarios/const_star.yaml").read_text())
    sc["acceptance"] = {"kind": "ranked", "ranked": [[0.7, 0.4]]}
    p.write_text(yaml.safe_dump(sc))
    with pytest.raises(Exception, match=r"acceptance.ranked: .*row 0 \(depth 1\) sums to 1.1 > 1"):
        load_scenario(p)


def test_curve_and_tree_mismatches_are_one_line_each():
    shape = Shape(4, 4, 16)
    longer = Marginal(curve=[0.9, 0.7, 0.5, 0.3, 0.2]).notices(shape)
    assert len(longer) == 1 and "5 entries and the tree is 4 deep" in longer[0] and "depth 5 are not used" in longer[0]
    shorter = Marginal(curve=[0.9, 0.7]).notices(shape)
    assert len(shorter) == 1 and "depths 3-4 get no acceptance" in shorter[0]
    assert Marginal(curve=[0.9, 0.7, 0.5, 0.3]).notices(shape) == []
    r = Ranked(kind="ranked", ranked=[[0.6, 0.2], [0.5]]).notices(shape)
    assert any("depths 3-4 use the last row (extrapolated)" in n for n in r)
    assert any("top_k is 4 but depth(s) 1, 2 give fewer ranks" in n for n in r)


def _write(tmp_path, name, scenario: dict) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(scenario))
    return p


def test_a_measured_file_follows_the_tree_with_its_ranked_table_and_says_so_without(tmp_path):
    base = {"kind": "acceptance_curve", "marginal": [0.9, 0.6, 0.4, 0.2],
            "measured_by": {"tree": {"top_k": 4, "depth": 4, "tokens": 16}}}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(base))
    ranked = [[0.6, 0.2, 0.06, 0.04], [0.5, 0.15, 0.05], [0.5, 0.15], [0.5]]
    (tmp_path / "ranked.yaml").write_text(yaml.safe_dump({**base, "ranked": ranked}))
    sc = yaml.safe_load((ROOT / "scenarios/const_star.yaml").read_text())
    sc["draft"]["tree"] = {"top_k": 10, "depth": 5, "tokens": 59}
    from starsim.notices import notices

    sc["acceptance"] = {"kind": "measured", "path": "plain.yaml"}
    plain = load_scenario(_write(tmp_path, "a.yaml", sc))
    lines = notices(plain)
    assert any("plain.yaml was measured on tree (top_k 4, depth 4, 16 tokens)" in n
               and "(top_k 10, depth 5, 59 tokens)" in n for n in lines)
    sc["acceptance"] = {"kind": "measured", "path": "ranked.yaml"}
    tree_aware = load_scenario(_write(tmp_path, "b.yaml", sc))
    model = Ranked(kind="ranked", ranked=ranked)
    # anchored: each depth scaled by the measured curve over the model's on the measured tree
    ratio = [m / x for m, x in zip(base["marginal"], model.marginal(Shape(4, 4, 16)))]
    want, prev = [], 1.0
    for j, a in enumerate(model.marginal(Shape(10, 5, 59))):
        prev = min(prev, 1.0, a * ratio[min(j, 3)])
        want.append(prev)
    assert tree_aware.acceptance.marginal(tree_aware.draft.tree.shape()) == pytest.approx(want)
    assert any("anchored on the measured tree" in n for n in notices(tree_aware))
    # on the tree it was measured on, the file's own curve
    assert tree_aware.acceptance.marginal(Shape(4, 4, 16)) == base["marginal"]


def test_the_simulator_draws_what_the_tree_implies(tmp_path):
    from starsim.sim import simulate

    sc = yaml.safe_load((ROOT / "scenarios/const_star.yaml").read_text())
    sc["acceptance"] = {"kind": "ranked", "ranked": [[0.5, 0.2, 0.1], [0.55, 0.2, 0.1], [0.6, 0.2]]}
    sc["draft"]["tree"] = {"top_k": 3, "depth": 3, "tokens": 7}
    sc["duration_s"] = 60
    s = load_scenario(_write(tmp_path, "r.yaml", sc))
    want = 1 + sum(s.acceptance.marginal(s.draft.tree.shape()))
    got = simulate(s).summary["mean_accepted_tokens"]
    assert got == pytest.approx(want, rel=0.03)
    assert math.isfinite(got)


def test_check_prints_each_notice_once(tmp_path, capsys):
    from starsim.cli import main

    sc = yaml.safe_load((ROOT / "scenarios/starsd_ref_n4.yaml").read_text())
    sc["draft"]["tree"] = {"top_k": 10, "depth": 4, "tokens": 40}  # the curve has 5 entries
    sc["targets"][0]["count"] = 6
    sc["devices"]["gpu"]["count"] = 2
    assert main(["check", str(_write(tmp_path, "s.yaml", sc))]) == 0
    err = capsys.readouterr().err.splitlines()
    notes = [ln for ln in err if ln.startswith("# note: ")]
    assert len(notes) == 2
    assert "acceptance.curve belongs to tree (top_k 10, depth 5, 59 tokens) and this round drafts (top_k 10, " \
           "depth 4, 40 tokens)" in notes[0]
    assert notes[1].startswith("# note: devices.gpu: 2 of its 2 unit(s) are shared (6 roles, up to 3 on one")
