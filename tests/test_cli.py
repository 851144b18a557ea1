"""The command line: help, the run directory, determinism by seed, analyze, check, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from starsim.cli import main
from starsim.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
REF = REPO / "scenarios" / "starsd_ref_n4.yaml"
SHORT = ["--set", "duration_s=30"]  # warm-up 10 s and cool-down 5 s leave 15 s measured
TABLES = ("rounds", "requests", "intervals")

SUMMARY_KEYS = {
    "draft_utilization", "draft_idle_gap_mean_s", "draft_idle_gap_p50_s", "draft_idle_gap_p99_s",
    "draft_idle_ratio_mean", "throughput_tokens_per_s", "mean_accepted_tokens", "rounds",
    "requests_completed", "ttft_mean_s", "tpot_mean_s", "draft_queue_wait_mean_s", "draft_kv_bytes_peak",
    "per_target", "provenance",
}
PER_TARGET_KEYS = {"tokens_per_s", "cycle_mean_s", "queue_wait_mean_s"}
PROVENANCE_KEYS = {"starsim_version", "seed", "scenario_hash", "wall_time_s", "events_simulated"}


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three short runs of the reference scenario: seed 0 twice, and seed 3."""
    base = tmp_path_factory.mktemp("runs")
    out = {"a": base / "a", "b": base / "b", "seed3": base / "seed3"}
    for key, d in out.items():
        extra = ["--set", "seed=3"] if key == "seed3" else []
        assert main(["run", str(REF), *SHORT, *extra, "--out", str(d)]) == 0
    return out


def summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "analyze", "check", "schema"):
        assert f"    {cmd} " in out, out


def test_no_command_prints_help(capsys):
    rc, out, _ = cli(capsys)
    assert rc == 2
    assert "run" in out and "analyze" in out


def test_run_directory(runs):
    d = runs["a"]
    for name in ("scenario.yaml", "summary.json", "meta.json", "trace.json", *(f"{t}.parquet" for t in TABLES)):
        assert (d / name).is_file(), name
    meta = json.loads((d / "meta.json").read_text())
    assert isinstance(meta, dict) and meta
    trace = json.loads((d / "trace.json").read_text())
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]


def test_summary_keys(runs):
    s = summary(runs["a"])
    assert SUMMARY_KEYS <= s.keys(), SUMMARY_KEYS - s.keys()
    assert len(s["per_target"]) == 4
    for p in s["per_target"]:
        assert PER_TARGET_KEYS <= p.keys()
    prov = s["provenance"]
    assert PROVENANCE_KEYS <= prov.keys()
    assert prov["seed"] == 0
    assert prov["events_simulated"] > 0 and prov["wall_time_s"] > 0
    assert 0 < s["draft_utilization"] <= 1
    assert s["rounds"] > 0 and s["throughput_tokens_per_s"] > 0


def test_scenario_yaml_round_trips(runs):
    # The written scenario is the resolved one: loading it gives the hash in the provenance.
    sc = load_scenario(runs["a"] / "scenario.yaml")
    assert sc.digest() == summary(runs["a"])["provenance"]["scenario_hash"]
    assert sc.duration_s == 30


def test_same_seed_same_results(runs):
    a, b = summary(runs["a"]), summary(runs["b"])
    del a["provenance"]["wall_time_s"], b["provenance"]["wall_time_s"]
    assert a == b
    for t in TABLES:
        fa, fb = runs["a"] / f"{t}.parquet", runs["b"] / f"{t}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(fa), pd.read_parquet(fb))
        assert fa.read_bytes() == fb.read_bytes(), t
    assert (runs["a"] / "scenario.yaml").read_bytes() == (runs["b"] / "scenario.yaml").read_bytes()
    assert (runs["a"] / "trace.json").read_bytes() == (runs["b"] / "trace.json").read_bytes()


