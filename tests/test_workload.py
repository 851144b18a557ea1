"""Workload loaders, the shipped samples and scenarios, and the real public data when present."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import starsim
from starsim.analytic import analyze
from starsim.workload import load_azure_trace, load_lengths_csv, load_prompts_jsonl

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "traces"
SCENARIOS = REPO / "scenarios"
SHARED = REPO.parent / "shared"
REAL_AZURE_CONV = SHARED / "traces" / "azure_llm_2023_conv.csv"
REAL_MT_BENCH = SHARED / "data" / "mt_bench_questions.jsonl"

SCENARIO_FILES = sorted(SCENARIOS.glob("*.yaml"))
SHORT = {"duration_s": 20, "warmup_s": 2, "cooldown_s": 0}


def _make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", TRACES / "make_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- shipped samples


def test_mtbench_like_lengths_loads():
    pairs = load_lengths_csv(TRACES / "mtbench_like_lengths.csv")
    assert len(pairs) == 80
    prompts, outputs = np.array(pairs).T
    assert prompts.min() >= 1 and outputs.min() >= 1
    assert outputs.max() <= 1024  # the generation cap the generator applies
    assert 50 <= prompts.mean() <= 200 and 150 <= outputs.mean() <= 600  # plausible chat lengths


def test_azure_like_sample_loads():
    df = load_azure_trace(TRACES / "azure_like_sample.csv")
    assert 250 <= len(df) <= 350
    t = df["t"].to_numpy()
    assert t[0] == 0.0
    assert np.all(np.diff(t) > 0)
    assert (df["prompt_tokens"] >= 1).all() and (df["output_tokens"] >= 1).all()


def test_azure_like_sample_has_the_upstream_format():
    raw = (TRACES / "azure_like_sample.csv").read_bytes()
    assert not raw.endswith(b"\n")  # like upstream: CRLF, no newline after the last row
    lines = raw.decode("ascii").split("\r\n")
    assert lines[0] == "TIMESTAMP,ContextTokens,GeneratedTokens"
    row = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{7},\d+,\d+$")
    assert all(row.match(line) for line in lines[1:])


def test_samples_regenerate_byte_identically():
    for name, data in _make_samples().render().items():
        assert (TRACES / name).read_bytes() == data, f"traces/{name} differs from make_samples.py's output"


# --------------------------------------------------------------------------- trace replay and lengths files


def test_trace_replay_records_every_request():
    sc = starsim.load_scenario(SCENARIOS / "starsd_trace_azure.yaml")
    w = sc.workload
    res = starsim.simulate(sc)
    trace = load_azure_trace(w.path)
    req = res.requests.sort_values("request")
    assert len(req) == len(trace)
    assert req["request"].tolist() == list(range(len(trace)))
    assert np.isfinite(req["t_finish"]).all()  # no duration_s: the replay runs to the end
    assert res.summary["requests_unfinished"] == 0
    np.testing.assert_allclose(req["t_arrival"].to_numpy(), trace["t"].to_numpy() * w.time_scale, atol=1e-9)
    assert req["output_tokens"].max() <= w.max_output_tokens
    assert req["prompt_tokens"].max() <= w.max_prompt_tokens
    np.testing.assert_array_equal(
        req["output_tokens"].to_numpy(), np.minimum(trace["output_tokens"].to_numpy(), w.max_output_tokens)
    )


def test_trace_replay_start_row_and_max_rows():
    sc = starsim.load_scenario(
        SCENARIOS / "starsd_trace_azure.yaml", {"workload.start_row": 100, "workload.max_rows": 50}
    )
    res = starsim.simulate(sc)
    trace = load_azure_trace(sc.workload.path).iloc[100:150]
    req = res.requests.sort_values("request")
    assert len(req) == 50
    assert req["t_arrival"].iloc[0] == 0.0
    np.testing.assert_allclose(
        req["t_arrival"].to_numpy(), (trace["t"].to_numpy() - trace["t"].iloc[0]) * sc.workload.time_scale, atol=1e-9
    )


def test_lengths_file_drives_the_closed_loop():
    sc = starsim.load_scenario(SCENARIOS / "starsd_ref_mtbench_lengths.yaml", SHORT)
    pairs = load_lengths_csv(TRACES / "mtbench_like_lengths.csv")
    req = starsim.simulate(sc).requests
    for target, rows in req.sort_values("t_start").groupby("target"):
        # each target walks the file's rows in order, from the first
        got = list(zip(rows["prompt_tokens"], rows["output_tokens"]))
        assert got == pairs[: len(got)], f"target {target}"


# --------------------------------------------------------------------------- shipped scenarios


def test_scenarios_are_shipped():
    names = {p.name for p in SCENARIO_FILES}
    for want in (
        "starsd_ref_n1.yaml", "starsd_ref_n2.yaml", "starsd_ref_n4.yaml", "starsd_ref_n8.yaml",
        "starsd_ref_bursty.yaml", "starsd_hetero.yaml", "baseline_one_for_one_n4.yaml",
        "baseline_autoregressive_n4.yaml", "starsd_open_poisson.yaml", "starsd_trace_azure.yaml",
        "const_star.yaml",
    ):
        assert want in names


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_validates(path):
    sc = starsim.load_scenario(path)
    assert sc.n_targets >= 1


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_simulates_briefly(path):
    sc = starsim.load_scenario(path, SHORT)
    res = starsim.simulate(sc)
    req = res.requests
    assert len(req) >= 1
    assert req["request"].is_unique
    assert res.summary["throughput_tokens_per_s"] > 0


def test_closed_loop_pauses_keep_request_ids_unique():
    """With ``workload.pause``, a target must keep the request id it took before pausing,
    even when other targets take requests during its pause."""
    sc = starsim.load_scenario(SCENARIOS / "starsd_ref_bursty.yaml", {**SHORT, "draft.kv_bytes_per_token": 0})
    req = starsim.simulate(sc).requests
    dup = req[req["request"].duplicated(keep=False)].sort_values("request")
    assert dup.empty, f"duplicate request ids:\n{dup[['request', 'target', 't_start']].head()}"


def test_ref_family_differs_only_in_count():
    for n in (1, 2, 8):
        base = starsim.load_scenario(SCENARIOS / "starsd_ref_n4.yaml").to_dict()
        other = starsim.load_scenario(SCENARIOS / f"starsd_ref_n{n}.yaml").to_dict()
        assert other["targets"][0]["count"] == n and other["devices"]["gpu"]["count"] == n
        for d in (base, other):
            d.pop("name"), d.pop("description")
            d["targets"][0].pop("count"), d["devices"]["gpu"].pop("count")
        assert other == base, f"starsd_ref_n{n}.yaml"


def test_scenario_reference_has_every_field_description():
    """scenarios/README.md documents every field with the schema's own description text."""
    from starsim import acceptance, distributions, scenario

    doc = (SCENARIOS / "README.md").read_text()
    models = [
        scenario.Scenario, scenario.Device, scenario.Draft, scenario.Tree, scenario.TargetGroup,
        scenario.Link, scenario.LinkDirection, scenario.Payload, scenario.ClosedLoop, scenario.Poisson,
        scenario.GammaArrivals, scenario.TraceReplay, scenario.Real, scenario.StopDraft, scenario.KillTarget,
        scenario.PretrainedModel, scenario.SpecModel,
        scenario.Fabric, scenario.DraftFailure, scenario.Adaptive, acceptance.Phase, acceptance.Phases,
        acceptance.Ranked, acceptance.Marginal, acceptance.ByCategory,
        distributions.Linear, distributions.Profile, scenario.Serving, scenario.StepTime,
    ]
    for model in models:
        for name, field in model.model_fields.items():
            if model is not distributions.Linear:  # a..e are documented inside the formula
                assert f"`{field.alias or name}`" in doc, f"{model.__name__}.{name} is not documented"
            if field.description:
                assert field.description in doc, f"{model.__name__}.{name}: description differs from the README"


