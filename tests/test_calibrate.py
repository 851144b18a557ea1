"""`starsim calibrate compute`: a tiny real calibration on the CPU (coarse properties only).

No timing is asserted: only that every op was measured and fitted, the numbers are sane
(positive, ordered quantiles), the provenance is complete, and a scenario runs on the result.
"""

from __future__ import annotations

import copy

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CONST_STAR  # noqa: E402

from starsim import simulate, validate_scenario  # noqa: E402
from starsim.calibrate import compute  # noqa: E402
from starsim.cli import main  # noqa: E402
from starsim.models.specs import list_specs, load_spec  # noqa: E402
from starsim.profiles import read_profile  # noqa: E402

# Smaller than the quick grid: a few points per op, each timed for a few milliseconds.
TINY = compute.Grid(
    contexts=[8, 32],
    verify_tokens=[1, 4],
    prefill_tokens=[4, 16],
    new_tokens=[1, 8],
    widths=[1, 2],
    batches=[1, 2],
    verify_batches=[2],
    idle_gaps_s=[0.0, 0.002],
    idle_repeats=2,
    idle_context=16,
    min_run_time=0.002,
    max_run_time=0.01,
    passes=2,
)


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("profiles")
    spec = load_spec("tiny-cpu")
    settings = compute.Settings(spec=spec, device="cpu", threads=1, grid=TINY, seed=3)
    result = compute.calibrate(settings)
    paths = compute.save(result, spec, out)
    return result, dict(zip(result, paths))


def test_every_op_measured_and_fitted(profiles):
    result, paths = profiles
    assert set(result) == {"target", "draft"}
    assert set(result["target"].ops) == set(compute.TARGET_OPS)
    assert set(result["draft"].ops) == set(compute.DRAFT_OPS)
    for prof in result.values():
        for name, op in prof.ops.items():
            med, p10, p90 = op.column("median_s"), op.column("p10_s"), op.column("p90_s")
            # the time is the lowest pass median; the spread is over every block of every pass
            assert (med > 0).all() and (p10 <= p90).all() and (med <= p90).all(), name
            if name in ("draft_idle", "verify_idle"):
                assert op.fit is None and sorted(op.column("gap_s")) == [0.0, 0.002]
                continue
            assert op.fit is not None and op.fit.mape_pct >= 0 and op.fit.features[0] == "1"
            assert all(c >= 0 for c in op.fit.coef)
    # grid coverage: a draft round's new tokens never exceed its context
    draft_round = result["draft"].ops["draft_round"]
    assert {tuple(r[:2]) for r in draft_round.rows} == {(1, 8), (1, 32), (8, 8), (8, 32)}
    assert draft_round.fixed["tree"] == load_spec("tiny-cpu").tree.model_dump()


def test_profile_files_carry_provenance(profiles):
    result, paths = profiles
    for role, path in paths.items():
        assert path.name.startswith(f"tiny-cpu.{role}.") and path.name.endswith(".float32.yaml")
        back = read_profile(path)
        assert back.model_dump() == result[role].model_dump()
        prov = back.provenance
        for key in ("starsim", "torch", "transformers", "python", "date", "dtype", "grid", "parameters", "seed"):
            assert prov[key] not in (None, ""), key
        assert prov["grid"]["contexts"] == [8, 32]
        assert back.device["kind"] == "cpu" and back.device["threads"] == 1 and back.device["name"]
        assert back.model["spec"] == "tiny-cpu" and back.model["role"] == role


def test_scenario_runs_on_the_measured_profiles(profiles):
    _, paths = profiles
    sc = copy.deepcopy(CONST_STAR)
    tree = load_spec("tiny-cpu").tree.model_dump()
    sc["draft"] = {"device": "d", "tree": tree,
                   "round_time": {"kind": "profile", "path": str(paths["draft"]), "op": "draft_round"}}
    sc["targets"][0]["verify_time"] = {"kind": "profile", "path": str(paths["target"]), "op": "verify"}
    sc["targets"][0]["prefill_time"] = {"kind": "profile", "path": str(paths["target"]), "op": "prefill"}
    sc["duration_s"], sc["warmup_s"] = 10.0, 1.0
    with pytest.warns(UserWarning, match="outside the measured range"):  # contexts beyond 32 tokens
        res = simulate(validate_scenario(sc))
    assert res.summary["rounds"] > 0 and 0 < res.summary["draft_utilization"] <= 1
    ops = {e["op"] for e in res.summary["provenance"]["profiles"]}
    assert ops == {"draft_round", "verify", "prefill"}


