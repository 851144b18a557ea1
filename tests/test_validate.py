"""`starsim validate`: the table's arithmetic on synthetic numbers, the hop breakdown on a
synthetic rounds table, and one small real sweep end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml
from conftest import CONST_STAR

from starsim.errors import StarsimError
from starsim.metrics import hop_means
from starsim.records import Recorder
from starsim.validate import METRICS, Validation, compare, components, mape, parse_sweep, real_spread

NAN = math.nan


def test_errors_are_prediction_minus_real_in_display_units():
    real = {"draft_utilization": 0.5, "throughput_tokens_per_s": 200.0, "ttft_mean_s": 0.010, "tpot_mean_s": None}
    sim = {"draft_utilization": 0.6, "throughput_tokens_per_s": 150.0, "ttft_mean_s": 0.012, "tpot_mean_s": 0.004}
    rows = {r["metric"]: r for r in compare(real, sim, {"draft_utilization": 0.45})}
    assert [r for r in rows] == [k for k, *_ in METRICS]
    u = rows["draft_utilization"]
    assert u["real"] == 50.0 and u["sim"] == pytest.approx(60.0) and u["unit"] == "%"
    assert u["sim_err"] == pytest.approx(10.0) and u["sim_err_pct"] == pytest.approx(20.0)
    assert u["analytic_err_pct"] == pytest.approx(-10.0)
    assert rows["throughput_tokens_per_s"]["sim_err_pct"] == pytest.approx(-25.0)
    assert rows["ttft_mean_s"]["real"] == pytest.approx(10.0) and rows["ttft_mean_s"]["sim_err"] == pytest.approx(2.0)
    assert rows["tpot_mean_s"]["sim_err"] is None  # nothing real to compare with
    assert rows["ttft_mean_s"]["analytic"] is None and rows["ttft_mean_s"]["analytic_err_pct"] is None


def test_mape_averages_absolute_percent_errors_over_points():
    p1 = {"metrics": compare({"draft_utilization": 0.5}, {"draft_utilization": 0.55}, None)}
    p2 = {"metrics": compare({"draft_utilization": 0.8}, {"draft_utilization": 0.6}, None)}
    m = mape([p1, p2], "sim")
    assert m["draft_utilization"] == pytest.approx((10.0 + 25.0) / 2)
    assert m["throughput_tokens_per_s"] is None
    assert mape([p1, p2], "analytic")["draft_utilization"] is None


def test_components_sum_to_the_round_time_difference():
    real = {"draft_s": 0.006, "verify_s": 0.010, "verify_wait_s": 0.0, "link_up_s": 0.0005, "link_down_s": 0.0005,
            "queue_s": 0.001, "parse_s": 0.0001, "serialize_s": 0.0001, "between_rounds_s": 0.0}
    sim = {**real, "draft_s": 0.004, "verify_s": 0.006, "queue_s": 0.001}
    rows = components(real, sim)
    assert rows[0]["component"] == "verify time" and rows[0]["diff_ms"] == pytest.approx(-4.0)
    assert rows[1]["component"] == "draft time" and rows[1]["share_pct"] == pytest.approx(100 * 2 / 6)
    assert sum(r["share_pct"] for r in rows) == pytest.approx(100.0)
    assert {r["component"] for r in rows if r["diff_ms"] == 0} >= {"queueing", "link"}


def test_hop_means_on_a_synthetic_rounds_table():
    rec = Recorder()
    # one target, one request, two rounds: hops 1,2,3,4,5,6,7,8 ms; next send 0.5 ms after the first ends
    t, rows = 0.0, []
    for r in range(2):
        ts = [t]
        for ms in range(1, 9):
            ts.append(ts[-1] + ms / 1e3)
        rows.append((0, 0, r, 0, *ts, 100, 3, 16, 4, 2, 3, 10, 20, 0))
        t = ts[-1] + 0.0005
    rows.append((0, 0, 2, -1, NAN, NAN, NAN, NAN, NAN, NAN, NAN, t, t + 0.01, 120, 0, 0, 0, 0, 1, 0, 0, 0))
    rec.rounds += rows
    records = rec.finish({"t_end": 1.0, "warmup_s": 0.0, "cooldown_s": 0.0, "window_s": 0.2, "targets": [],
                          "draft_engines": ["draft"]})
    h = hop_means(records)
    names = ["link_up_s", "parse_s", "queue_s", "draft_s", "serialize_s", "link_down_s", "verify_wait_s", "verify_s"]
    for ms, name in enumerate(names, start=1):
        assert h[name] == pytest.approx(ms / 1e3), name
    assert h["round_s"] == pytest.approx(36 / 1e3)
    assert h["between_rounds_s"] == pytest.approx(0.0005)  # the autoregressive row is not a speculative round


def test_sweep_spec_and_markdown():
    assert parse_sweep("targets.0.count=1,2, 4") == ("targets.0.count", ["1", "2", "4"])
    assert parse_sweep(None) == (None, [""])
    for bad in ("targets.0.count", "=1,2", "targets.0.count="):
        with pytest.raises(StarsimError, match="--sweep"):
            parse_sweep(bad)
    v = Validation("s", "targets.0.count", "real", [
        {"point": "targets.0.count=1",
         "metrics": compare({"draft_utilization": 0.5}, {"draft_utilization": 0.6}, None),
         "components": components({"draft_s": 0.002}, {"draft_s": 0.001})}])
    md = v.markdown()
    assert "| targets.0.count=1 | draft utilization | % | 50 | 60 | +20.0% |" in md
    assert "| draft utilization | 20 |" in md
    assert "| targets.0.count=1 | draft time | 2.000 | 1.000 | -1.000 | 100% |" in md


def test_real_spread_is_the_runs_coefficient_of_variation():
    runs = [{"draft_utilization": 0.5, "throughput_tokens_per_s": 100.0},
            {"draft_utilization": 0.7, "throughput_tokens_per_s": 100.0}]
    spread = real_spread(runs)
    assert spread["draft_utilization"] == pytest.approx(100 * 0.1 / 0.6)  # population sd / mean
    assert spread["throughput_tokens_per_s"] == 0.0 and spread["ttft_mean_s"] is None
    assert real_spread(runs[:1])["draft_utilization"] is None  # one run: no spread
    p = {"point": "base", "metrics": compare({"draft_utilization": 0.6}, {"draft_utilization": 0.66}, None),
         "real_spread_pct": spread, "components": []}
    v = Validation("s", None, "real", [p], repeat=2)
    md = v.markdown()
    assert "| base | draft utilization | % | 60 | 16.67% | 66 | +10.0% |" in md
    assert "| draft utilization | 10 |  | 16.67 |" in md  # MAPE beside the real runs' mean CV
    assert v.as_dict()["real_spread_pct"]["draft_utilization"] == pytest.approx(16.667, abs=1e-3)


pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_validate_a_small_real_sweep(tmp_path, quick_pair, capsys):
    from starsim.cli import main

    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["count"] = 1
    sc.update(max_requests=3, duration_s=60.0, warmup_s=0.0,
              workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 16},
              real={"pair": str(quick_pair), "emulate_link": False})
    f = tmp_path / "v.yaml"
    f.write_text(yaml.safe_dump(sc))
    out = tmp_path / "val"
    assert main(["validate", str(f), "--sweep", "targets.0.count=1,2", "--repeat", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| targets.0.count=2 | system throughput | tok/s |" in text and "MAPE over the points" in text
    assert "One real run per point" in text  # its error is stated without a spread: the table says so
    d = json.loads((out / "validation.json").read_text())
    assert [p["point"] for p in d["points"]] == ["targets.0.count=1", "targets.0.count=2"]
    assert d["mape_sim_pct"]["draft_utilization"] is not None
    for p in d["points"]:
        real = json.loads((out / p["point"] / "real" / "summary.json").read_text())
        row = next(r for r in p["metrics"] if r["metric"] == "throughput_tokens_per_s")
        assert row["real"] == pytest.approx(real["throughput_tokens_per_s"])  # the table reports the run
        sim = json.loads((out / p["point"] / "sim" / "summary.json").read_text())
        assert sim["provenance"]["source"] == "sim" and real["n_targets"] == int(p["point"][-1])
    assert (out / "validation.csv").read_text().startswith("point,metric,label,unit,real,sim,analytic")
    # each real run replayed on its own times beside the profile-based simulation, and drawn beside it
    assert d["replayed"] and d["mape_replay_pct"]["throughput_tokens_per_s"] is not None
    assert "| replay err |" in text and "Kolmogorov-Smirnov" in text
    for p in d["points"]:
        rp = json.loads((out / p["point"] / "replay" / "summary.json").read_text())
        assert rp["provenance"]["source"] == "replay" and p["idle_gaps"]["replay"]["ks"] is not None
    assert main(["report", str(out), "--format", "png", "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "targets.0.count=2/replay" in html and "targets.0.count=1/real" in html
    assert main(["validate", str(f), "--sweep", "targets.0.count"]) == 2
    assert "--sweep" in capsys.readouterr().err
    # repeated real runs: the table holds their mean, each run keeps its directory
    out2 = tmp_path / "val2"
    assert main(["validate", str(f), "--repeat", "2", "--speed", "none", "--out", str(out2), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    runs = [json.loads((out2 / "base" / r / "summary.json").read_text()) for r in ("real", "real-2")]
    row = next(r for r in d["points"][0]["metrics"] if r["metric"] == "draft_utilization")
    assert row["real"] == pytest.approx(50 * (runs[0]["draft_utilization"] + runs[1]["draft_utilization"]))
    assert d["repeat"] == 2 and d["points"][0]["real_spread_pct"]["draft_utilization"] is not None
    assert main(["validate", str(f), "--repeat", "0"]) == 2


def test_profile_times_follow_the_machine_speed_of_the_real_run():
    from conftest import REPO

    from starsim import load_scenario
    from starsim.validate import speed_overrides

    sc = load_scenario(REPO / "scenarios" / "real_cpu_n2.yaml")
    prof = sc.draft.round_time.file.provenance["reference_matmul_s"]
    then = (prof["before"] + prof["after"]) / 2
    threads = sc.draft.round_time.file.device["threads"]
    slow = {"provenance": {"reference_matmul_s": {"before": 2 * then, "after": 2 * then, "threads": threads}}}
    sets, ratios = speed_overrides(sc, slow)
    assert "draft.round_time" in ratios and "targets.0.verify_time" in ratios
    assert ratios["draft.round_time"] == pytest.approx(2.0)
    faster = load_scenario(REPO / "scenarios" / "real_cpu_n2.yaml", sets)
    assert faster.draft.round_time.mean(4, 100) == pytest.approx(2 * sc.draft.round_time.mean(4, 100))
    other = {"provenance": {"reference_matmul_s": {"before": then, "after": then, "threads": threads + 1}}}
    assert speed_overrides(sc, other) == ([], {})  # other threads: not comparable, left as is
    assert speed_overrides(sc, {"provenance": {}}) == ([], {})


def test_spot_checks_retime_each_profile_op_once():
    from conftest import REPO

    from starsim import load_scenario
    from starsim.validate import spot_overrides

    sc = load_scenario(REPO / "scenarios" / "real_cpu_n2.yaml")
    sets, ratios = spot_overrides(sc)
    # verify_time and decode_time share one profile op: timed once, the same ratio for both
    assert set(ratios) == {"draft.round_time", "targets.0.verify_time", "targets.0.prefill_time",
                           "targets.0.decode_time"}
    assert ratios["targets.0.verify_time"] == ratios["targets.0.decode_time"] and all(r > 0 for r in ratios.values())
    scaled = load_scenario(REPO / "scenarios" / "real_cpu_n2.yaml", sets)
    r = ratios["draft.round_time"]
    assert scaled.draft.round_time.mean(4, 100) == pytest.approx(r * sc.draft.round_time.mean(4, 100))


def test_spot_checks_retime_a_serving_targets_step():
    """A step cost fitted from a profile's step rows (calibrate compute) is re-timed like
    any profile op, and its scale follows the machine (the target's forward at batch)."""
    from conftest import REPO

    from starsim import load_scenario
    from starsim.validate import spot_overrides

    path = REPO / "scenarios" / "real_cpu_serving_n1.yaml"
    sc = load_scenario(path)
    sets, ratios = spot_overrides(sc)
    assert "targets.0.serving.step_time" in ratios and ratios["targets.0.serving.step_time"] > 0
    scaled = load_scenario(path, sets).targets[0].serving.step_time
    assert scaled.scale == pytest.approx(ratios["targets.0.serving.step_time"] * sc.targets[0].serving.step_time.scale)


def test_an_error_inside_the_real_runs_spread_is_named():
    """Issue 29: an error no wider than the real runs' own run-to-run spread is said to be
    noise, point by point; one wider is not."""
    from starsim.validate import Validation

    def row(metric, err):
        return {"metric": metric, "sim_err_pct": err}

    v = Validation(scenario="x", sweep_field="targets.0.count", acceptance="real", repeat=3, points=[
        {"point": "n=1", "metrics": [row("throughput_tokens_per_s", -3.0), row("draft_utilization", 12.0)],
         "real_spread_pct": {"throughput_tokens_per_s": 4.5, "draft_utilization": 2.0}},
        {"point": "n=2", "metrics": [row("throughput_tokens_per_s", 9.0)],
         "real_spread_pct": {"throughput_tokens_per_s": 1.0}},
    ])
    got = v.within_spread({"throughput_tokens_per_s", "draft_utilization"})
    assert got == ["n=1: system throughput"]


def test_profiles_from_another_machine_are_named_with_the_command_that_recalibrates(monkeypatch):
    """Issue 29: the shipped CPU profiles were measured on an AMD EPYC; on another machine,
    validate and execute say so, what it does to the comparison, and how to recalibrate."""
    from conftest import REPO

    import starsim.profile_fields as pf
    from starsim import load_scenario

    sc = load_scenario(REPO / "scenarios" / "real_cpu_serving_n1.yaml")
    monkeypatch.setattr(pf, "cpu_name", lambda: "cpu: AMD EPYC (2 logical)")
    assert pf.foreign_profiles(sc) == []  # measured here: nothing to say
    monkeypatch.setattr(pf, "cpu_name", lambda: "cpu: Intel(R) Xeon(R) (8 logical)")
    lines = pf.foreign_profiles(sc)
    assert len(lines) == 2  # the draft's profile file and the target's (its step included)
    draft = next(line for line in lines if line.startswith("draft.round_time, draft.batch.time"))
    assert "measured on 'cpu: AMD EPYC (2 logical)'" in draft and "Intel(R) Xeon(R)" in draft
    assert "starsim calibrate compute --spec stdlib-pair --device cpu --threads 1 --cpus 0 --roles draft" in draft
    target = next(line for line in lines if line.startswith("targets.0.verify_time"))
    assert "targets.0.serving.step_time" in target and "--cpus 1 --roles target" in target
    assert "starsim validate --calibrate" in draft


def test_validate_can_calibrate_here_first(tmp_path):
    """Issue 29: `validate --calibrate` re-times the ops the scenario uses, on each role's
    declared cores, and points its fields at the new files (here on the quick grid)."""
    from conftest import REPO

    import starsim.profile_fields as pf
    from starsim import load_scenario
    from starsim.calibrate.here import calibrate_here
    from starsim.profiles import read_profile

    path = REPO / "scenarios" / "real_cpu_declared_n2.yaml"
    sets, notes = calibrate_here(load_scenario(path), tmp_path, quick=True)
    assert notes == []
    new = dict(s.split(".path=") for s in sets)
    assert set(new) == {"draft.round_time", "targets.0.verify_time", "targets.0.prefill_time", "targets.0.decode_time"}
    draft, target = read_profile(new["draft.round_time"]), read_profile(new["targets.0.verify_time"])
    assert set(draft.ops) == {"draft_round"} and set(target.ops) == {"prefill", "verify"}  # only what is used
    assert draft.provenance["cpus"] == [0] and target.provenance["cpus"] == [1]  # where each role runs
    assert draft.device["name"] == pf.cpu_name() and draft.device["threads"] == 1
    sc = load_scenario(path, sets)
    assert pf.foreign_profiles(sc) == []
    assert sc.draft.round_time.file.ops["draft_round"].rows == draft.ops["draft_round"].rows
