"""`starsim calibrate compute` times a serving target's whole engine steps and fits its
step-cost file (``<target profile>.step.yaml``, what ``serving.step_time: {path: ...}`` reads).

One quick calibration of the tiny spec's step points (``--ops step``, the quick grid); no
timing is asserted, only that the file is written in the import's format, loads, prices a
bigger batch higher and records its fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from starsim.calibrate import compute  # noqa: E402
from starsim.cli import main  # noqa: E402
from starsim.models.specs import load_spec  # noqa: E402
from starsim.profiles import ProfileFile, build_op, read_profile, refit  # noqa: E402
from starsim.scenario import StepTime  # noqa: E402
from starsim.serving import tree_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMPORTED = REPO / "models" / "profiles" / "qwen3-8b-qwen3-06b.target.h100_sxm-vllm-tp1.bfloat16.step.yaml"


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """(profile path, step-cost file path, what the command printed)."""
    out = tmp_path_factory.mktemp("step")
    buf = io.StringIO()  # capsys is per test; the calibration runs once per module
    with contextlib.redirect_stdout(buf):
        rc = main(["calibrate", "compute", "--spec", "tiny-cpu", "--grid", "quick", "--threads", "1", "--roles",
                   "target", "--ops", "step", "--quiet", "--out", str(out)])
    assert rc == 0
    (profile,) = out.glob("*.float32.yaml")
    return profile, profile.with_name(profile.name.replace(".yaml", ".step.yaml")), buf.getvalue()


def test_step_file_written_beside_the_profile_in_the_import_format(step):
    profile, path, printed = step
    assert path.is_file() and f"serving step: {path}" in printed and "step_time: {path:" in printed
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == list(yaml.safe_load(IMPORTED.read_text()))  # format, kind, model, device, provenance, ...
    assert doc["kind"] == "step" and doc["model"]["spec"] == "tiny-cpu" and doc["model"]["role"] == "target"
    assert doc["kv"]["bytes_per_token"] == 2 * 6 * 4 * 64 * 4 and doc["kv"]["capacity_tokens"] > 0  # float32 KV
    prov = doc["provenance"]
    assert prov["method"].startswith("measured on cpu: ") and "back to back" in prov["method"]
    assert prov["command"].startswith("starsim calibrate") and prov["threads"] == 1
    assert prov["dtype"] == "float32" and prov["grid"]["tokens"] == [1, 17]
    fit = prov["fit"]
    assert fit["mape_pct"] >= 0 and fit["held_out_points"] == 1 and fit["held_out_mape_pct"] >= 0
    # every point measured, and the profile keeps each one's raw row
    rows = prov["points"]["rows"]
    prof = read_profile(profile)
    assert set(prof.ops) == {"step"} and prof.ops["step"].fit is None and "ref_s" in prof.ops["step"].columns
    assert sorted(tuple(r[:5]) for r in rows) == sorted(tuple(int(v) for v in r[:5]) for r in prof.ops["step"].rows)
    assert sum(r[-1] for r in rows) == fit["held_out_points"] and len(rows) == fit["points"] + fit["held_out_points"]
    assert all(r[5] > 0 for r in rows)
    assert refit(prof).ops["step"] == prof.ops["step"]  # kept as measured


def test_step_file_prices_steps_and_loads_in_a_scenario(step, tmp_path, capsys):
    _, path, _ = step
    fields = yaml.safe_load(path.read_text())["step_time"]
    assert all(v >= 0 for v in fields.values())
    st = StepTime(path=str(path))
    assert st.overhead_s == fields["overhead_s"] and st.weights_s == 0 and st.dense_table is None
    mean = st.mean_fn()
    costs = [mean(tree_shape(17, 64).times(b)) for b in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(costs, costs[1:])), costs
    sc = yaml.safe_load((REPO / "scenarios" / "serving_const.yaml").read_text())
    sc["targets"][0]["serving"]["step_time"] = {"path": str(path)}
    scenario = tmp_path / "serving.yaml"
    scenario.write_text(yaml.safe_dump(sc, sort_keys=False))
    assert main(["check", str(scenario)]) == 0
    assert "# ok: 4 targets" in capsys.readouterr().err


def test_ops_selects_or_leaves_out_the_step(capsys):
    spec = load_spec("tiny-cpu")
    jobs = compute._jobs(compute.Settings(spec=spec, grid=compute.QUICK), "target", spec.tree)
    keys = [key for op, key, _ in jobs if op == "step"]
    fit, held = compute.step_points(compute.QUICK, spec.tree)
    assert keys == fit + held and (0, 0, 0, 32, 16) in fit and held == [(3, 17, 32, 16, 0)]
    assert len(fit) == len(set(fit)) == 2 * 2 * 2 * 2 + 1  # batches x tokens x contexts x chunks, and a chunk alone
    without = compute.Settings(spec=spec, grid=compute.QUICK, ops=compute.TARGET_OPS)
    assert not [op for op, _, _ in compute._jobs(without, "target", spec.tree) if op == "step"]
    # a grid without step axes (a custom one, as before) times no step
    assert not compute.step_points(dataclasses.replace(compute.QUICK, step_batches=[]), spec.tree)[0]
    for argv, msg in [
        (["--roles", "draft", "--ops", "step"], "--ops: step not among the ops of --roles draft"),
        (["--roles", "target", "--ops", "steps"], "--ops: steps not among the ops of --roles target"),
    ]:
        assert main(["calibrate", "compute", "--spec", "tiny-cpu", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and msg in err, (argv, err)


def test_fit_recovers_known_step_costs():
    """Rows priced by known fields (no timing): the fit gives them back on and off the grid,
    and an interrupted run's few rows give no file."""
    true = StepTime(overhead_s=5e-3, per_token_s=1e-4, per_logit_token_s=4e-5, per_seq_s=2e-4, per_kv_token_s=1e-6,
                    per_attn_s=2e-7).mean_fn()
    fit, held = compute.step_points(compute.GRIDS["cpu"], load_spec("tiny-cpu").tree)
    rows = [(*k, true(compute.step_shape(*k)), 0.0, 0.0, 1, 1e-3) for k in fit + held]
    op = build_op(compute.OP_INPUTS["step"], rows, fixed={"held_out": [list(k) for k in held]}, fit=False,
                  reference=True)
    cost = compute.fit_step(op)
    assert cost["fit"]["mape_pct"] < 0.1 and cost["fit"]["held_out_mape_pct"] < 0.1
    assert cost["fit"]["points"] == len(fit) and cost["fit"]["held_out_points"] == len(held) == 4
    few = build_op(compute.OP_INPUTS["step"], rows[:5], fit=False, reference=True)
    assert compute.fit_step(few) is None
    assert compute.step_file(ProfileFile(ops={"step": few})) is None and compute.step_file(ProfileFile()) is None
