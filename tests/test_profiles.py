"""Measured profiles without torch: the fit, the file, and their use in a scenario."""

from __future__ import annotations

import copy
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONST_STAR

from starsim import analyze, simulate, validate_scenario
from starsim.cli import main
from starsim.errors import ScenarioError
from starsim.profiles import (
    ProfileFile,
    ProfileRangeWarning,
    build_op,
    fit_op,
    idle_factor,
    read_profile,
    write_profile,
)

# --------------------------------------------------------------------------- the fit


def _grid(fn, tokens, contexts, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = {"tokens": [], "context": []}
    y = []
    for t, c in itertools.product(tokens, contexts):
        x["tokens"].append(t)
        x["context"].append(c)
        y.append(fn(t, c) * (1 + noise * rng.standard_normal()))
    return x, y


def test_fit_recovers_known_coefficients():
    a, b, d = 0.002, 1e-4, 2e-7
    x, y = _grid(lambda t, c: a + b * t + d * t * c, [1, 8, 16, 32, 64], [64, 256, 512, 1024, 2048])
    fit = fit_op(("tokens", "context"), x, y)
    assert fit.features == ["1", "tokens", "tokens*context"]
    for got, want in zip(fit.coef, [a, b, d]):
        assert got == pytest.approx(want, rel=1e-6)
    assert fit.mape < 1e-6 and fit.cv_mape < 1e-6
    assert fit.candidates["1"] > 10  # the constant alone is a poor model of this data


def test_fit_with_noise_stays_close():
    a, b, c_ = 0.01, 3e-4, 5e-6
    x, y = _grid(lambda t, c: a + b * t + c_ * c, [1, 8, 16, 32, 64], [64, 256, 512, 1024, 2048], noise=0.01)
    fit = fit_op(("tokens", "context"), x, y)
    pred = dict(zip(fit.features, fit.coef))
    assert pred["1"] == pytest.approx(a, rel=0.05)
    assert pred["tokens"] == pytest.approx(b, rel=0.05)
    assert pred["context"] == pytest.approx(c_, rel=0.05)
    assert fit.mape < 2.0


def test_prefill_fit_takes_the_quadratic_term():
    toks = [16, 64, 128, 256, 512, 1024]
    fit = fit_op(("tokens",), {"tokens": toks}, [0.005 + 1e-5 * t + 4e-8 * t * t for t in toks])
    assert fit.features == ["1", "tokens", "tokens^2"]
    assert fit.coef[2] == pytest.approx(4e-8, rel=1e-6)


def test_fit_rejects_bad_measurements():
    with pytest.raises(ValueError, match="positive and finite"):
        fit_op(("tokens",), {"tokens": [1, 2]}, [0.1, 0.0])


# --------------------------------------------------------------------------- the file


def _rows(fn, tokens, contexts, spread=0.05):
    return [(t, c, fn(t, c), fn(t, c) * (1 - spread), fn(t, c) * (1 + spread), 10) for t in tokens for c in contexts]


def make_profile(path, *, verify=None, draft=None, idle=None, tree=None, contexts=(16, 1024)) -> ProfileFile:
    """A synthetic profile file: verify(tokens, context) and draft_round(new, context)."""
    ops = {}
    if verify is not None:
        ops["verify"] = build_op(("tokens", "context"), _rows(verify, [1, 16, 64], contexts))
    if draft is not None:
        fixed = {"tree": tree or {"top_k": 4, "depth": 4, "tokens": 16}}
        ops["draft_round"] = build_op(("tokens", "context"), _rows(draft, [1, 4, 64], contexts), fixed=fixed)
    if idle is not None:
        rows = [(g, v, v, v, 5) for g, v in idle]
        ops["draft_idle"] = build_op(("gap_s",), rows, fixed={"tree": tree or {"top_k": 4, "depth": 4, "tokens": 16}})
    prof = ProfileFile(
        model={"name": "synthetic"}, device={"name": "test device"}, provenance={"date": "2026-01-01"}, ops=ops
    )
    write_profile(prof, path)
    return prof


def test_profile_round_trip(tmp_path):
    prof = make_profile(tmp_path / "p.yaml", verify=lambda t, c: 0.01 + 1e-4 * t, idle=[(0.0, 0.01), (1.0, 0.02)])
    back = read_profile(tmp_path / "p.yaml")
    assert back.model_dump() == prof.model_dump()
    op = back.ops["verify"]
    assert op.range == {"tokens": (1.0, 64.0), "context": (16.0, 1024.0)}
    assert op.predict(tokens=16, context=100) == pytest.approx(0.01 + 16e-4, rel=1e-6)
    assert op.noise_cv == pytest.approx(0.039, abs=0.001)  # from p10/p90 = 0.95/1.05
    assert back.ops["draft_idle"].fit is None  # the warm/cold curve is kept as measured


def test_broken_profile_file_names_the_field(tmp_path):
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.01)
    data = yaml.safe_load(p.read_text())
    data["ops"]["verify"]["rows"] = "many"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError) as e:
        read_profile(p)
    assert str(p) in str(e.value) and "ops.verify.rows" in str(e.value)


