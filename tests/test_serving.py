"""Serving targets (continuous batching): the step scheduler's rules (starsim/serving.py),
the simulator's serving target (starsim/sim/serving.py) and the closed form at batch.

- at ``max_seqs: 1`` a serving target is StarSD's target, table for table;
- a step never holds more tokens than its budget, KV never more than its capacity, no more
  sequences than ``max_seqs``; preempted sequences recompute and every token is accounted;
- Little's law ties the steps table's queue to the requests table's waits;
- the closed form is within 2% of the simulator on constant times, batch 1..64.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CONST_STAR
from golden_cases import CASES, ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from starsim.analytic import analyze
from starsim.errors import StarsimError
from starsim.scenario import load_scenario
from starsim.serving import Seq, StepScheduler
from starsim.sim import simulate

STEP = {"overhead_s": 0.001, "weights_s": 0.010, "per_token_s": 1e-5, "per_kv_token_s": 1e-7, "per_attn_s": 1e-10}
BATCH_DRAFT = {"kind": "linear", "a": 0.002, "b": 0.0002, "c": 1e-6}


def _const(tmp_path, serving: dict, *, name="serving.yaml", **changes):
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["serving"] = serving
    sc["draft"]["batch"] = {"time": BATCH_DRAFT}
    for k, v in changes.items():  # "a.0.b": a nested field, list items by index
        *parents, last = k.split(".")
        d = sc
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        d[int(last) if isinstance(d, list) else last] = v
    f = tmp_path / name
    f.write_text(yaml.safe_dump(sc))
    return load_scenario(str(f))


# ------------------------------------------------------------------ max_seqs 1 is the plain target


@pytest.mark.parametrize("case", ["const_star", "open_poisson", "fabric_failure", "one_for_one", "autoregressive",
                                  "cpu_profiles", "pipeline", "fabric_failure+pipeline"])
def test_one_sequence_at_a_time_is_the_target_without_serving(case):
    name, _, more = case.partition("+")
    path, over = CASES[name]
    over = over + ([f"draft.{more}=true", "duration_s=60"] if more else [])
    base = load_scenario(str(ROOT / path), over)
    serving = load_scenario(str(ROOT / path), over + [f"targets.{i}.serving={{max_seqs: 1}}"
                                                      for i in range(len(base.targets))])
    a, b = simulate(base).records, simulate(serving).records
    for table in ("rounds", "requests"):
        pd.testing.assert_frame_equal(getattr(a, table), getattr(b, table), check_exact=True)
    key = ["engine", "kind", "target", "start", "end", "device"]
    ia, ib = (t.intervals.sort_values(key).reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(ia, ib, check_exact=True)
    assert a.steps is None and len(b.steps) == len(b.rounds) + int(b.requests["t_first_token"].notna().sum())


# ------------------------------------------------------------------ the scheduler's rules


@st.composite
def _workloads(draw):
    per_round = draw(st.integers(1, 20))
    reqs = draw(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 120)), min_size=1, max_size=25))
    largest = max(p + o for p, o in reqs) + per_round
    budget = draw(st.one_of(st.none(), st.integers(per_round, 700)))
    cap = draw(st.one_of(st.none(), st.integers(largest, 3 * largest)))
    return dict(per_round=per_round, reqs=reqs, budget=budget, cap=cap, max_seqs=draw(st.integers(1, 12)),
                wait=draw(st.booleans()), emit=draw(st.randoms(use_true_random=False)))


@settings(max_examples=150, deadline=None)
@given(_workloads())
def test_steps_keep_every_bound_and_every_request_finishes(w):
    s = StepScheduler(max_seqs=w["max_seqs"], budget=w["budget"], kv_capacity=w["cap"], per_round=w["per_round"],
                      reserve_whole=w["wait"])
    seqs = [Seq(i, p, o, 0.0) for i, (p, o) in enumerate(w["reqs"])]
    pending = list(seqs)
    admitted = []
    for _ in range(100_000):
        if pending:  # arrivals trickle in between steps
            s.add(pending.pop(0))
        if not s.outstanding and not pending:
            break
        before = set(map(id, s.running))
        step = s.plan()
        admitted += [q.rid for q in s.running if id(q) not in before and q.preemptions == 0 and q.computed == 0
                     and q.rid not in admitted]
        assert step.tokens <= (w["budget"] or np.inf)
        assert step.kv_peak <= (w["cap"] or np.inf) and s.kv_used <= (w["cap"] or np.inf)
        assert len(step.verify) + len(step.prefill) <= w["max_seqs"] and len(s.running) <= w["max_seqs"]
        if w["wait"]:
            assert not step.preempted
        emitted = [min(w["emit"].randint(1, w["per_round"]), q.output - q.generated) for q in step.verify]
        s.finish(step, emitted)
        assert s.kv_used == sum(q.kv for q in s.running) >= 0
    else:
        pytest.fail("the requests never finished")
    assert all(q.generated == q.output for q in seqs) and s.kv_used == 0
    assert admitted == sorted(admitted)  # first come, first served


def test_a_request_larger_than_kv_is_named():
    s = StepScheduler(max_seqs=4, budget=None, kv_capacity=100, per_round=5, reserve_whole=False,
                      where="targets.0.serving")
    s.add(Seq(7, 90, 50, 0.0))
    step = s.plan()
    s.finish(step, [])
    with pytest.raises(StarsimError, match=r"targets.0.serving: request 7 \(90 prompt \+ 50 output tokens\) does "
                                           "not fit the KV capacity of 100 tokens"):
        for _ in range(100):
            step = s.plan()
            s.finish(step, [1] * len(step.verify))


def test_kv_below_one_request_is_refused_at_load(tmp_path):
    with pytest.raises(StarsimError, match=r"targets.0.serving.kv_capacity_tokens: 300 tokens of KV cannot hold one "
                                           r"request \(50 prompt \+ 401 output \+ 17"):
        _const(tmp_path, {"kv_capacity_tokens": 300})


# ------------------------------------------------------------------ the simulator at batch


def test_batched_steps_respect_budget_kv_and_tokens(tmp_path):
    sc = _const(tmp_path, {"max_seqs": 8, "max_batched_tokens": 300, "kv_capacity_tokens": 3000, "step_time": STEP},
                duration_s=30.0, **{"workload.concurrency": 10})
    res = simulate(sc)
    steps, rounds, req = res.records.steps, res.records.rounds, res.records.requests
    assert (steps["step_tokens"] <= 300).all() and (steps["kv_tokens"] <= 3000).all()
    assert (steps["running"] <= 8).all() and steps["running"].max() == 8
    assert steps["preempted"].sum() > 0 and (steps["prefill_tokens"] < steps["step_tokens"]).any()  # mixed steps
    # every token accounted: the first token, each round's, a recompute's
    emitted = rounds.groupby("request")["emitted"].sum().reindex(req["request"]).fillna(0).to_numpy()
    assert (emitted + req["t_first_token"].notna().to_numpy() == req["generated_tokens"].to_numpy()).all()
    done = req[req["t_finish"].notna()]
    assert len(done) and (done["generated_tokens"] == done["output_tokens"]).all()
    sv = res.summary["serving"]
    assert sv["num_preemptions"] == steps["preempted"][steps["t_end"] >= 5.0].sum()
    assert 0 < sv["kv_cache_usage_mean"] <= sv["kv_cache_usage_max"] <= 1.0
    assert sv["batch_size_p99"] == 8 and sv["itl_s_p50"] > 0


@pytest.mark.parametrize("fabric", [False, True])
def test_pipelined_drafting_at_batch(tmp_path, fabric):
    """The draft drafts each step's next trees during the verify: a sequence that accepted its
    tree whole verifies the pipelined one next, the others' share is wasted; preempted
    sequences and a failed server lose theirs; every token is still accounted."""
    changes = {"duration_s": 20.0, "workload.concurrency": 10, "draft.pipeline": True,
               "acceptance": {"kind": "marginal", "curve": [0.9, 0.7, 0.5, 0.3]}}
    if fabric:
        changes["draft.fabric"] = {"servers": 2, "pairing": "least_loaded", "failures": [{"server": 0, "at_s": 8.0}]}
    sc = _const(tmp_path, {"max_seqs": 8, "max_batched_tokens": 300, "kv_capacity_tokens": 3000, "step_time": STEP},
                **changes)
    res = simulate(sc)
    steps, rounds, req = res.records.steps, res.records.rounds, res.records.requests
    assert steps["preempted"].sum() > 0
    emitted = rounds.groupby("request")["emitted"].sum().reindex(req["request"]).fillna(0).to_numpy()
    assert (emitted + req["t_first_token"].notna().to_numpy() == req["generated_tokens"].to_numpy()).all()
    done = req[req["t_finish"].notna()]
    assert len(done) and (done["generated_tokens"] == done["output_tokens"]).all()
    piped = rounds[(rounds["bytes_up"] == 0) & (rounds["draft"] >= 0)]  # trees drafted ahead: nothing sent
    assert len(piped) and (piped["t_draft_end"] <= piped["t_verify_start"]).all()
    assert (piped["t_send"] == piped["t_enqueue"]).all() and (piped["t_draft_start"] >= piped["t_enqueue"]).all()
    hits, misses, wasted = res.records.meta["pipeline"].values()
    # a hit is a sequence that took its whole 4-deep tree (P = 0.3) and went on; its next tree is
    # pipelined (counted once, unless preempted or its server failed before it was used)
    assert 0.2 < hits / (hits + misses) < 0.35
    assert abs(hits - len(piped)) <= 0.05 * hits
    busy = res.records.intervals.query("kind == 'draft'")
    assert 0 < wasted < (busy["end"] - busy["start"]).sum()
    if fabric:
        assert (rounds.loc[rounds["t_verify_start"] > 8.5, "draft"].isin([-1, 1])).all()


@pytest.mark.parametrize("fabric", [False, True])
def test_a_run_without_rounds_rows_keeps_every_other_table_and_number(tmp_path, fabric):
    """``record_rounds: false`` (fleets too large for a row per sequence per step): the same
    requests, steps and intervals, and the same tokens, throughput, utilization and TPOT,
    read off the steps table; the per-round numbers are absent, not zero."""
    serving = {"max_seqs": 8, "max_batched_tokens": 300, "kv_capacity_tokens": 3000, "step_time": STEP}
    changes = {"duration_s": 15.0, "warmup_s": 2.0, "cooldown_s": 1.0, "workload.concurrency": 10,
               "acceptance": {"kind": "marginal", "curve": [0.9, 0.7, 0.5, 0.3]}}
    if fabric:  # a target pairs when one of its requests starts its rounds: the same pairings either way
        changes["draft.fabric"] = {"servers": 2, "pairing": "least_loaded", "failures": [{"server": 0, "at_s": 7.0}]}
    a = simulate(_const(tmp_path, serving, **changes))
    b = simulate(_const(tmp_path, serving, **changes, record_rounds=False))
    assert len(b.records.rounds) == 0 and len(a.records.rounds) > 0
    for table in ("requests", "steps", "intervals"):
        pd.testing.assert_frame_equal(getattr(a.records, table), getattr(b.records, table), check_exact=True)
    steps = a.records.steps
    assert steps["emitted"].sum() == a.records.rounds["emitted"].sum()
    assert steps["accepted"].sum() == a.records.rounds.query("draft >= 0")["accepted"].sum()
    same = ("throughput_tokens_per_s", "draft_utilization", "draft_idle_gap_mean_s", "tpot_mean_s", "tpot_p99_s",
            "ttft_mean_s", "rounds", "requests_completed", "target_tokens_per_s_jain")
    for k in same:
        assert a.summary[k] == b.summary[k], k
    assert b.summary["mean_accepted_tokens"] == pytest.approx(a.summary["mean_accepted_tokens"], rel=1e-12)
    for pa, pb in zip(a.summary["per_target"], b.summary["per_target"]):
        assert (pa["tokens_per_s"], pa["rounds"]) == (pb["tokens_per_s"], pb["rounds"])
    absent = ("draft_queue_wait_mean_s", "round_time_mean_s", "draft_kv_bytes_peak")
    assert all(b.summary[k] is None for k in absent) and b.summary["acceptance_marginal"] == []
    assert b.summary["serving"]["itl_s_p50"] is None and any("record_rounds" in n for n in
                                                             b.summary["provenance"]["notices"])


def test_same_seed_same_tables_with_noise(tmp_path):
    step = {**STEP, "cv": 0.2}
    runs = [simulate(_const(tmp_path, {"max_seqs": 6, "max_batched_tokens": 200, "kv_capacity_tokens": 2500,
                                       "step_time": step}, duration_s=10.0,
                            **{"workload.concurrency": 8,
                               "acceptance": {"kind": "marginal", "curve": [0.9, 0.7, 0.5, 0.3]}})).records
            for _ in range(2)]
    for table in ("rounds", "requests", "intervals", "steps"):
        pd.testing.assert_frame_equal(getattr(runs[0], table), getattr(runs[1], table), check_exact=True)


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding", "first_free"])
def test_littles_law_on_the_queue(tmp_path, router):
    """Requests waiting, averaged over time from the steps table, equal the arrival rate times
    the mean wait from the requests table (Little's law), within sampling at step starts."""
    sc = _const(tmp_path, {"max_seqs": 2, "step_time": STEP}, duration_s=200.0, warmup_s=0.0,
                **{"targets.0.count": 2, "draft.batch.time": BATCH_DRAFT,
                   "workload": {"kind": "poisson", "rate_per_s": 7.0, "prompt_tokens": 50, "output_tokens": 101,
                                "router": router}})
    res = simulate(sc)
    req, steps = res.records.requests, res.records.steps
    t_end = res.records.meta["t_end"]
    started = req[req["t_start"].notna()]
    lam = len(req) / t_end
    wq = (started["t_start"] - started["t_arrival"]).sum() / len(req)  # still-queued ones waited past t_end
    wq += (t_end - req.loc[req["t_start"].isna(), "t_arrival"]).sum() / len(req)
    # the queue between steps: waiting at each step's start, held until the next step starts
    by_t = [g for _, g in steps.groupby("target")]
    lq = sum((g["waiting"].to_numpy()[:-1] * np.diff(g["t_start"].to_numpy())).sum() for g in by_t) / t_end
    assert wq > 0.05  # a queue formed
    if router == "first_free":  # the queue is the fleet's: a target holds only what it runs
        assert (steps["waiting"] == 0).all() and (steps["running"] <= 2).all()
        return
    # sampled after each step's admissions, so arrivals during a step count from the next: a
    # few percent apart, not an identity
    assert lq == pytest.approx(lam * wq, rel=0.12)
    if router == "round_robin":
        counts = req["target"].value_counts()
        assert abs(counts[0] - counts[1]) <= 1


# ------------------------------------------------------------------ the closed form at batch


@pytest.mark.parametrize("mode,n,batch", [("star", 1, 1), ("star", 4, 4), ("star", 2, 16), ("star", 1, 64),
                                          ("autoregressive", 2, 16), ("autoregressive", 1, 64)])
def test_closed_form_matches_the_simulator_at_batch(tmp_path, mode, n, batch):
    sc = _const(tmp_path, {"max_seqs": batch, "step_time": STEP}, duration_s=40.0, mode=mode,
                **{"targets.0.count": n, "workload.concurrency": batch})
    sim, a = simulate(sc).summary, analyze(sc)
    assert a["throughput_tokens_per_s"] == pytest.approx(sim["throughput_tokens_per_s"], rel=0.02)
    assert a["tpot_mean_s"] == pytest.approx(sim["tpot_mean_s"], rel=0.02)
    if mode == "star":
        assert a["draft_utilization"] == pytest.approx(sim["draft_utilization"], abs=0.02)
    assert a["per_target"][0]["batch"] == batch


def test_execute_refuses_what_a_real_serving_target_cannot_run(tmp_path):
    """Checked before the pair is even looked at (tests/test_real_serving.py runs the rest)."""
    from starsim.real.execute import execute

    sc = _const(tmp_path, {"max_seqs": 4, "step_time": STEP}, real={"pair": str(tmp_path)},
                **{"workload.concurrency": 4, "draft.pipeline": True})
    with pytest.raises(StarsimError, match="draft.pipeline: not supported for real with serving targets"):
        execute(sc)


def test_vllm_bench_keys_and_bench_compare(tmp_path, capsys):
    """A run written with vllm bench serve's keys, and a measured file beside it metric by metric."""
    import json

    from starsim.cli import main

    scenario = str(ROOT / "scenarios" / "serving_const.yaml")
    bench, run = tmp_path / "bench.json", tmp_path / "run"
    assert main(["run", scenario, "--set", "duration_s=6", "--out", str(run), "--no-trace", "--vllm-bench",
                 str(bench)]) == 0
    out = capsys.readouterr().out
    assert "batch (sequences per step), mean" in out and "KV cache usage, mean" in out
    got = json.loads(bench.read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert got["mean_tpot_ms"] == pytest.approx(1e3 * summary["tpot_mean_s"])
    assert got["completed"] > 0 and got["p99_itl_ms"] >= got["median_itl_ms"] > 0
    measured = {**got, "mean_tpot_ms": got["mean_tpot_ms"] * 1.25}  # as if the real server were slower
    m = tmp_path / "measured.json"
    m.write_text(json.dumps(measured))
    assert main(["bench-compare", str(run), str(m), "--json"]) == 0
    rows = {r["metric"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mean_tpot_ms"]["err_pct"] == pytest.approx(-20.0)
    assert rows["request_throughput"]["err_pct"] == pytest.approx(0.0)
    m.write_text("{not json")
    assert main(["bench-compare", str(run), str(m)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {m}: not JSON") and len(err.strip().splitlines()) == 1


def test_a_step_cost_file_and_its_resolved_scenario(tmp_path):
    """A step_time naming a step-cost file: its fields and provenance come from it, a resolved
    scenario (all fields beside the path) loads again, and a field that differs is refused."""
    from starsim.scenario import validate_scenario

    path = ROOT / "scenarios" / "gpu" / "qwen3-8b-qwen3-06b-h100_sxm-serving.yaml"
    sc = load_scenario(str(path))
    st = sc.targets[0].serving.step_time
    doc = yaml.safe_load(open(st.path))
    assert st.dense_table is not None and st._source["fit"] == doc["provenance"]["fit"]
    again = validate_scenario(sc.to_dict(), base_dir=path.parent)
    assert again.digest() == sc.digest()
    data = sc.to_dict()
    data["targets"][0]["serving"]["step_time"]["per_seq_s"] = 1.0
    with pytest.raises(StarsimError, match="give path or the cost fields, not both .also given: per_seq_s"):
        validate_scenario(data, base_dir=path.parent)
    assert doc["kv"]["capacity_tokens"] == sc.targets[0].serving.kv_tokens


def test_goodput_counts_the_requests_that_met_their_objective():
    res = simulate(load_scenario(str(ROOT / "scenarios" / "serving_const.yaml"),
                                 ["duration_s=8", "targets.0.tpot_slo_s=0.0075"]))
    s = res.summary
    good = s["slo_attainment"] * s["tpot_samples"]
    assert s["serving"]["goodput_requests_per_s"] == pytest.approx(good / s["measured_s"])
    assert 0 < s["slo_attainment"] < 1
    plain = simulate(load_scenario(str(ROOT / "scenarios" / "serving_const.yaml"), ["duration_s=4"])).summary
    assert plain["serving"]["goodput_requests_per_s"] is None  # no objective, no goodput


def test_the_closed_form_finds_an_open_loops_batch():
    """Poisson arrivals through a router: the closed form's batch is Little's law at its own
    request time (a fixed point), near the simulator's mean batch below saturation."""
    wl = ("workload={kind: poisson, rate_per_s: 10, router: least_outstanding, prompt_tokens: "
          "{kind: uniform, low: 64, high: 512}, output_tokens: {kind: uniform, low: 64, high: 512}}")
    sc = load_scenario(str(ROOT / "scenarios" / "serving_const.yaml"), ["duration_s=60", "warmup_s=10", wl])
    sim, a = simulate(sc).summary, analyze(sc)
    assert 1 < a["per_target"][0]["batch"] < sc.targets[0].serving.max_seqs
    assert a["per_target"][0]["batch"] == pytest.approx(sim["serving"]["batch_size_mean"], rel=0.1)
    assert a["tpot_mean_s"] == pytest.approx(sim["tpot_mean_s"], rel=0.1)
    assert a["throughput_tokens_per_s"] == pytest.approx(sim["throughput_tokens_per_s"], rel=0.05)
