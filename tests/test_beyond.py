"""Adaptive speculation, pipelined drafting and the M-for-N fabric in the simulator: each
one's defining property, against closed forms where there is one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import CONST_STAR

from starsim import simulate, validate_scenario
from starsim.errors import ScenarioError
from starsim.pairing import PAIRINGS, NoDraftServer, make_pairing


def _sc(**over) -> dict:
    """conftest's CONST_STAR (4 ms draft, tree depth 4, 10 ms verify, 1 ms links), one target unless told."""
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["count"] = 1
    sc.update(duration_s=30.0, warmup_s=2.0)
    for path, value in over.items():
        node = sc
        *head, last = path.split(".")
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        node[last] = value
    return sc


def _run(sc: dict):
    return simulate(validate_scenario(sc))


COLLAPSE = {"kind": "phases", "phases": [{"until_s": 10, "model": {"kind": "geometric", "alpha": 0.8}},
                                         {"model": {"kind": "geometric", "alpha": 0.02}}]}


# --------------------------------------------------------------------------- adaptive speculation


def test_adaptive_depth_goes_to_zero_when_acceptance_collapses():
    r = _run(_sc(acceptance=COLLAPSE, **{"draft.adaptive": {"policy": "goodput", "probe_every": 16}}))
    rw = r.records.rounds
    before, after = rw[rw.t_verify_end < 10], rw[rw.t_verify_end > 12]
    assert (before.depth == 4).mean() > 0.95  # good acceptance, idle draft: the whole tree
    assert (after.depth == 0).mean() > 0.9  # collapsed: no speculation...
    assert set(after.depth) <= {0, 1}  # ...but for probes at depth 1, one per 16 rounds at 0
    probes = (after.depth == 1).sum()
    assert probes == pytest.approx((after.depth == 0).sum() / 16, rel=0.1)
    # a round at depth 0 sends no draft request; the choice is recorded per round
    zero = after[after.depth == 0]
    assert (zero.draft == -1).all() and (zero.emitted == 1).all() and (zero.tree_tokens == 0).all()
    s = r.summary
    assert 0 < s["speculation_depth_mean"] < 4 and s["rounds_without_speculation"] > 0.5
    # without the controller, the collapsed phase keeps paying for trees nobody accepts
    fixed = _run(_sc(acceptance=COLLAPSE)).records.rounds
    late = lambda rows: rows[rows.t_verify_end > 12]  # noqa: E731
    rate = lambda rows: rows.emitted.sum() / (rows.t_verify_end.max() - rows.t_verify_end.min())  # noqa: E731
    assert rate(late(rw)) > 1.2 * rate(late(fixed))


def test_adaptive_recovers_when_acceptance_comes_back():
    back = {"kind": "phases", "phases": [{"until_s": 10, "model": {"kind": "geometric", "alpha": 0.02}},
                                         {"model": {"kind": "geometric", "alpha": 0.9}}]}
    rw = _run(_sc(acceptance=back, **{"draft.adaptive": {"policy": "goodput", "probe_every": 8}})).records.rounds
    assert (rw[rw.t_verify_end.between(3, 10)].depth == 0).mean() > 0.8
    assert (rw[rw.t_verify_end > 15].depth == 4).mean() > 0.9


def test_adaptive_speculates_less_under_load():
    """Same acceptance; a draft that 16 targets keep busy: queueing makes deep trees cost more."""
    over = {"acceptance": {"kind": "geometric", "alpha": 0.6}, "draft.adaptive": {"policy": "goodput"},
            "draft.time": 0.004}
    one = _run(_sc(**over)).summary
    many = _run(_sc(**over, **{"targets.0.count": 16, "devices.g.count": 16})).summary
    assert many["speculation_depth_mean"] < one["speculation_depth_mean"]


def test_phases_must_be_ordered():
    bad = {"kind": "phases", "phases": [{"until_s": 10, "model": {"kind": "geometric", "alpha": 0.5}},
                                        {"until_s": 5, "model": {"kind": "geometric", "alpha": 0.5}},
                                        {"model": {"kind": "geometric", "alpha": 0.5}}]}
    with pytest.raises(ScenarioError, match="acceptance.phases.*increasing order"):
        validate_scenario(_sc(acceptance=bad))
    with pytest.raises(ScenarioError, match="unknown adaptive policy 'greedy'"):
        validate_scenario(_sc(**{"draft.adaptive": {"policy": "greedy"}}))