def test_idle_factor_interpolates_in_log_gap():
    prof = ProfileFile(ops={"draft_idle": build_op(("gap_s",), [(0.0, 1, 1, 1, 1), (0.1, 2, 2, 2, 1)])})
    f = idle_factor(prof)
    assert f(0.0) == 1.0 and f(0.1) == pytest.approx(2.0) and f(10.0) == pytest.approx(2.0)  # flat beyond
    mid = f(np.expm1(np.log1p(100.0) / 2) / 1e3)  # halfway in log(1 + gap ms)
    assert mid == pytest.approx(1.5)
    assert idle_factor(ProfileFile()) is None


def test_idle_factor_is_non_decreasing_in_the_gap():
    # a noisy curve as a shared VM measures one: the back-to-back time high, a dip at 0.5 ms
    rows = [(g, t, t, t, 25) for g, t in ((0.0, 8.48), (0.0005, 7.14), (0.001, 8.47), (0.002, 9.70),
                                          (0.004, 8.22), (0.016, 9.50), (0.05, 8.99))]
    f = idle_factor(ProfileFile(ops={"verify_idle": build_op(("gap_s",), rows)}), "verify_idle")
    gaps = np.geomspace(1e-5, 1.0, 200)
    assert np.all(np.diff([f(g) for g in gaps]) >= -1e-12) and f(0.0) == 1.0
    # the isotonic fit pools the first two points (7.81) and the last two (9.245)
    assert f(1.0) == pytest.approx(9.245 / 7.81, rel=1e-9)
    flat = ProfileFile(ops={"draft_idle": build_op(("gap_s",), [(0.0, 0.0, 0, 0, 1), (0.1, 0.0, 0, 0, 1)])})
    assert idle_factor(flat)(0.05) == 1.0  # all zero: no slowdown, not a division by zero


# --------------------------------------------------------------------------- in a scenario


def _scenario(tmp_path, profile_path, **draft) -> dict:
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["verify_time"] = {"kind": "profile", "path": str(profile_path), "op": "verify", "noise": False}
    if draft:
        sc["draft"].pop("time")
        sc["draft"].update(draft)
    sc["duration_s"], sc["warmup_s"] = 30.0, 1.0
    return sc


def test_profile_spec_drives_the_simulation(tmp_path):
    """A constant profile gives exactly what the same constant written inline gives."""
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.010, draft=lambda n, c: 0.004)
    inline = simulate(validate_scenario(copy.deepcopy(CONST_STAR) | {"duration_s": 30.0, "warmup_s": 1.0}))
    sc = _scenario(tmp_path, p, round_time={"kind": "profile", "path": str(p), "op": "draft_round", "noise": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileRangeWarning)
        res = simulate(validate_scenario(sc))
    for key in ("draft_utilization", "throughput_tokens_per_s", "rounds", "draft_idle_gap_mean_s"):
        assert res.summary[key] == pytest.approx(inline.summary[key], rel=1e-9), key
    used = {e["op"]: e for e in res.summary["provenance"]["profiles"]}
    assert set(used) == {"verify", "draft_round"}
    assert all(not e["extrapolated"] and e["calls"] > 0 and len(e["sha256"]) == 64 for e in used.values())
    # the closed form reads the same profile
    assert analyze(validate_scenario(sc))["draft_utilization"] == pytest.approx(
        inline.summary["draft_utilization"], rel=0.02
    )


def test_outside_the_measured_range_warns_and_records(tmp_path):
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.010 + 1e-5 * c, contexts=(16, 64))  # the run reaches context ~450
    sc = validate_scenario(_scenario(tmp_path, p))
    with pytest.warns(ProfileRangeWarning, match="outside the measured range"):
        res = simulate(sc)
    (entry,) = res.summary["provenance"]["profiles"]
    assert entry["extrapolated"] and entry["outside_range"] > 0 and entry["calls"] >= entry["outside_range"]
    assert entry["range"]["context"] == [16.0, 64.0] and entry["seen"]["context"][1] > 64
    json.dumps(res.summary, allow_nan=False)  # stays valid JSON


def test_cli_run_reports_extrapolation(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.010, contexts=(16, 64))
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(_scenario(tmp_path, "p.yaml")))  # relative to the scenario file
    with pytest.warns(ProfileRangeWarning):
        rc = main(["run", str(f), "--out", str(tmp_path / "run")])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["provenance"]["profiles"][0]["extrapolated"] is True
    assert summary["provenance"]["profiles"][0]["path"] == str(p.resolve())


