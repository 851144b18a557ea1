"""Draft-server policies: each one's defining property, in the simulator."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from conftest import CONST_STAR

from starsim import simulate, validate_scenario
from starsim.errors import ScenarioError
from starsim.policies import POLICIES, make_policy


def _saturated(groups: list[dict], policy: str, duration: float = 60.0) -> dict:
    """A draft far busier than its targets: 4 ms a round, 1.5 ms on the target side."""
    sc = copy.deepcopy(CONST_STAR)
    sc["draft"].update(time=0.004, policy=policy)
    base = {**sc["targets"][0], "count": 1, "verify_time": 0.0005, "link": {"latency_s": 0.0005}, "prefill_time": 0.0}
    sc["targets"] = [{**base, **g} for g in groups]
    sc["devices"]["g"]["count"] = sum(g.get("count", 1) for g in groups)
    sc.update(duration_s=duration, warmup_s=2.0)
    return simulate(validate_scenario(sc)).summary


def test_registry_and_unknown_policy():
    assert {"fifo", "round_robin", "wfq", "edf"} <= set(POLICIES)
    sc = copy.deepcopy(CONST_STAR)
    sc["draft"]["policy"] = "lottery"
    with pytest.raises(ScenarioError, match="unknown policy 'lottery'; expected one of: edf, fifo, round_robin, wfq"):
        validate_scenario(sc)


def test_weighted_fair_shares_follow_the_weights():
    """Saturated draft, weights 1, 1, 2, 4: each target's share of the rounds is its weight's
    share, within 5%; FIFO splits evenly."""
    groups = [{"name": "a", "count": 2, "weight": 1.0}, {"name": "b", "weight": 2.0}, {"name": "c", "weight": 4.0}]
    s = _saturated(groups, "wfq")
    rounds = [p["rounds"] for p in s["per_target"]]
    weights = [1, 1, 2, 4]
    for r, w in zip(rounds, weights):
        assert r / sum(rounds) == pytest.approx(w / sum(weights), rel=0.05)
    assert s["target_weighted_jain"] > 0.99 and s["target_tokens_per_s_jain"] < 0.85
    fifo = _saturated(groups, "fifo")
    assert fifo["target_tokens_per_s_jain"] > 0.99  # everyone alike, whatever the weights
    assert s["draft_utilization"] == pytest.approx(1.0, abs=0.01)  # work-conserving


def test_round_robin_serves_the_waiting_targets_in_turn():
    p = make_policy("round_robin")
    for t in (3, 0, 2):
        p.push(SimpleNamespace(target=t))
    assert [p.pop().target for _ in range(2)] == [0, 2]
    p.push(SimpleNamespace(target=1))  # 1 comes after the last served (2) only on the next turn
    assert [p.pop().target for _ in range(2)] == [3, 1] and len(p) == 0
    s = _saturated([{"count": 4}], "round_robin")
    rounds = [q["rounds"] for q in s["per_target"]]
    assert max(rounds) - min(rounds) <= 1


def test_edf_meets_an_objective_that_fifo_misses():
    """Three targets share a saturated draft (12 ms a cycle, 4 tokens a round: 3 ms per token
    under FIFO). One has a 2.5 ms TPOT objective: EDF serves it whenever it waits and meets
    it on every request; FIFO misses it on every request."""
    groups = [{"name": "urgent", "tpot_slo_s": 0.0025}, {"name": "bulk", "count": 2}]
    edf, fifo = _saturated(groups, "edf", 120.0), _saturated(groups, "fifo", 120.0)
    assert edf["per_target"][0]["slo_attainment"] == 1.0 and edf["slo_attainment"] == 1.0
    assert fifo["per_target"][0]["slo_attainment"] == 0.0
    assert fifo["per_target"][0]["tpot_mean_s"] == pytest.approx(0.003, rel=0.02)
    assert edf["per_target"][0]["tpot_mean_s"] < 0.0025
    assert edf["per_target"][1]["slo_attainment"] is None  # no objective, nothing to attain
    assert edf["draft_utilization"] == pytest.approx(1.0, abs=0.01)


def test_policy_parameters_are_checked():
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0].update(weight=0)
    with pytest.raises(ScenarioError, match="targets.0.weight"):
        validate_scenario(sc)
    sc["targets"][0].update(weight=1, tpot_slo_s=-1)
    with pytest.raises(ScenarioError, match="targets.0.tpot_slo_s"):
        validate_scenario(sc)


# --------------------------------------------------------------------------- batched drafting


def _batched(n: int, batch: dict | None) -> dict:
    """Constant times: 6 ms a round alone, 8 ms for a batch; 12 ms on each target's side."""
    sc = copy.deepcopy(CONST_STAR)
    sc["draft"]["time"] = 0.006
    if batch is not None:
        sc["draft"]["batch"] = batch
    sc["targets"][0]["count"] = n
    sc.update(duration_s=60.0, warmup_s=2.0)
    return simulate(validate_scenario(sc)).summary


