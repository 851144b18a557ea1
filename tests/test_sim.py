"""The simulator: textbook queueing results, conservation, co-location, determinism."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from starsim import simulate, validate_scenario
from starsim.analytic import mva_utilization


def _endless(cfg: dict) -> dict:
    """Requests long enough that none ends during the run: no prefill breaks the cycle."""
    cfg["workload"].update(prompt_tokens=10, output_tokens=10_000_000)
    cfg["targets"][0]["prefill_time"] = 0.0
    return cfg


@pytest.mark.parametrize("n", [2, 4, 6])
def test_exponential_draft_matches_machine_repairman(const_star, n):
    # One exponential server (the draft) and N customers with a fixed think time
    # (link + verify): the M/M/1//N result is exact and insensitive to the think-time law.
    cfg = _endless(const_star)
    cfg["targets"][0]["count"] = n
    cfg["draft"]["time"] = {"kind": "exponential", "mean": 0.004}
    cfg["duration_s"] = 400.0
    s = simulate(validate_scenario(cfg)).summary
    z = 2 * 0.001 + 0.010
    assert s["draft_utilization"] == pytest.approx(float(mva_utilization(n, 0.004, z)), rel=0.02)


def test_single_target_deterministic_cycle(const_star):
    cfg = _endless(const_star)
    cfg["targets"][0]["count"] = 1
    r = simulate(validate_scenario(cfg))
    rounds = r.rounds
    cycle = np.diff(rounds["t_send"].to_numpy())
    assert cycle == pytest.approx(np.full(cycle.size, 0.004 + 0.002 + 0.010))
    gaps = r.summary["draft_idle_gap_mean_s"]
    assert gaps == pytest.approx(0.012)  # d/(d+c+v) busy: the rest is one gap per round
    assert r.summary["draft_utilization"] == pytest.approx(0.004 / 0.016, rel=1e-3)
    assert r.summary["mean_accepted_tokens"] == pytest.approx(4.0)


def test_conservation_of_requests_and_tokens(const_star):
    cfg = const_star
    cfg["acceptance"] = {"kind": "geometric", "alpha": 0.7}
    cfg["workload"].update(prompt_tokens={"kind": "uniform", "low": 10, "high": 100},
                           output_tokens={"kind": "lognormal", "mean": 60, "cv": 0.8})
    cfg["duration_s"] = 30.0
    r = simulate(validate_scenario(cfg))
    req, rounds = r.requests, r.rounds
    assert req["request"].is_unique
    assert sorted(req["request"]) == list(range(len(req)))  # every issued request is in the table
    per_req = rounds.groupby("request")["emitted"].sum()
    gen = req.set_index("request")["generated_tokens"]
    started = req[np.isfinite(req["t_first_token"])].set_index("request")
    # 1 token from the prefill + what the rounds emitted
    assert (started["generated_tokens"] == 1 + per_req.reindex(started.index, fill_value=0)).all()
    done = req[np.isfinite(req["t_finish"])]
    assert (done["generated_tokens"] == done["output_tokens"]).all()
    assert (gen <= req.set_index("request")["output_tokens"]).all()
    assert (rounds["emitted"] <= rounds["accepted"] + 1).all()
    assert (rounds["accepted"] <= rounds["depth"]).all()
    assert r.summary["requests_unfinished"] == int((~np.isfinite(req["t_finish"])).sum())
    assert r.summary["requests_completed"] + r.summary["requests_unfinished"] == len(req)
    # hop timestamps are ordered within each round
    hops = ["t_send", "t_draft_arrive", "t_enqueue", "t_draft_start", "t_draft_end",
            "t_reply_send", "t_target_arrive", "t_verify_start", "t_verify_end"]
    ts = rounds[hops].to_numpy()
    assert (np.diff(ts, axis=1) >= -1e-12).all()


def test_request_budget_finishes_every_request(const_star):
    cfg = const_star
    del cfg["duration_s"]
    cfg["max_requests"] = 10
    r = simulate(validate_scenario(cfg))
    assert r.summary["requests_completed"] == 10
    assert r.summary["requests_unfinished"] == 0


def test_colocated_targets_contend_for_their_device(const_star):
    cfg = _endless(const_star)
    cfg["targets"][0]["count"] = 2
    alone = simulate(validate_scenario(cfg))
    cfg["devices"]["g"]["count"] = 1  # both targets on one GPU
    shared = simulate(validate_scenario(cfg))
    # the shared GPU must verify 2 x 10 ms per round of both targets: cycle 20 ms, not 16
    ratio = shared.summary["throughput_tokens_per_s"] / alone.summary["throughput_tokens_per_s"]
    assert ratio == pytest.approx(16 / 20, rel=0.01)
    v = shared.intervals[shared.intervals["kind"] == "verify"].sort_values("start")
    assert (v["start"].to_numpy()[1:] >= v["end"].to_numpy()[:-1] - 1e-12).all()  # never overlap
    cfg["devices"]["g"]["slots"] = 2  # a unit that runs two at once is free parallelism again
    slots = simulate(validate_scenario(cfg))
    assert slots.summary["throughput_tokens_per_s"] == pytest.approx(alone.summary["throughput_tokens_per_s"])


def test_a_shared_unit_on_host_cores_still_takes_turns(const_star):
    # two targets on the one unit of a pool with one core (a CPU core, as a declared real
    # run has it): they take turns on the unit (FIFO), they do not run at half speed
    # together; the cycle is the one of the GPU case above, 2 x 10 ms of verify
    cfg = _endless(const_star)
    cfg["targets"][0]["count"] = 2
    cfg["devices"]["g"].update(count=1, cores=1)
    r = simulate(validate_scenario(cfg))
    v = r.intervals[r.intervals["kind"] == "verify"].sort_values("start")
    assert (v["start"].to_numpy()[1:] >= v["end"].to_numpy()[:-1] - 1e-12).all()  # never overlap
    assert np.allclose(v["end"] - v["start"], 0.010)  # each alone on the core: its own time
    gpu = copy.deepcopy(cfg)
    del gpu["devices"]["g"]["cores"]
    ratio = r.summary["throughput_tokens_per_s"] / simulate(validate_scenario(gpu)).summary["throughput_tokens_per_s"]
    assert ratio == pytest.approx(1.0, rel=1e-9)
    # message work holds no turn: it shares the core with whoever verifies
    cfg["targets"][0]["send_time"] = 0.001
    r = simulate(validate_scenario(cfg))
    v = r.intervals[r.intervals["kind"] == "verify"]
    assert (v["end"] - v["start"]).max() > 0.010 + 1e-6


def test_same_seed_same_tables_other_seed_differs(const_star):
    cfg = const_star
    cfg["draft"]["time"] = {"kind": "lognormal", "mean": 0.004, "cv": 0.3}
    cfg["acceptance"] = {"kind": "geometric", "alpha": 0.6}
    cfg["duration_s"] = 20.0
    a, b = simulate(validate_scenario(cfg)), simulate(validate_scenario(cfg))
    for name in ("rounds", "requests", "intervals"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    sa = {k: v for k, v in a.summary.items() if k != "provenance"}
    assert sa == {k: v for k, v in b.summary.items() if k != "provenance"}
    cfg["seed"] = 2
    c = simulate(validate_scenario(cfg))
    assert not a.rounds.equals(c.rounds)


def test_adding_a_target_does_not_change_other_targets_draws(const_star):
    cfg = const_star
    cfg["acceptance"] = {"kind": "geometric", "alpha": 0.6}
    cfg["duration_s"] = 10.0
    a = simulate(validate_scenario(cfg)).rounds
    cfg["targets"][0]["count"] += 1
    b = simulate(validate_scenario(cfg)).rounds
    first = lambda r: r[r["target"] == 0]["accepted"].to_numpy()[:200]  # noqa: E731
    assert (first(a) == first(b)).all()


def test_modes_from_the_same_file(const_star):
    cfg = _endless(const_star)
    cfg["targets"][0]["count"] = 4
    out = {}
    for mode in ("star", "one_for_one", "autoregressive"):
        cfg["mode"] = mode
        out[mode] = simulate(validate_scenario(cfg)).summary
    assert out["autoregressive"]["draft_utilization"] is None
    assert out["autoregressive"]["mean_accepted_tokens"] == 1.0
    # autoregressive: one token per verify_time(tokens=1) = 10 ms per target
    assert out["autoregressive"]["throughput_tokens_per_s"] == pytest.approx(4 / 0.010, rel=0.01)
    # one_for_one: draft and verify share the target's device, no network: 14 ms per round
    assert out["one_for_one"]["throughput_tokens_per_s"] == pytest.approx(4 * 4 / 0.014, rel=0.01)
    assert out["one_for_one"]["draft_utilization"] == pytest.approx(0.004 / 0.014, rel=0.01)
    assert out["star"]["throughput_tokens_per_s"] == pytest.approx(4 * 4 / 0.016, rel=0.01)


def test_prefix_cache_encodes_only_new_tokens(const_star):
    cfg = const_star
    cfg["draft"]["encode_per_token_s"] = 1e-5
    cfg["duration_s"] = 10.0
    on = simulate(validate_scenario(cfg)).rounds
    cfg["draft"]["prefix_cache"] = False
    off = simulate(validate_scenario(cfg)).rounds
    first = on[on["round"] == 0]
    assert (first["new_tokens"] == 51).all()  # prompt + the prefill's token
    assert (on[on["round"] > 0]["new_tokens"] == 4).all()  # accepted 3 + bonus
    assert (off["new_tokens"] == off["context_tokens"]).all()
    assert (off["t_draft_end"] - off["t_draft_start"]).mean() > (on["t_draft_end"] - on["t_draft_start"]).mean()


def test_draft_kv_memory_grows_with_targets_and_is_freed(const_star):
    cfg = const_star
    cfg["duration_s"] = 20.0
    peaks = []
    for n in (1, 4):
        cfg["targets"][0]["count"] = n
        peaks.append(simulate(validate_scenario(cfg)).summary["draft_kv_bytes_peak"])
    # one tag holds at most prompt + output tokens; four tags up to four times that
    assert 0 < peaks[0] <= 451 * 1000
    assert peaks[1] > 3 * peaks[0] * 0.9


def test_core_runs_without_torch(const_star):
    code = (
        "import sys, starsim\n"
        "from tests.conftest import CONST_STAR\n"
        "cfg = dict(CONST_STAR, duration_s=5.0, warmup_s=1.0)\n"
        "starsim.simulate(starsim.validate_scenario(cfg)); starsim.analyze(starsim.validate_scenario(cfg))\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo)


def test_shared_cores_are_processor_sharing():
    import simpy

    from starsim.sim.devices import SharedCores

    def finish_times(cores, jobs):
        env = simpy.Environment()
        host, ends = SharedCores(env, cores), {}

        def job(name, at, work):
            yield env.timeout(at)
            yield from host.run(work)
            ends[name] = env.now

        for name, at, work in jobs:
            env.process(job(name, at, work))
        env.run()
        return ends

    assert finish_times(1, [("a", 0, 1.0), ("b", 0, 1.0)]) == pytest.approx({"a": 2.0, "b": 2.0})
    assert finish_times(2, [(i, 0, 1.0) for i in range(3)]) == pytest.approx({0: 1.5, 1: 1.5, 2: 1.5})
    assert finish_times(2, [("a", 0, 1.0), ("b", 0, 1.0)]) == pytest.approx({"a": 1.0, "b": 1.0})  # no sharing
    # a alone for 0.5 s, then both at half speed until a is done at 1.5 s; b alone again until 2.0 s
    assert finish_times(1, [("a", 0, 1.0), ("b", 0.5, 1.0)]) == pytest.approx({"a": 1.5, "b": 2.0})


def _message_work(cfg: dict, cores: int, n: int) -> dict:
    """Every process on one host of ``cores`` cores; each message costs its sender/receiver work."""
    cfg["devices"] = {"host": {"type": "cpu host", "count": n + 1, "cores": cores}}
    cfg["draft"].update(device=f"host[{n}]", parse_time=0.0001, serialize_time=0.0002)
    cfg["targets"][0].update(count=n, device="host", send_time=0.0003, receive_time=0.0002)
    return cfg


def test_message_work_is_part_of_each_round(const_star):
    """One target on a 2-core host never overlaps the draft: a round is the sum of its parts,
    each hop stamped where a real run stamps it, and the closed form counts the same parts."""
    from starsim.analytic import analyze
    from starsim.metrics import hop_means

    cfg = _message_work(_endless(const_star), cores=2, n=1)
    r = simulate(validate_scenario(cfg))
    hops = hop_means(r.records)
    assert hops["link_up_s"] == pytest.approx(0.0003 + 0.001)  # the target's send work, then the wire
    assert hops["parse_s"] == pytest.approx(0.0001)
    assert hops["draft_s"] == pytest.approx(0.004)
    assert hops["serialize_s"] == pytest.approx(0.0002)
    assert hops["link_down_s"] == pytest.approx(0.001 + 0.0002)  # the wire, then the target's receive work
    assert hops["verify_s"] == pytest.approx(0.010)
    assert hops["round_s"] == pytest.approx(0.0168)
    a = analyze(validate_scenario(cfg))
    assert a["throughput_tokens_per_s"] == pytest.approx(r.summary["throughput_tokens_per_s"], rel=1e-3)


def test_message_work_competes_for_one_core(const_star):
    """Four targets and the draft on one core: the core never idles (a round's wire time is
    short beside the others' work), so throughput is a request's tokens over its CPU work."""
    cfg = _message_work(const_star, cores=1, n=4)
    cfg["duration_s"], cfg["warmup_s"] = 60.0, 5.0
    s = simulate(validate_scenario(cfg)).summary
    rounds = (401 - 1) / 4  # 3 accepted + 1 per round
    work = 0.002 + rounds * (0.0003 + 0.0001 + 0.004 + 0.0002 + 0.0002 + 0.010)  # prefill + each round's work
    assert s["throughput_tokens_per_s"] == pytest.approx(401 / work, rel=0.01)


def test_verify_warm_cold_curve(const_star, tmp_path):
    """A lone target waits for every tree, so every verify pays the verify_idle factor."""
    from starsim.profiles import ProfileFile, build_op, write_profile

    p = tmp_path / "t.yaml"
    rows = [(t, c, 0.010, 0.010, 0.010, 5) for t in (1, 16, 64) for c in (1, 10**6)]
    ops = {"verify": build_op(("tokens", "context"), rows),
           "verify_idle": build_op(("gap_s",), [(0.0, 0.010, 0.010, 0.010, 5), (0.001, 0.020, 0.020, 0.020, 5)])}
    write_profile(ProfileFile(model={"name": "t"}, device={"name": "d"}, provenance={}, ops=ops), p)
    cfg = _endless(const_star)
    cfg["targets"][0].update(count=1, verify_time={"kind": "profile", "path": str(p), "op": "verify", "noise": False})
    cold = simulate(validate_scenario(cfg)).summary
    cfg["targets"][0]["idle_slowdown"] = False
    warm = simulate(validate_scenario(cfg)).summary
    # each gap is the draft plus two links (6 ms), past the last measured gap: factor 2
    assert cold["round_time_mean_s"] == pytest.approx(0.006 + 0.020)
    assert warm["round_time_mean_s"] == pytest.approx(0.006 + 0.010)
    cfg["targets"][0]["verify_time"] = 0.010
    cfg["targets"][0]["idle_slowdown"] = True
    with pytest.raises(Exception, match="idle_slowdown needs verify_time to be a profile with a verify_idle"):
        validate_scenario(cfg)