def test_warm_cold_curve_slows_a_lone_target(tmp_path):
    """One target leaves the draft idle between rounds, so every round pays the cold factor."""
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.010, draft=lambda n, c: 0.004, idle=[(0.0, 0.004), (0.001, 0.008)])
    spec = {"kind": "profile", "path": str(p), "op": "draft_round", "noise": False}
    sc = _scenario(tmp_path, p, round_time=spec)
    sc["targets"][0]["count"] = 1
    cold = simulate(validate_scenario(sc)).summary
    sc["draft"]["idle_slowdown"] = False
    warm = simulate(validate_scenario(sc)).summary
    assert warm["draft_task_time_mean_s"] == pytest.approx(0.004)
    # every idle gap here is >= 10 ms (verify), past the last measured gap: factor 2
    assert cold["draft_task_time_mean_s"] == pytest.approx(0.008, rel=1e-6)


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"op": "prefill"}, "targets.0.verify_time", "op 'prefill' is not in profile"),
        ({"path": "missing.yaml"}, "targets.0.verify_time", "profile file not found"),
        ({"scale": 0}, "targets.0.verify_time", "greater than 0"),
    ],
)
def test_bad_profile_reference(tmp_path, capsys, change, field, message):
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.010)
    sc = _scenario(tmp_path, "p.yaml")
    sc["targets"][0]["verify_time"].update(change)
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc))
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{f}: {field}" in err and message in err


def test_round_time_checks(tmp_path):
    p = tmp_path / "p.yaml"
    make_profile(p, verify=lambda t, c: 0.01, draft=lambda n, c: 0.004, tree={"top_k": 10, "depth": 5, "tokens": 59})
    spec = {"kind": "profile", "path": str(p), "op": "draft_round"}
    with pytest.raises(ScenarioError, match="differs from the tree the profile's draft_round was measured with"):
        validate_scenario(_scenario(tmp_path, p, round_time=spec))
    sc = _scenario(tmp_path, p, round_time=spec, idle_slowdown=True)
    sc["draft"]["tree"] = {"top_k": 10, "depth": 5, "tokens": 59}
    with pytest.raises(ScenarioError, match="idle_slowdown needs round_time to be a profile with a draft_idle"):
        validate_scenario(sc)
    sc = copy.deepcopy(CONST_STAR)
    sc["draft"]["round_time"] = 0.004
    with pytest.raises(ScenarioError, match="give exactly one of draft.time"):
        validate_scenario(sc)


@pytest.mark.parametrize("n", [1, 4])
def test_shipped_cpu_scenarios_stay_inside_their_profiles(n):
    from conftest import REPO

    from starsim import load_scenario

    sc = load_scenario(REPO / "scenarios" / f"starsd_ref_cpu_n{n}.yaml", ["duration_s=60"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileRangeWarning)
        res = simulate(sc)
    used = {e["op"]: e for e in res.summary["provenance"]["profiles"]}
    assert set(used) == {"draft_round", "verify", "prefill"}
    assert all(e["device"].startswith("cpu") and e["measured_on"] for e in used.values())
    assert res.summary["rounds"] > 0


def test_concave_token_costs_are_fitted_and_sampled_alike():
    """A fixed cost, a sqrt(tokens) part and a context term: the fit finds the sqrt feature,
    and the simulator's collapsed sampler gives what Op.predict gives, and refit keeps it."""
    import numpy as np

    from starsim.profiles import ProfileFile, build_op, op_sampler, refit

    rows = []
    for t in (1, 4, 8, 16, 32, 64):
        for c in (16, 256, 1024):
            y = 0.002 + 0.0009 * np.sqrt(t) + 2e-6 * c
            rows.append([t, c, y, y * 0.95, y * 1.05, 5])
    op = build_op(["tokens", "context"], rows)
    assert "sqrt(tokens)" in op.fit.features and op.fit.mape_pct < 1.0
    prof = ProfileFile(ops={"verify": op})
    f = op_sampler("p", "verify", prof, np.random.default_rng(0), noise=False)
    for t, c in ((17, 130), (3, 900)):
        assert f(t, c) == pytest.approx(op.predict(tokens=t, context=c), rel=1e-12)
    assert refit(prof).ops["verify"].fit.features == op.fit.features


def test_a_batched_ops_mean_is_its_samplers_mean():
    # draft_batched takes (batch, context): the caller's tokens is the batch size, for the
    # mean (the planner's closed form) as for the sampler (the simulator)
    from starsim.distributions import Profile

    profiles = Path(__file__).resolve().parent.parent / "models" / "profiles"
    path = profiles / "qwen3-8b-qwen3-06b.draft.h200_sxm-vllm-tp1.bfloat16.yaml"
    spec = Profile(kind="profile", path=str(path), op="draft_batched", noise=False)
    f = spec.sampler(np.random.default_rng(0))
    for b, ctx in ((1, 100), (4, 300), (8, 2000)):
        assert spec.mean(b, ctx, 5) == pytest.approx(f(b, ctx, 5), rel=1e-12)
    assert spec.mean(4, 300, 5) > spec.mean(1, 300, 5)