def test_batched_drafting_matches_its_closed_form():
    """Four targets in lockstep: one batch of four (8 ms), then all verify (12 ms): a request
    of 401 tokens (100 rounds of 4, after a 2 ms prefill) takes 2.002 s, so 4 x 401 / 2.002
    tok/s. One at a time the draft is the bottleneck: 4 x 6 ms a cycle, 4 x 401 / 2.402."""
    batched = _batched(4, {"max": 4, "window_s": 0.001, "time": 0.008})
    alone = _batched(4, None)
    assert batched["throughput_tokens_per_s"] == pytest.approx(4 * 401 / 2.002, rel=2e-3)
    assert alone["throughput_tokens_per_s"] == pytest.approx(4 * 401 / 2.402, rel=2e-3)
    assert batched["draft_task_time_mean_s"] == pytest.approx(0.008)  # one busy interval per batch


def test_a_batch_of_one_is_a_plain_round():
    """A lone target never has company: batching changes nothing."""
    one = _batched(1, {"max": 4, "window_s": 0.0, "time": 0.008})
    plain = _batched(1, None)
    for k in ("throughput_tokens_per_s", "draft_utilization", "rounds", "round_time_mean_s"):
        assert one[k] == pytest.approx(plain[k], rel=1e-12), k


def test_batching_needs_its_cost():
    sc = copy.deepcopy(CONST_STAR)
    sc["draft"]["batch"] = {"max": 4}
    with pytest.raises(ScenarioError, match="batch.max > 1 needs batch.time"):
        validate_scenario(sc)


# --------------------------------------------------------------------------- draft memory


def _memory(capacity: int | None) -> dict:
    """Four targets in FIFO turn, contexts 51..450 tokens at 1 kB a token; 10 us to encode one."""
    sc = copy.deepcopy(CONST_STAR)
    sc["draft"].update(encode_per_token_s=0.00001, memory_bytes=capacity)
    sc.update(duration_s=40.0, warmup_s=2.0)
    return simulate(validate_scenario(sc)).summary


def test_draft_memory_evicts_the_least_recently_used_tag():
    """Room for every tag: nothing is evicted. Room for one full-length context: in FIFO turn
    a tag is usually gone by its next round (two short contexts still fit together) and
    re-encodes its whole context, so the draft's rounds take longer and throughput falls."""
    roomy, tight = _memory(None), _memory(4 * 451 * 1000)
    assert roomy["draft_evictions"] == 0 and tight["draft_evictions"] == 0  # 4 tags always fit
    thrash = _memory(451 * 1000)
    assert thrash["draft_evictions"] >= 0.8 * thrash["rounds"]
    # a round re-encodes ~250 tokens on average (the mean context) instead of 4
    assert thrash["draft_task_time_mean_s"] > roomy["draft_task_time_mean_s"] + 0.002
    assert thrash["throughput_tokens_per_s"] < 0.9 * roomy["throughput_tokens_per_s"]
    # memory over time (the report's figure 7): evictions keep the held bytes within the
    # capacity; without a limit the four tags together hold more
    assert thrash["draft_kv_bytes_peak"] <= 451 * 1000 < roomy["draft_kv_bytes_peak"]