def test_interrupt_keeps_what_was_measured(monkeypatch):
    calls = {"n": 0}
    real = compute.time_call

    def stop_after_five(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(compute, "time_call", stop_after_five)
    settings = compute.Settings(spec=load_spec("tiny-cpu"), device="cpu", threads=1, grid=TINY, roles=("target",))
    result = compute.calibrate(settings)
    prof = result["target"]
    assert "stopped by the user after 5 of" in prof.provenance["interrupted"]
    assert sum(len(op.rows) for op in prof.ops.values()) <= 5


def test_cli_list_and_bad_input(capsys):
    assert main(["calibrate", "compute", "--list"]) == 0
    out = capsys.readouterr().out
    for name in list_specs():
        assert name in out
    for argv, msg in [
        (["--spec", "no-such-spec"], "no such model spec; known specs:"),
        (["--spec", "tiny-cpu", "--device", "tpu"], "--device: expected cpu or cuda"),
        (["--spec", "vicuna7b-eagle"], "sized for a GPU"),
        (["--spec", "tiny-cpu", "--tree", "10,5"], "--tree: expected TOP_K,DEPTH,TOKENS"),
        (["--spec", "tiny-cpu", "--roles", "verifier"], "--roles: unknown role(s) verifier"),
    ]:
        assert main(["calibrate", "compute", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and msg in err, (argv, err)


def test_cli_quick_calibration_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compute, "QUICK", TINY)
    for out in ("a", "b"):
        rc = main(["calibrate", "compute", "--spec", "tiny-cpu", "--grid", "quick", "--threads", "1",
                   "--roles", "target", "--quiet", "--out", str(tmp_path / out)])
        assert rc == 0
    printed = capsys.readouterr().out
    assert "MAPE" in printed and "verify" in printed and "round_time" not in printed
    (a,) = (tmp_path / "a").glob("*.yaml")
    (b,) = (tmp_path / "b").glob("*.yaml")
    assert yaml.safe_load(a.read_text())["provenance"]["command"].startswith("starsim calibrate")
    assert main(["calibrate", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "median point" in out and "verify" in out and "raw" in out and "normalized" in out
    ops = yaml.safe_load(a.read_text())["ops"]
    assert "ref_s" in ops["verify"]["columns"]  # each point keeps the reference timed beside it
    assert all(r[-1] > 0 for r in ops["verify"]["rows"])


def test_normalization_removes_synthetic_drift():
    """Two calibrations of one machine, the second run while the machine slowed down by 0-30%
    from point to point: raw they disagree by up to 30%, normalized by the reference timed
    beside each point they agree (the drift hits the op and the reference alike)."""
    import numpy as np

    from starsim.calibrate.compare import agreement
    from starsim.profiles import ProfileFile, build_op

    rng = np.random.default_rng(0)
    pts = [(t, c) for t in (1, 4, 16, 64) for c in (128, 512, 2048)]
    true = {p: 1e-3 * (1 + 0.05 * p[0] + 1e-4 * p[1]) for p in pts}

    def profile(drift):
        rows = []
        for p in pts:
            d = drift(p)
            rows.append((*p, true[p] * d, true[p] * d * 0.9, true[p] * d * 1.1, 10, 2.7e-3 * d))
        return ProfileFile(ops={"verify": build_op(["tokens", "context"], rows, reference=True)})

    a = profile(lambda p: 1.0)
    slow = {p: 1.0 + 0.3 * rng.random() for p in pts}
    b = profile(lambda p: slow[p])
    (row,) = agreement(a, b)
    assert row.raw_max_abs_pct > 15 and row.raw_median_abs_pct > 5
    assert row.norm_max_abs_pct < 1e-9 and abs(row.norm_pct) < 1e-9
    # the fit is normalized too: B's fit predicts A's times at B's median reference speed
    scale = float(np.median([slow[p] for p in pts]))
    for p in pts:
        at = dict(zip(["tokens", "context"], p))
        assert b.ops["verify"].predict(**at) == pytest.approx(a.ops["verify"].predict(**at) * scale, rel=1e-6)


def test_some_ops_update_an_existing_profile(profiles, tmp_path):
    """--ops measures only the ops named and writes them into the profile file already
    there: its other ops stay as they were, and its provenance lists the update."""
    import dataclasses
    import shutil

    result, paths = profiles
    shutil.copy(paths["target"], tmp_path / paths["target"].name)
    spec = load_spec("tiny-cpu")
    grid = dataclasses.replace(TINY, idle_gaps_s=[0.0, 0.004])
    settings = compute.Settings(spec=spec, device="cpu", threads=1, grid=grid, seed=4, roles=("target",),
                                ops=("verify_idle",), extra={"command": "test update"})
    part = compute.calibrate(settings)
    assert set(part["target"].ops) == {"verify_idle"}
    (path,) = compute.save(part, spec, tmp_path, update=True)
    back = read_profile(path)
    assert set(back.ops) == set(compute.TARGET_OPS)
    assert back.ops["verify_idle"].rows == part["target"].ops["verify_idle"].rows
    assert back.ops["verify"].model_dump() == result["target"].ops["verify"].model_dump()
    (update,) = back.provenance["updates"]
    assert update["ops"] == ["verify_idle"] and update["command"] == "test update"