# --------------------------------------------------------------------------- pipelined drafting


def test_pipelined_drafting_hides_the_draft_when_every_tree_is_accepted():
    """Everything accepted (5 tokens a round): a round is 1 + 4 + 1 + 10 = 16 ms one tree at a
    time, and the 10 ms verify alone pipelined (the next tree is drafted during it)."""
    full = {"acceptance.curve": [1, 1, 1, 1]}
    plain = _run(_sc(**full)).summary
    piped = _run(_sc(**full, **{"draft.pipeline": True})).summary
    assert plain["throughput_tokens_per_s"] == pytest.approx(5 / 0.016, rel=0.01)
    assert piped["throughput_tokens_per_s"] == pytest.approx(5 / 0.010, rel=0.01)
    # the only misses: a request's last round (its pipelined tree has no round to serve)
    pipe = _run(_sc(**full, **{"draft.pipeline": True})).records
    assert pipe.meta["pipeline"]["misses"] == np.isfinite(pipe.requests.t_finish).sum()
    assert piped["pipeline_hit_rate"] > 0.98


def test_pipelined_drafting_wastes_the_draft_on_a_miss():
    """Nothing accepted: every pipelined tree misses, its 4 ms are wasted, and one target's
    throughput is what it was (the draft had nothing else to do)."""
    none = {"acceptance.curve": [0, 0, 0, 0]}
    plain = _run(_sc(**none)).summary
    piped = _run(_sc(**none, **{"draft.pipeline": True}))
    s, pipe = piped.summary, piped.records.meta["pipeline"]
    assert s["throughput_tokens_per_s"] == pytest.approx(plain["throughput_tokens_per_s"], rel=0.01)
    assert pipe["hits"] == 0 and s["pipeline_hit_rate"] == 0
    assert pipe["wasted_s"] == pytest.approx(0.004 * pipe["misses"], rel=0.01)
    assert s["draft_wasted_fraction"] == pytest.approx(0.5, abs=0.01)  # one wasted tree per real one
    assert plain["draft_wasted_s"] is None


# --------------------------------------------------------------------------- the fabric


def _fabric(**fab) -> dict:
    sc = _sc(**{"targets.0.count": 4, "devices.g.count": 6, "draft.device": "g"})
    sc["draft"]["fabric"] = {"servers": 2, **fab}
    sc.update(duration_s=None, max_requests=24, warmup_s=0.0)
    sc["workload"].update(output_tokens=64)
    return sc


def test_static_pairing_alternates_servers():
    r = _run(_fabric(pairing="static"))
    rw = r.records.rounds
    assert {t: sorted(set(g)) for t, g in rw.groupby("target").draft} == {0: [0], 1: [1], 2: [0], 3: [1]}
    assert r.records.meta["draft_engines"] == ["draft-0", "draft-1"] and r.summary["fabric_repairs"] == 0


def test_a_failed_draft_servers_targets_move_and_finish():
    r = _run(_fabric(pairing="static", failures=[{"server": 0, "at_s": 0.5}]))
    rw, s = r.records.rounds, r.summary
    assert s["requests_completed"] == 24 and s["requests_unfinished"] == 0
    after = rw[rw.t_draft_start > 0.5]
    assert set(after.draft) == {1}  # nobody is served by the failed one
    assert set(rw[rw.t_verify_end < 0.4].draft) == {0, 1}
    assert s["fabric_repairs"] == 2  # targets 0 and 2
    # a moved target sends its whole context: the new server encodes all of it
    moved = rw[(rw.target == 0) & (rw.draft == 1)].iloc[0]
    assert moved.new_tokens == moved.context_tokens


def test_with_every_server_down_targets_finish_without_speculation():
    r = _run(_fabric(failures=[{"server": 0, "at_s": 0.3}, {"server": 1, "at_s": 0.5}]))
    rw = r.records.rounds
    assert r.summary["requests_completed"] == 24
    late = rw[rw.t_verify_start > 0.5]
    assert len(late) and (late.draft == -1).all() and (late.emitted == 1).all()


