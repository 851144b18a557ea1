"""``starsim calibrate import aiconfigurator``: GPU profiles priced from a measured kernel database."""

from __future__ import annotations

import builtins
import json
import math
import sys

import numpy as np
import pytest
import yaml

pytest.importorskip("aiconfigurator_core")

from starsim.calibrate import gpu_db  # noqa: E402
from starsim.cli import main  # noqa: E402
from starsim.models.specs import load_spec  # noqa: E402
from starsim.profiles import read_profile  # noqa: E402

SPEC = "qwen3-8b-qwen3-06b"


@pytest.fixture(scope="module")
def h100():
    """Both roles of the Qwen3 pair on H100 SXM (vLLM tables), default grid."""
    profiles, warns = gpu_db.import_profiles(gpu_db.Settings(spec=load_spec(SPEC), system="h100_sxm"))
    return profiles, warns


def test_every_op_priced_fitted_and_sourced(h100):
    profiles, warns = h100
    assert not warns  # the pair's heads and contexts lie inside the vLLM tables
    assert set(profiles["target"].ops) == set(gpu_db.TARGET_OPS)
    assert set(profiles["draft"].ops) == set(gpu_db.DRAFT_OPS)
    for prof in profiles.values():
        prov = prof.provenance
        assert prov["package"] == "aiconfigurator-core" and prov["backend_version"] == "0.24.0"
        assert prov["system"] == "h100_sxm" and prov["per_forward_overhead_s"] == 0
        assert any("H100" in d for d in prov["coverage"]["measured_on"])  # the GPU the rows came from
        for name, op in prof.ops.items():
            assert op.fit is not None and math.isfinite(op.fit.cv_mape_pct), name  # cross-validated error
            assert op.fit.cv_mape_pct < 15, (name, op.fit.cv_mape_pct)
            assert 0.5 < prov["measured_fraction"][name] <= 1.0, name


def test_verify_of_one_token_is_a_decode_step(h100):
    target = h100[0]["target"]
    verify, decode = target.ops["verify"], target.ops["decode"]
    rows = {(r[0], r[1]): r[2] for r in verify.rows}
    for ctx, dec_s, *_ in decode.rows:
        assert rows[1.0, ctx] == pytest.approx(dec_s, rel=1e-9)  # priced the same way, exactly
        fit_v, fit_d = verify.predict(tokens=1, context=ctx), decode.predict(context=ctx)
        assert abs(fit_v - fit_d) / fit_d < 0.05, ctx  # and the fits agree within 5%


def test_lm_head_priced_for_every_tree_token():
    spec = load_spec(SPEC)
    with_head = gpu_db.Pricer(gpu_db.spec_refs(spec, _tmp())["target"], "h100_sxm", "vllm", "0.24.0", 1, "bfloat16")
    all_logits = with_head.forward(64, 1024)
    last_only = with_head.forward(64, 1024, logits=1)
    # 151936 x 4096 LM head at 64 rows vs 1 row: at least some tens of microseconds more
    assert all_logits.s - last_only.s > 2e-5


def test_fitted_times_monotone_in_tokens_and_context(h100):
    for prof in h100[0].values():
        for name, op in prof.ops.items():
            assert all(c >= 0 for c in op.fit.coef), name
            lo = {k: v[0] for k, v in op.range.items()}
            hi = {k: v[1] for k, v in op.range.items()}
            for k in op.inputs:
                xs = np.linspace(lo[k], hi[k], 7)
                ys = [op.predict(**{**lo, k: x}) for x in xs]
                assert all(b >= a - 1e-15 for a, b in zip(ys, ys[1:])), (name, k)


def test_overhead_is_per_forward_and_recorded():
    spec = load_spec(SPEC)
    g = gpu_db.QUICK
    base, _ = gpu_db.import_profiles(gpu_db.Settings(spec=spec, system="h200_sxm", grid=g))
    more, _ = gpu_db.import_profiles(gpu_db.Settings(spec=spec, system="h200_sxm", grid=g, overhead_s=1e-4))
    for op, per_call in (("verify", 1), ("decode", 1)):
        a, b = base["target"].ops[op], more["target"].ops[op]
        assert np.allclose(b.column("median_s") - a.column("median_s"), per_call * 1e-4)
    a, b = base["draft"].ops["draft_round"], more["draft"].ops["draft_round"]
    assert np.allclose(b.column("median_s") - a.column("median_s"), spec.tree.depth * 1e-4)
    assert more["target"].provenance["per_forward_overhead_s"] == 1e-4
    assert more["draft"].ops["draft_round"].fixed["per_forward_overhead_s"] == 1e-4


