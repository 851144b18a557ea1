"""Sweeps: expansion (grid, zip, bad input), running, resuming, local vs Ray, plotting."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml
from conftest import CONST_STAR, REPO

from starsim import simulate
from starsim.cli import main
from starsim.errors import ScenarioError
from starsim.sweep import load_sweep, run_sweep
from starsim.sweep.run import _scalars


def _files(tmp_path, sweep: dict, base: dict | None = None):
    sc = copy.deepcopy(base or CONST_STAR)
    sc.update(duration_s=4.0, warmup_s=0.5)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(sc))
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}))
    return f


SMALL = {"name": "small", "grid": {"targets.0.count": [1, 3]},
         "zip": [{"draft.time": [0.002, 0.004], "seed": [1, 2]}]}


def test_grid_and_zip_expand_in_order(tmp_path):
    sweep = load_sweep(_files(tmp_path, {"grid": {"a.x": [1, 2], "b": ["u", "v", "w"]},
                                         "zip": [{"c": [1, 2], "d": [10, 20]}]}))
    combos = sweep.combinations()
    assert len(combos) == 2 * 3 * 2
    assert combos[0] == {"a.x": 1, "b": "u", "c": 1, "d": 10}
    assert combos[1] == {"a.x": 1, "b": "u", "c": 2, "d": 20}  # the last axis varies fastest
    assert combos[-1] == {"a.x": 2, "b": "w", "c": 2, "d": 20}
    assert sweep.spec.fields == ["a.x", "b", "c", "d"]


@pytest.mark.parametrize("sweep, message", [
    ({"zip": [{"a": [1, 2], "b": [1]}]}, "equal lengths"),
    ({"grid": {"a": []}}, "axis 'a' has no values"),
    ({"grid": {"a": [1]}, "zip": [{"a": [2]}]}, "field 'a' is swept twice"),
    ({"grids": {"a": [1]}}, "unknown key"),
])
def test_bad_sweep_files(tmp_path, sweep, message):
    with pytest.raises(ScenarioError, match=message):
        load_sweep(_files(tmp_path, sweep))


def test_bad_field_path_names_the_point_before_anything_runs(tmp_path, capsys):
    f = _files(tmp_path, {"grid": {"targets.0.count": [1, 2], "targets.0.verfy_time": [0.01]}})
    sweep = load_sweep(f)
    with pytest.raises(ScenarioError) as e:
        sweep.points()
    text = str(e.value)
    assert str(f) in text and "targets.0.verfy_time: unknown key" in text and "point 0" in text
    assert main(["sweep", str(f), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "verfy_time" in err
    assert not (tmp_path / "out" / "points").exists()  # nothing ran
    f.write_text(yaml.safe_dump({"base": "missing.yaml"}))
    with pytest.raises(ScenarioError, match="scenario file not found"):
        load_sweep(f)


def test_a_sweep_table_holds_each_point_as_simulated(tmp_path):
    sweep = load_sweep(_files(tmp_path, SMALL))
    out = tmp_path / "out"
    table = run_sweep(sweep, out, jobs=1, progress=False)
    assert len(table) == 4 and list(table.columns[:4]) == ["targets.0.count", "draft.time", "seed", "point"]
    assert table["point"].tolist() == [0, 1, 2, 3]
    for p in sweep.points():
        row = table.iloc[p.index]
        direct = _scalars(simulate(p.scenario).summary)
        assert row["targets.0.count"] == p.values["targets.0.count"] and row["id"] == p.id
        for k in ("draft_utilization", "throughput_tokens_per_s", "rounds"):
            assert row[k] == direct[k]
    assert pd.read_parquet(out / "results.parquet").equals(table)


def test_resume_runs_only_what_is_missing(tmp_path, monkeypatch):
    import starsim.sweep.run as sweep_run

    sweep = load_sweep(_files(tmp_path, SMALL))
    out = tmp_path / "out"
    real, calls = sweep_run.run_point, []

    def crash_on_third(scenario, analytic=False, run_dir=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if interrupted mid-sweep
        return real(scenario, analytic, run_dir)

    monkeypatch.setattr(sweep_run, "run_point", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, jobs=1, progress=False)
    assert len(list((out / "points").glob("*.json"))) == 2
    said = []
    calls.clear()
    monkeypatch.setattr(sweep_run, "run_point", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    table = run_sweep(sweep, out, jobs=1, progress=False, say=said.append)
    assert len(calls) == 2 and "2 already done, 2 to run" in said[0]
    fresh = run_sweep(sweep, tmp_path / "fresh", jobs=1, progress=False)
    pd.testing.assert_frame_equal(table, fresh)


def test_process_pool_gives_the_same_table(tmp_path):
    sweep = load_sweep(_files(tmp_path, SMALL))
    one = run_sweep(sweep, tmp_path / "one", jobs=1, progress=False)
    pool = run_sweep(sweep, tmp_path / "pool", jobs=2, progress=False, keep_runs=True)
    pd.testing.assert_frame_equal(one, pool)
    assert all((tmp_path / "pool" / "runs" / i / "summary.json").is_file() for i in pool["id"])


def test_ray_gives_the_same_table(tmp_path):
    pytest.importorskip("ray")
    sweep = load_sweep(_files(tmp_path, SMALL))
    local = run_sweep(sweep, tmp_path / "local", jobs=1, progress=False)
    ray = run_sweep(sweep, tmp_path / "ray", ray="local", progress=False)
    pd.testing.assert_frame_equal(local, ray)
    doc = json.loads(next((tmp_path / "ray" / "points").glob("*.json")).read_text())
    assert doc["executor"] == "ray (local)"


def test_analytic_sweep_and_plot(tmp_path, capsys):
    f = _files(tmp_path, {"name": "an", "grid": {"targets.0.count": [1, 2, 4, 8],
                                                  "targets.0.link.latency_s": [0.001, 0.01]}})
    out = tmp_path / "out"
    assert main(["sweep", str(f), "--analytic", "--out", str(out), "--quiet"]) == 0
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 8 and table["draft_utilization"].between(0, 1).all() and "n_saturation" in table
    png = tmp_path / "u.png"
    assert main(["plot", str(out), "--x", "targets.0.count", "--y", "draft_utilization",
                 "--hue", "targets.0.link.latency_s", "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert main(["plot", str(out), "--x", "targets.0.count", "--y", "draft_utilisation"]) == 2
    err = capsys.readouterr().err
    assert "--y 'draft_utilisation': not a column" in err and "draft_utilization" in err


def test_shipped_sweep_has_enough_points():
    sweep = load_sweep(REPO / "scenarios" / "sweeps" / "n_latency_depth.yaml")
    assert len(sweep.combinations()) >= 100
    assert sweep.spec.fields == ["targets.0.link.latency_s", "draft.tree.depth", "targets.0.count",
                                 "devices.gpu.count"]