def test_least_loaded_spreads_targets_and_power_of_two_is_seeded():
    sc = _fabric(pairing="least_loaded")
    sc["draft"]["fabric"]["servers"] = 3
    sc["targets"][0]["count"] = 6
    sc["devices"]["g"]["count"] = 9
    rw = _run(sc).records.rounds
    assert sorted(rw.groupby("draft").target.nunique()) == [2, 2, 2]
    sc["draft"]["fabric"]["pairing"] = "power_of_two"
    a, b = _run(sc).records.rounds, _run(sc).records.rounds
    assert a.equals(b)


def test_saturated_server_is_left_between_requests():
    """Static pairing puts targets 0, 2, 4 on server 0 (20 ms a tree: saturated); with
    repair_queue 0, a target that finds another one waiting there at a request's start moves."""
    sc = _fabric(pairing="static", repair_queue=0)
    sc["targets"][0]["count"] = 5
    sc["draft"]["time"] = 0.02
    r = _run(sc)
    assert r.summary["fabric_repairs"] >= 1
    sc["draft"]["fabric"]["repair_queue"] = None
    assert _run(sc).summary["fabric_repairs"] == 0


def test_pairing_policies():
    assert {"static", "least_loaded", "power_of_two"} <= set(PAIRINGS)
    p = make_pairing("static", 3)
    assert [p.pair(t) for t in range(4)] == [0, 1, 2, 0]
    p.alive[1] = False
    assert p.pair(4) == 2 and p.pair(1, current=1, leave=True) == 2  # 1's home is down: the next live
    ll = make_pairing("least_loaded", 3)
    assert [ll.pair(t) for t in range(6)] == [0, 1, 2, 0, 1, 2]
    two = [make_pairing("power_of_two", 4, np.random.default_rng(7)) for _ in range(2)]
    assert [two[0].pair(t) for t in range(8)] == [two[1].pair(t) for t in range(8)]
    assert max(two[0].loads) - min(two[0].loads) <= 2
    down = make_pairing("least_loaded", 2, alive=[False, False])
    with pytest.raises(NoDraftServer):
        down.pair(0)
    with pytest.raises(ScenarioError, match="unknown pairing 'random'"):
        validate_scenario(_fabric(pairing="random"))
    with pytest.raises(ScenarioError, match="server 5 out of range"):
        validate_scenario(_fabric(failures=[{"server": 5, "at_s": 1}]))


def test_closed_form_of_a_fabric_matches_the_simulator():
    """M servers with static pairing are M stars of N/M targets each: the closed form and the
    simulation agree (constant times, deterministic acceptance)."""
    from starsim import analyze

    for servers, n in ((1, 8), (2, 8), (3, 7)):
        sc = _sc(**{"targets.0.count": n, "devices.g.count": 12, "draft.device": "g", "duration_s": 60.0})
        sc["draft"]["fabric"] = {"servers": servers}
        scenario = validate_scenario(sc)
        a, s = analyze(scenario), simulate(scenario).summary
        for k in ("draft_utilization", "throughput_tokens_per_s"):
            assert a[k] == pytest.approx(s[k], rel=0.02), (servers, n, k)


@pytest.mark.parametrize("policy", ["fifo", "round_robin", "wfq", "edf"])
def test_pipelining_works_under_every_policy(policy):
    """A missed pipelined tree can still be queued when its target's next round is: a
    policy holds two tasks of one target then (round robin serves them in its turns)."""
    s = _run(_sc(**{"targets.0.count": 6, "draft.policy": policy, "draft.pipeline": True,
                    "acceptance.curve": [1, 1, 0.5, 0.2], "duration_s": 10.0})).summary
    assert s["requests_completed"] > 0 and 0 < s["pipeline_hit_rate"] < 1 and s["draft_wasted_s"] > 0


def test_draft_server_features_need_a_star():
    sc = _sc(mode="one_for_one")
    sc["draft"].update(pipeline=True, fabric={"servers": 2})
    with pytest.raises(ScenarioError) as e:
        validate_scenario(sc)
    lines = str(e.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["draft.fabric.servers", "draft.pipeline"]
    assert all("needs mode: star" in line for line in lines)
