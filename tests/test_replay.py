"""Replay (`starsim validate`'s second simulation): a simulation fed a run's own measured times
and acceptance. Replaying the simulator's own run gives that run back; the times it feeds
(`replayed`), the acceptance, a unit's turn handover and the draft's hand-off follow their
closed forms; what cannot be replayed is refused in one line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import CONST_STAR
from hypothesis import given, settings
from hypothesis import strategies as st

from starsim.acceptance import Replayed as ReplayedAcceptance
from starsim.acceptance import Shape
from starsim.distributions import Replayed
from starsim.errors import ScenarioError, StarsimError
from starsim.metrics import idle_gaps_all
from starsim.replay import replay, replay_overrides
from starsim.scenario import load_scenario, validate_scenario
from starsim.sim import simulate
from starsim.validate import Validation, compare, components, gap_stats

DECLARED = "scenarios/real_cpu_declared_n2.yaml"
KEYS = ("draft_utilization", "throughput_tokens_per_s", "draft_idle_gap_mean_s", "tpot_mean_s", "ttft_mean_s")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_replaying_a_simulated_run_gives_that_run_back(n):
    # the simulator's own run has no calibration error and no other model: its replay must
    # run the same rounds with the same times, whatever the contention on the shared core
    sets = [f"targets.0.count={n}"]
    sim = simulate(load_scenario(DECLARED, sets))
    rp = replay(DECLARED, sets, sim.records)
    assert len(rp.records.rounds) == len(sim.records.rounds)
    for key in KEYS:
        assert rp.summary[key] == pytest.approx(sim.summary[key], rel=1e-4), key  # times kept to 0.1 us
    assert gap_stats({"real": idle_gaps_all(sim.records), "replay": idle_gaps_all(rp.records)})["replay"]["ks"] < 0.01
    prov = rp.summary["provenance"]
    assert prov["source"] == rp.records.meta["source"] == "replay"
    assert prov["replay"]["scenario"]["targets"][0]["count"] == n  # the scenario it replays, for the report
    fed = prov["replay"]["fields"]
    assert fed["targets.0.verify_time"]["n"] == int((sim.records.rounds["draft"] >= 0).sum())
    assert fed["acceptance"]["rounds"] == [
        int(((sim.records.rounds["target"] == t) & (sim.records.rounds["draft"] >= 0)).sum()) for t in range(n)]


def test_a_replay_starts_each_target_when_the_run_did():
    # a real run's targets connect a few ms apart, in any order: a closed loop's phase follows
    sc = load_scenario(DECLARED, ["targets.0.count=3"])
    run = simulate(sc, starts=[0.004, 0.0, 0.002])
    q = run.records.requests.sort_values("request")
    assert list(q["target"][:3]) == [1, 2, 0]  # the first to start takes the first request
    assert q.groupby("target")["t_arrival"].min().tolist() == pytest.approx([0.004, 0.0, 0.002])
    rp = replay(DECLARED, ["targets.0.count=3"], run.records)
    assert rp.summary["provenance"]["replay"]["starts"] == pytest.approx([0.004, 0.0, 0.002])
    for key in KEYS:
        assert rp.summary[key] == pytest.approx(run.summary[key], rel=1e-4), key


def test_a_replay_is_deterministic():
    sim = simulate(load_scenario(DECLARED, ["targets.0.count=3"]))
    a, b = (replay(DECLARED, ["targets.0.count=3"], sim.records) for _ in range(2))
    assert a.records.rounds.equals(b.records.rounds) and a.records.intervals.equals(b.records.intervals)


def test_what_cannot_be_replayed_is_refused_in_one_line():
    serving = load_scenario("scenarios/real_cpu_serving_n1.yaml")
    with pytest.raises(StarsimError, match="cannot replay serving targets") as e:
        replay_overrides(serving, simulate(serving).records)
    assert "\n" not in str(e.value)
    piped = load_scenario("scenarios/beyond_pipeline.yaml", ["duration_s=5"])
    with pytest.raises(StarsimError, match="cannot replay pipelined drafting"):
        replay_overrides(piped, simulate(piped).records)


def test_the_cli_refuses_replay_of_a_serving_scenario_before_any_run(capsys):
    pytest.importorskip("torch")
    from starsim.cli import main

    assert main(["validate", "scenarios/real_cpu_serving_n1.yaml", "--replay", "--repeat", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot replay serving targets" in err and len(err.splitlines()) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 10, allow_nan=False), max_size=6), min_size=1, max_size=4))
def test_replayed_times_come_back_in_order_per_instance(runs):
    # any lists a user (or a replay) writes: each instance cycles its own, an empty one or
    # one past the lists draws from them all, all empty is refused with the field's name
    if not any(runs):
        with pytest.raises(ValueError, match="every list in runs is empty"):
            Replayed(kind="replayed", runs=runs)
        return
    spec = Replayed(kind="replayed", runs=runs)
    pooled = [x for r in runs for x in r]
    for i in range(len(runs) + 1):
        draw = spec.for_instance(i).draw0(np.random.default_rng(0))
        got = [draw() for _ in range(13)]
        if i < len(runs) and runs[i]:
            assert got == [runs[i][k % len(runs[i])] for k in range(13)]
        else:
            assert set(got) <= set(pooled)
    assert spec.mean() == pytest.approx(float(np.mean(pooled)))


def test_a_bad_replayed_field_names_its_path():
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["verify_time"] = {"kind": "replayed", "runs": [[], []]}
    with pytest.raises(ScenarioError, match=r"targets\.0\.verify_time"):
        validate_scenario(sc, "x.yaml")


def test_replayed_acceptance_follows_each_targets_rounds():
    acc = ReplayedAcceptance(kind="replayed", accepted=[[0, 3, 9], [2]])
    shape = Shape(4, 4, 16)
    draw = acc.for_target(0).sampler(np.random.default_rng(0), shape)
    assert [draw() for _ in range(6)] == [0, 3, 4, 0, 3, 4]  # in order, never past the tree's depth
    assert acc.for_target(1).sampler(np.random.default_rng(0), shape)() == 2
    assert acc.marginal(shape) == [0.75, 0.75, 0.5, 0.25]  # the pooled curve: the closed form's, a 3rd target's
    assert acc.for_target(2) is acc
    with pytest.raises(ValueError, match="target 1 has no rounds"):
        ReplayedAcceptance(kind="replayed", accepted=[[1], []])


def _const(**changes):
    sc = copy.deepcopy(CONST_STAR)
    sc.update(warmup_s=1.0, duration_s=30.0)
    for path, value in changes.items():
        node, *keys = path.split(".")
        d = sc[node]
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[keys[-1]] = value
    return validate_scenario(sc, "const.yaml")


def test_a_units_turn_handover_costs_each_waiting_verify_its_time():
    # two targets on one unit, always waiting for it (no draft time, no link): each verify
    # holds the unit V and passes it on after H, so the unit turns out a round every V + H
    kw = {"targets.0.count": 2, "devices.g.count": 1, "draft.time": 0.0, "targets.0.link": {"latency_s": 0.0},
          "targets.0.prefill_time": 0.0}
    v, h = 0.010, 0.002
    base = simulate(_const(**kw)).summary["throughput_tokens_per_s"]
    slow = simulate(_const(**kw, **{"devices.g.handover_time": h})).summary["throughput_tokens_per_s"]
    assert base == pytest.approx(2 * 4 / (2 * v), rel=0.01)  # 4 tokens a round
    assert slow == pytest.approx(base * v / (v + h), rel=0.01)


def test_the_drafts_hand_off_adds_its_time_to_every_round():
    # one target: a round is link up + hand-off + draft + link down + verify, alone
    d, v, link, t = 0.004, 0.010, 0.001, 0.003
    kw = {"targets.0.count": 1, "targets.0.prefill_time": 0.0}
    base = simulate(_const(**kw)).summary["throughput_tokens_per_s"]
    slow = simulate(_const(**kw, **{"draft.turnaround_time": t})).summary["throughput_tokens_per_s"]
    assert base == pytest.approx(4 / (d + v + 2 * link), rel=0.01)
    assert slow == pytest.approx(4 / (d + v + 2 * link + t), rel=0.01)


def test_gap_stats_and_the_table_with_a_replay():
    rng = np.random.default_rng(0)
    real = rng.exponential(0.003, 2000)
    g = gap_stats({"real": real, "sim": real + 1.0, "replay": real.copy()})
    assert g["replay"]["ks"] == 0.0 and g["sim"]["ks"] == 1.0 and g["real"]["ks"] is None
    assert g["real"]["mean_ms"] == pytest.approx(real.mean() * 1e3)
    assert g["real"]["p99_ms"] == pytest.approx(np.percentile(real, 99) * 1e3)
    p = {"point": "base", "components": components({"draft_s": 0.002}, {"draft_s": 0.001}), "idle_gaps": g,
         "metrics": compare({"draft_utilization": 0.5}, {"draft_utilization": 0.6}, None, {"draft_utilization": 0.51})}
    v = Validation("s", None, "real", [p], replayed=True)
    md = v.markdown()
    assert "| base | draft utilization | % | 50 | 60 | +20.0% | 51 | +2.0% |" in md
    assert "| base | replay | 2000 |" in md and "| 0.000 |" in md  # the idle-gap table, KS beside
    assert "| draft utilization | 20 | 2 |" in md  # MAPE: sim, then replay
    assert json.loads(json.dumps(v.as_dict()))["mape_replay_pct"]["draft_utilization"] == pytest.approx(2.0)
    unreplayed = Validation("s", None, "real", [p], no_replay="serving targets (max_seqs > 1)").markdown()
    assert "No replay: serving targets" in unreplayed