def test_eagle_head_prices_its_fc_and_the_targets_lm_head():
    spec = load_spec("vicuna7b-eagle")
    refs = gpu_db.spec_refs(spec, _tmp())
    head = gpu_db.Pricer(refs["draft"], "a100_sxm", "trtllm", "1.0.0", 1, "bfloat16")
    target = gpu_db.Pricer(refs["target"], "a100_sxm", "trtllm", "1.0.0", 1, "bfloat16")
    assert head.fc_json is not None and target.fc_json is None
    one_layer, full = head.decode(512).s, target.decode(512).s
    assert 0.02 < one_layer / full < 0.2  # one of 32 layers plus the LM head and fc


def test_cli_writes_profiles_a_scenario_uses(tmp_path, capsys):
    rc = main(["calibrate", "import", "aiconfigurator", "--spec", SPEC, "--system", "h100_sxm", "--grid", "quick",
               "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "CV MAPE" in out and "measured rows" in out and "decode_time" in out
    target = tmp_path / f"{SPEC}.target.h100_sxm-vllm-tp1.bfloat16.yaml"
    draft = tmp_path / f"{SPEC}.draft.h100_sxm-vllm-tp1.bfloat16.yaml"
    prof = read_profile(target)
    assert prof.provenance["command"].startswith("starsim calibrate import aiconfigurator --spec")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"""
name: gpu-smoke
seed: 1
duration_s: 20
warmup_s: 1
cooldown_s: 1
devices:
  d: {{type: H100}}
  g: {{type: H100, count: 2}}
draft:
  device: d
  round_time: {{kind: profile, path: {draft}, op: draft_round}}
  tree: {{top_k: 10, depth: 5, tokens: 59}}
targets:
  - count: 2
    device: g
    verify_time: {{kind: profile, path: {target}, op: verify}}
    prefill_time: {{kind: profile, path: {target}, op: prefill}}
    decode_time: {{kind: profile, path: {target}, op: decode}}
acceptance: {{kind: marginal, curve: [0.8, 0.6, 0.45, 0.3, 0.2]}}
workload: {{kind: closed, prompts: 8, prompt_tokens: 100, output_tokens: 200, repeat: true}}
""")
    assert main(["run", str(scenario), "--json"]) == 0
    assert '"draft_utilization"' in capsys.readouterr().out
    # the target's serving step, beside its profile: a serving target prices its steps with it
    step = tmp_path / f"{SPEC}.target.h100_sxm-vllm-tp1.bfloat16.step.yaml"
    doc = yaml.safe_load(step.read_text())
    assert doc["provenance"]["fit"]["composed_step_mape_pct"] < 5 and doc["provenance"]["measured_fraction"] > 0.5
    serving = f"    serving: {{max_seqs: 8, step_time: {{path: {step}}}}}"
    text = scenario.read_text().replace("    decode_time: {", serving + "\n    decode_time: {")
    text = text.replace("tree: {top_k: 10, depth: 5, tokens: 59}", "tree: {top_k: 10, depth: 5, tokens: 59}\n  batch: "
                        f"{{time: {{kind: profile, path: {draft}, op: draft_batched}}}}")
    scenario.write_text(text.replace("repeat: true", "repeat: true, concurrency: 8"))
    assert main(["run", str(scenario), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["serving"]["batch_size_p50"] == 8 and summary["tpot_mean_s"] > 0


def test_step_cost_fits_the_estimator():
    """The step cost's parts and the composed step against the estimator's own calls."""
    from starsim.calibrate import gpu_step
    from starsim.scenario import StepTime

    spec = gpu_db.bundled_spec("meta-llama/Meta-Llama-3.1-8B", "eagle")
    pricer = gpu_db.Pricer(gpu_db.spec_refs(spec, _tmp())["target"], "h100_sxm", "vllm", "0.24.0", 1, "bfloat16")
    cost = gpu_step.step_cost(pricer)
    fit = cost["fit"]
    assert fit["composed_step_mape_pct"] < 5 and fit["logits_mape_pct"] < 10 and fit["decode_attention_mape_pct"] < 15
    st = StepTime(**cost["step_time"])
    from starsim.serving import tree_shape

    mean = st.mean_fn()
    one, many = mean(tree_shape(1, 1024)), mean(tree_shape(1, 1024).times(64))
    assert 0.004 < one < many < 4 * one  # a batch of 64 decodes costs far less than 64 steps of one
    dense = st.dense()
    assert dense(1) == pytest.approx(cost["step_time"]["dense_table"][0][1]) and dense(20000) > dense(16384)


def test_cli_list(capsys):
    assert main(["calibrate", "import", "aiconfigurator", "--list"]) == 0
    out = capsys.readouterr().out
    for want in ("h100_sxm", "h200_sxm", "a100_sxm", "vllm", "Qwen/Qwen3-8B", "meta-llama/Meta-Llama-3.1-70B",
                 "--spec NAME", SPEC, "vicuna7b-eagle", "--target NAME --draft NAME"):
        assert want in out


def test_trees_as_an_axis_one_draft_profile_each(tmp_path, capsys):
    """--tree prices the draft's rounds for other trees (several in one call), each profile
    named and fixed to its tree, the target once; a scenario on one of them runs, and the
    snippet carries the tree the profile requires."""
    rc = main(["calibrate", "import", "aiconfigurator", "--spec", SPEC, "--system", "h100_sxm", "--grid", "quick",
               "--out", str(tmp_path), "--tree", "4,4,20;10,5,59", "--tree", "6,3,18"])
    assert rc == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert names == sorted([f"{SPEC}.target.h100_sxm-vllm-tp1.bfloat16.yaml",
                            f"{SPEC}.target.h100_sxm-vllm-tp1.bfloat16.step.yaml",  # its serving step, once
                            f"{SPEC}.draft.h100_sxm-vllm-tp1.bfloat16.yaml",  # the spec's own tree: no tag
                            f"{SPEC}.draft.h100_sxm-vllm-tp1-tree4-4-20.bfloat16.yaml",
                            f"{SPEC}.draft.h100_sxm-vllm-tp1-tree6-3-18.bfloat16.yaml"])
    small = read_profile(tmp_path / f"{SPEC}.draft.h100_sxm-vllm-tp1-tree4-4-20.bfloat16.yaml")
    big = read_profile(tmp_path / f"{SPEC}.draft.h100_sxm-vllm-tp1.bfloat16.yaml")
    assert dict(small.ops["draft_round"].fixed["tree"]) == {"top_k": 4, "depth": 4, "tokens": 20}
    assert "--tree 4,4,20" in small.provenance["command"]
    assert small.ops["draft_round"].predict(tokens=20, context=512, depth=4) < big.ops["draft_round"].predict(
        tokens=59, context=512, depth=5)  # fewer levels and nodes: a cheaper round
    assert "tree: {top_k: 4, depth: 4, tokens: 20}" in out and "tree: {top_k: 6, depth: 3, tokens: 18}" in out


def test_bundled_configs_pair_without_a_spec_file(tmp_path, capsys):
    rc = main(["calibrate", "import", "aiconfigurator", "--target", "Qwen/Qwen3-8B", "--draft", "eagle",
               "--system", "h200_sxm", "--grid", "quick", "--roles", "draft", "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("*.yaml")
    assert path.name == "qwen3-8b-eagle.draft.h200_sxm-vllm-tp1.bfloat16.yaml"
    prof = read_profile(path)
    assert prof.model["kind"] == "eagle" and "--target Qwen/Qwen3-8B --draft eagle" in prof.provenance["command"]
    assert "tree: {top_k: 10, depth: 5, tokens: 59}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--spec", SPEC, "--system", "h900_sxm"], "--system 'h900_sxm': unknown"),
    (["--spec", SPEC, "--system", "h100_sxm", "--backend", "tgi"], "--backend 'tgi': expected one of"),
    (["--spec", "no-such-pair", "--system", "h100_sxm"], "no such model spec"),
    (["--spec", SPEC, "--system", "h100_sxm", "--backend-version", "9.9"], "not a queryable version"),
    (["--spec", SPEC, "--system", "a100_sxm", "--dtype", "fp8", "--grid", "quick"], "cannot be priced"),
    (["--spec", SPEC, "--system", "h100_sxm", "--tp", "3"], "--tp: expected a power of two"),
    (["--spec", SPEC, "--system", "h100_sxm", "--overhead-us", "-5"], "--overhead-us: expected"),
    (["--spec", SPEC], "--system: required"),
    ([], "--spec (or --target and --draft) and --system: required"),
    (["--target", "Qwen/Qwen3-8B", "--system", "h100_sxm"], "--target and --draft go together"),
    (["--spec", SPEC, "--target", "Qwen/Qwen3-8B", "--draft", "eagle", "--system", "h100_sxm"], "not both"),
    (["--target", "Qwen/Qwen3-8X", "--draft", "eagle", "--system", "h100_sxm"], "did you mean Qwen/Qwen3-8B"),
    (["--spec", SPEC, "--system", "h100_sxm", "--tree", "4,4,400"], "--tree 4,4,400: tokens=400 exceeds the 340"),
    (["--spec", SPEC, "--system", "h100_sxm", "--tree", "4,4"], "--tree: expected TOP_K,DEPTH,TOKENS"),
])
def test_bad_input_one_line_exit_2(argv, msg, capsys):
    assert main(["calibrate", "import", "aiconfigurator", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and msg in err, err


def test_missing_extra_one_line_exit_2(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_package(name, *a, **kw):
        if name.startswith("aiconfigurator_core"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_package)
    for mod in [m for m in sys.modules if m.startswith("aiconfigurator_core")]:
        monkeypatch.delitem(sys.modules, mod)
    assert main(["calibrate", "import", "aiconfigurator", "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "pip install -e '.[gpu-db]'" in err


def _tmp():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="starsim-test-aic-"))


def _published():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "analysis" / "published_speedups.py"
    spec = importlib.util.spec_from_file_location("published_speedups", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("published_speedups", mod)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["published_speedups"])
    return sys.modules["published_speedups"]


def test_published_acceptance_has_the_published_mean():
    ps = _published()
    for tau, depth in ((3.94, 5), (4.98, 6), (4.16, 6)):
        a = ps.geometric_alpha(tau, depth)
        assert 1 + sum(a ** j for j in range(1, depth + 1)) == pytest.approx(tau, rel=1e-9)
    with pytest.raises(ValueError):
        ps.geometric_alpha(7.0, 5)  # more than depth + 1 tokens per round cannot be


def test_published_row_simulates_a_speedup(tmp_path):
    ps = _published()
    row = next(r for r in ps.ROWS if r.model.startswith("Vicuna") and r.tree == ps.TREE_EAGLE)
    r = ps.run_row(row, 0.0, tmp_path)
    # the simulated tokens per round are the published ones, and a speedup is below them
    assert r["tokens_per_round"] == pytest.approx(row.tau, rel=0.03)
    assert 1.0 < r["speedup"] < row.tau
    # the same profile with no overhead: a round costs draft + verify, the decode step less than a verify
    assert r["decode_ms"] < r["verify_ms"]


@pytest.fixture(scope="module")
def qwen_target():
    ref = gpu_db.spec_refs(load_spec(SPEC), _tmp())["target"]
    return gpu_db.Pricer(ref, "h100_sxm", "vllm", "0.24.0", 1, "bfloat16")


def test_forward_prices_hold_for_any_shape(qwen_target):
    """For any tree size, context and batch: a verify costs at least a decode step at the same context,
    its measured part never exceeds it, a batch costs at least one sequence's forward, and logits for
    the last token only cost no more than for every token."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(t=st.integers(1, 256), c=st.integers(1, 16384), b=st.integers(1, 16))
    def check(t, c, b):
        one = qwen_target.forward(t, c)
        assert math.isfinite(one.s) and 0 <= one.measured_s <= one.s + 1e-15
        assert one.s >= qwen_target.decode(c).s * (1 - 1e-9)
        assert qwen_target.forward(t, c, batch=b).s >= one.s * (1 - 1e-9)
        # the LM head over fewer rows: no dearer, but for the measured GEMM table's own noise at tiny
        # row counts (1 row priced 0.1% above 3 rows), hence 1%
        assert qwen_target.forward(t, c, logits=1).s <= one.s * 1.01

    check()
