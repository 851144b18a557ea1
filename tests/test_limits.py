"""Sizes a run is refused above (issue 16): decided when the scenario is checked, before any
work, each with one line that says the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from starsim import load_scenario, validate_scenario
from starsim.cli import main
from starsim.errors import ScenarioError
from starsim.scenario import MAX_BYTES_PER_TOKEN, MAX_DURATION_S, MAX_TREE_DEPTH, MAX_UNITS, MAX_WINDOWS
from starsim.sim.run import MAX_ROUNDS, check_work
from starsim.streams import MAX_CV

REF = Path(__file__).resolve().parent.parent / "scenarios" / "starsd_ref_n4.yaml"


@pytest.mark.parametrize("override, field, says", [
    ("targets.0.count=1000000000", "targets.0.count", f"less than or equal to {MAX_UNITS}"),
    ("devices.gpu.count=1000000", "devices.gpu.count", f"less than or equal to {MAX_UNITS}"),
    ("draft.tree.depth=1000000", "draft.tree.depth", f"less than or equal to {MAX_TREE_DEPTH}"),
    ("duration_s=1e12", "duration_s", f"at most {MAX_DURATION_S:g} s"),
    ("window_s=1e-300", "window_s", "at least 1e-06 s"),
    ("window_s=0.00001", "window_s", f"at most {MAX_WINDOWS:g}"),
    ("draft.time.cv=1e300", "draft.time.cv", f"less than or equal to {MAX_CV:g}"),
    ("targets.0.payload.hidden_bytes_per_token=" + "1" + "0" * 30, "targets.0.payload.hidden_bytes_per_token",
     f"less than or equal to {MAX_BYTES_PER_TOKEN}"),
])
def test_sizes_over_the_limits_exit_2_with_the_limit(capsys, override, field, says):
    assert main(["check", str(REF), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert f": {field}: " in err and says in err, err


def test_many_groups_count_together():
    data = yaml.safe_load(REF.read_text())
    data["targets"] = [{**data["targets"][0], "count": MAX_UNITS}] * 2
    with pytest.raises(ScenarioError) as e:
        validate_scenario(data, base_dir=REF.parent)
    assert f"{2 * MAX_UNITS} targets in all; at most {MAX_UNITS:,}" in str(e.value)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(top_k=st.integers(-5, 10**6), depth=st.integers(-5, 10**7), tokens=st.integers(-5, 10**7))
def test_any_tree_is_checked_at_once(top_k, depth, tokens):
    """The tree-size check stops as soon as it is past ``tokens`` (it summed top_k**i to depth:
    depth 1e6 hung), so every shape validates or fails, quickly."""
    try:
        sc = load_scenario(REF, {"draft.tree": {"top_k": top_k, "depth": depth, "tokens": tokens}})
    except ScenarioError as e:
        assert all(f.startswith("draft.tree") for f, _ in e.problems), e.problems
    else:
        t = sc.draft.tree
        assert t.depth <= t.tokens <= sum(t.top_k**i for i in range(1, t.depth + 1))


@pytest.mark.parametrize("ns, says", [("1-1000000000", "more than 10,000 target counts"),
                                      ("1,200000", "each at most 100,000")])
def test_analyze_n_is_bounded_before_the_table_is_built(capsys, ns, says):
    assert main(["analyze", str(REF), "--n", ns]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --n: ") and says in err and "\n" not in err, err


def test_a_sweep_of_too_many_points_is_refused(tmp_path, capsys):
    from starsim.sweep.sweep_file import MAX_POINTS

    axes = {f: list(range(1, 11)) for f in ("seed", "max_requests", "targets.0.count", "devices.gpu.count")}
    axes |= {"duration_s": [float(x) for x in range(100, 110)], "warmup_s": [0.0, 1.0] * 5}
    f = tmp_path / "big.yaml"
    f.write_text(yaml.safe_dump({"base": str(REF), "grid": axes}))
    out = tmp_path / "out"
    assert main(["sweep", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"makes 1,000,000 points; at most {MAX_POINTS:,}" in err.replace("make ", "makes "), err
    assert not out.exists()


@pytest.mark.parametrize("value", ["1e30", "-5"])
def test_trace_token_counts_out_of_range_name_their_line(tmp_path, value):
    from starsim.workload import load_azure_trace

    f = tmp_path / "t.csv"
    f.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,20\n"
                 f"2023-11-16 18:15:47.0,{value},20\n")
    with pytest.raises(ScenarioError) as e:
        load_azure_trace(f)
    assert "line 3: ContextTokens must be a token count in 0..10,000,000" in str(e.value)


@pytest.mark.parametrize("args, says", [
    (["run", str(REF), "--trace-s", "nan"], "argument --trace-s: must be a finite number, got 'nan'"),
    (["run", str(REF), "--trace-s", "-1"], "argument --trace-s: must be >= 0, got '-1'"),
    (["report", "nowhere", "--from", "inf"], "argument --from: must be a finite number"),
])
def test_number_flags_are_finite_and_in_range(capsys, args, says):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["run", str(REF), "--set", "duration_s=20", "--set", "warmup_s=1", "--set", "cooldown_s=1",
                 "--out", str(out), "--no-trace"]) == 0
    return out


@pytest.mark.parametrize("damage, says", [
    (lambda d: (d / "summary.json").write_text((d / "summary.json").read_text()[:100]), "summary.json: cannot read"),
    (lambda d: (d / "summary.json").write_text("[1, 2]"), "summary.json: expected a JSON object"),
])
@pytest.mark.parametrize("command", ["report", "acceptance"])
def test_a_damaged_run_directory_is_one_line(tmp_path, capsys, run_dir, damage, says, command):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    damage(d)
    capsys.readouterr()
    assert main([command, str(d), "--out", str(tmp_path / "out.file")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err


def test_a_broken_scenario_copy_does_not_stop_report_or_acceptance(tmp_path, capsys, run_dir):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    (d / "scenario.yaml").write_text("draft: [\n")
    assert main(["acceptance", str(d), "--out", str(tmp_path / "acc.yaml")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scenario.yaml was skipped" in err and "Traceback" not in err
    assert main(["report", str(d), "--out", str(tmp_path / "report")]) == 0


@pytest.mark.parametrize("args, says", [
    (["acceptance", "{run}", "--out", "{tmp}"], "is a directory; give the file to write"),
    (["sweep", "{sweep}", "--out", "{file}"], "exists and is not a directory"),
    (["run", str(REF), "--out", "{file}"], "exists and is not a directory"),
    (["plot", "{results}", "--x", "seed", "--y", "rounds", "--out", "{tmp}/x.json"], "an image is written as one of"),
])
def test_output_paths_are_checked_before_work(tmp_path, capsys, run_dir, args, says):
    (tmp_path / "afile").write_text("keep me")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": str(REF), "grid": {"seed": [1]}}))
    (tmp_path / "results.parquet").write_bytes(b"")
    fill = {"run": str(run_dir), "tmp": str(tmp_path), "sweep": str(sweep), "file": str(tmp_path / "afile"),
            "results": str(tmp_path / "results.parquet")}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err
    assert (tmp_path / "afile").read_text() == "keep me"


TINY = ["--set", "draft.time=1e-9", "--set", "targets.0.verify_time.value=1e-9", "--set", "targets.0.prefill_time=0",
        "--set", "targets.0.link.latency_s=0"]
CONST = REF.parent / "const_star.yaml"


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_horizon_too_full_of_rounds_is_refused_before_work(tmp_path, capsys, command):
    """Times of a nanosecond fill 200 s with 2e11 rounds (before, the run never ended); times
    of 0 s make the rate infinite. Both are one line that says the estimate and the limit."""
    out = ["--out", str(tmp_path / "run")] if command == "run" else []
    for times in (TINY, [t.replace("1e-9", "0") for t in TINY]):
        assert main([command, str(CONST), *times, *out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"at most {MAX_ROUNDS:,}" in err and "rounds" in err, err
        assert "warning" not in err
    assert not (tmp_path / "run").exists()


def test_the_work_estimate_is_the_rounds_the_simulator_runs():
    """check_work's closed-form count against the rounds a run records (random times, 4 targets)."""
    from starsim import simulate

    sc = load_scenario(REF, ["duration_s=60", "warmup_s=0", "cooldown_s=0"])
    est = check_work(sc)
    ran = simulate(sc).summary["rounds"]
    assert est == pytest.approx(ran, rel=0.05), (est, ran)


def test_yaml_reads_exponent_floats_without_a_dot(tmp_path):
    """1e-3 is a float (YAML 1.2), not the string PyYAML's YAML 1.1 makes of it."""
    sc = load_scenario(CONST, ["draft.time=4e-3", "duration_s=2E2"])
    assert sc.draft.time.mean() == 0.004 and sc.duration_s == 200.0
