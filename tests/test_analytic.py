"""The closed form against the simulator where its assumptions hold, and against itself."""

from __future__ import annotations

import numpy as np
import pytest

from starsim import analyze, simulate, validate_scenario
from starsim.analytic import closed_form, mva_utilization


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
def test_constant_times_agree_within_2_percent(const_star, n):
    const_star["targets"][0]["count"] = n
    sc = validate_scenario(const_star)
    a, s = analyze(sc), simulate(sc).summary
    assert s["draft_utilization"] == pytest.approx(a["draft_utilization"], rel=0.02)
    assert s["throughput_tokens_per_s"] == pytest.approx(a["throughput_tokens_per_s"], rel=0.02)


def test_saturation_point_matches_paper_formula(const_star):
    sc = validate_scenario(const_star)
    a = analyze(sc)
    p = a["per_target"][0]
    # N* = 1 + (c + v) / d, with per-request work spread over rounds
    assert a["n_saturation"] == pytest.approx(p["cycle_alone_s"] / p["draft_s"])
    assert p["draft_s"] == pytest.approx(0.004)
    # link 2 x 1 ms + verify 10 ms + prefill 2 ms spread over ceil(400 / 4) = 100 rounds
    assert p["cycle_alone_s"] == pytest.approx(0.004 + 0.012 + 0.002 / 100)


def test_closed_form_vectorised_matches_scalar_loop():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 64, 1_000_000)
    d = rng.uniform(1e-3, 1e-2, n.size)
    z = rng.uniform(1e-3, 1e-1, n.size)
    m = rng.uniform(1, 5, n.size)
    out = closed_form(n, d, z, m)
    for i in rng.integers(0, n.size, 50):
        t = d[i] + z[i]
        u = min(1.0, n[i] * d[i] / t)
        cycle = max(t, n[i] * d[i])
        assert out["draft_utilization"][i] == pytest.approx(u)
        assert out["cycle_s"][i] == pytest.approx(cycle)
        assert out["throughput_tokens_per_s"][i] == pytest.approx(n[i] * m[i] / cycle)
        assert out["draft_idle_gap_mean_s"][i] == pytest.approx((1 - u) * cycle / n[i], abs=1e-12)


def test_mva_is_the_machine_repairman_formula():
    # M/M/1//N: U = 1 - p0, p0 = 1 / sum_k N!/(N-k)! (d/z)^k
    d, z = 0.004, 0.012
    for n in range(1, 10):
        terms = [np.prod(np.arange(n - k + 1, n + 1)) * (d / z) ** k for k in range(n + 1)]
        assert mva_utilization(n, d, z) == pytest.approx(1 - 1 / sum(terms))
    assert mva_utilization(np.array([1, 5]), d, z).shape == (2,)


def test_heterogeneous_saturated_cycle_solves_the_balance(const_star):
    const_star["targets"].append({**const_star["targets"][0], "name": "slow", "verify_time": 0.05, "count": 6})
    a = analyze(validate_scenario(const_star))
    assert a["saturated"]
    assert a["draft_utilization"] == pytest.approx(1.0)
    # every target gets one draft per draft cycle C: sum_i d_i / cycle_i = 1
    assert sum(p["draft_s"] / p["cycle_s"] for p in a["per_target"]) == pytest.approx(1.0, rel=1e-6)