def test_const_star_matches_the_closed_form():
    """Constant times, deterministic acceptance: analytic and simulated draft utilization
    agree within 2% for every N = 1..8."""
    for n in range(1, 9):
        sc = starsim.load_scenario(SCENARIOS / "const_star.yaml", {"targets.0.count": n, "duration_s": 100})
        a = analyze(sc)["draft_utilization"]
        s = starsim.simulate(sc).summary["draft_utilization"]
        assert a == pytest.approx(s, rel=0.02), f"N={n}: analytic {a:.4f} vs simulated {s:.4f}"


# --------------------------------------------------------------------------- the real public data (when present)


def test_real_azure_conv_trace_loads():
    if not REAL_AZURE_CONV.is_file():
        pytest.skip(f"{REAL_AZURE_CONV} not present")
    df = load_azure_trace(REAL_AZURE_CONV)
    assert len(df) == 19_366
    t = df["t"].to_numpy()
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert 3_400 < t[-1] < 3_600  # ~58 minutes
    assert (df["prompt_tokens"] >= 1).all() and (df["output_tokens"] >= 1).all()


def test_real_azure_trace_replays():
    if not REAL_AZURE_CONV.is_file():
        pytest.skip(f"{REAL_AZURE_CONV} not present")
    rel = Path("..") / ".." / "shared" / "traces" / REAL_AZURE_CONV.name  # relative to scenarios/
    over = {"workload.path": str(rel), "workload.max_rows": 40}
    sc = starsim.load_scenario(SCENARIOS / "starsd_trace_azure.yaml", over)
    req = starsim.simulate(sc).requests
    assert len(req) == 40 and req["request"].is_unique


def test_real_mt_bench_questions_load():
    if not REAL_MT_BENCH.is_file():
        pytest.skip(f"{REAL_MT_BENCH} not present")
    lengths = load_prompts_jsonl(REAL_MT_BENCH)
    assert len(lengths) == 80
    assert min(lengths) >= 1
    over = {**SHORT, "workload.prompts_jsonl": "../../shared/data/mt_bench_questions.jsonl"}  # relative to scenarios/
    sc = starsim.load_scenario(SCENARIOS / "starsd_ref_n4.yaml", over)
    req = starsim.simulate(sc).requests
    assert set(req["prompt_tokens"]) <= set(lengths)