def test_other_seed_other_results(runs):
    s = summary(runs["seed3"])
    assert s["provenance"]["seed"] == 3
    assert s["provenance"]["scenario_hash"] != summary(runs["a"])["provenance"]["scenario_hash"]
    for t in ("rounds", "requests"):
        a = pd.read_parquet(runs["a"] / f"{t}.parquet")
        c = pd.read_parquet(runs["seed3"] / f"{t}.parquet")
        assert not a.equals(c), t


def test_csv_tables(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = cli(capsys, "run", REF, *SHORT, "--csv", "--no-trace", "--out", out)
    assert rc == 0
    assert f"wrote {out}" in stdout
    for t in TABLES:
        assert (out / f"{t}.csv").is_file()
        assert not (out / f"{t}.parquet").exists()
    assert not (out / "trace.json").exists()
    rounds = pd.read_csv(out / "rounds.csv")
    assert len(rounds) > 0


def test_run_prints_table_and_json(capsys):
    rc, out, _ = cli(capsys, "run", REF, *SHORT)
    assert rc == 0
    assert "draft utilization" in out and "throughput" in out and "tok/s" in out
    rc, out, _ = cli(capsys, "run", REF, *SHORT, "--set", "seed=3", "--json")
    assert rc == 0
    s = json.loads(out)
    assert SUMMARY_KEYS <= s.keys()
    assert s["provenance"]["seed"] == 3


def test_analyze_compare(capsys):
    rc, out, err = cli(capsys, "analyze", REF, *SHORT, "--compare")
    assert rc == 0, err
    assert "closed form" in out and "simulated" in out and "closed vs sim" in out
    assert "draft utilization" in out


def test_analyze_over_n(capsys):
    rc, out, err = cli(capsys, "analyze", REF, *SHORT, "--n", "1-3")
    assert rc == 0, err
    rows = [ln.split() for ln in out.splitlines()]
    assert [r[0] for r in rows if r and r[0].isdigit()] == ["1", "2", "3"]


def test_analyze_json(capsys):
    rc, out, _ = cli(capsys, "analyze", REF, *SHORT, "--n", "1,2", "--json")
    assert rc == 0
    assert [r["n"] for r in json.loads(out)] == [1, 2]


def test_check_prints_resolved_yaml(capsys):
    rc, out, err = cli(capsys, "check", REF, "--set", "targets.0.count=8")
    assert rc == 0
    resolved = yaml.safe_load(out)
    assert resolved == load_scenario(REF, ["targets.0.count=8"]).to_dict()
    assert resolved["targets"][0]["count"] == 8
    assert "# ok: 8 targets" in err


def test_schema(capsys):
    rc, out, _ = cli(capsys, "schema")
    assert rc == 0
    schema = json.loads(out)
    assert {"draft", "targets", "devices"} <= schema["properties"].keys()


def test_scenario_hash_is_the_same_in_any_clone(tmp_path):
    """Files count by content, not by where the clone put them."""
    import shutil

    from conftest import REPO

    from starsim import load_scenario

    for d in ("a", "b"):
        shutil.copytree(REPO / "scenarios", tmp_path / d / "scenarios")
        shutil.copytree(REPO / "models" / "profiles", tmp_path / d / "models" / "profiles")
        shutil.copytree(REPO / "models" / "acceptance", tmp_path / d / "models" / "acceptance")
    a = load_scenario(tmp_path / "a" / "scenarios" / "real_cpu_n2.yaml")
    b = load_scenario(tmp_path / "b" / "scenarios" / "real_cpu_n2.yaml")
    assert a.draft.round_time.path != b.draft.round_time.path and a.digest() == b.digest()
    prof = tmp_path / "b" / "models" / "profiles" / "stdlib-pair.target.cpu-amd-epyc-2-logical.float32.yaml"
    prof.write_text(prof.read_text() + "\n# changed\n")
    assert load_scenario(tmp_path / "b" / "scenarios" / "real_cpu_n2.yaml").digest() != a.digest()
