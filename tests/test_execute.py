"""`starsim execute`: a real star (draft server + target processes over loopback TCP) on the
offline pair, recorded in the simulator's schema and summarized by the same metrics."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CONST_STAR  # noqa: E402

from starsim.cli import main  # noqa: E402
from starsim.real.speculation import target_generate  # noqa: E402

SUMMARY_KEYS = {"draft_utilization", "draft_idle_gap_mean_s", "throughput_tokens_per_s", "mean_accepted_tokens",
                "rounds", "requests_completed", "ttft_mean_s", "tpot_mean_s", "per_target", "provenance"}


def _scenario(tmp_path, pair, **changes) -> str:
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["count"] = 2
    sc.update(max_requests=4, duration_s=60.0, warmup_s=0.0,
              workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 20},
              real={"pair": str(pair)})
    sc.update(changes)
    f = tmp_path / "real.yaml"
    f.write_text(yaml.safe_dump(sc))
    return str(f)


@pytest.mark.parametrize("mode,temperature", [("star", 0.0), ("autoregressive", 0.0), ("star", 0.8)])
def test_execute_writes_a_run_directory(tmp_path, quick_pair, capsys, request, mode, temperature):
    out = tmp_path / "run"
    f = _scenario(tmp_path, quick_pair, mode=mode, real={"pair": str(quick_pair), "temperature": temperature})
    assert main(["execute", f, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["requests_completed"] == 4 and summary["requests_unfinished"] == 0
    prov = summary["provenance"]
    assert prov["source"] == "real" and prov["mode"] == mode and not prov["failures"]
    assert prov["temperature"] == temperature
    assert prov["models"]["target"]["weights_sha256"] and prov["models"]["target"]["devices"] == ["cpu"]
    for name in ("rounds", "requests", "intervals"):
        assert (out / f"{name}.parquet").exists()
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert sorted(o["request"] for o in outputs) == [0, 1, 2, 3]
    if temperature == 0:  # lossless: each request's tokens are the target's own greedy ones
        _, target, _ = request.getfixturevalue("quick_models")
        for o in outputs:
            assert o["output"] == target_generate(target, o["prompt"], 20, eos=target.config.eos_token_id)
    if mode == "star":
        assert 0 < summary["draft_utilization"] <= 1 and summary["mean_accepted_tokens"] >= 1
        assert len(summary["per_target"]) == 2
    else:
        assert summary["mean_accepted_tokens"] == 1  # one token a step, no draft
    assert "executed for real" in capsys.readouterr().out


def test_execute_bad_input(tmp_path, quick_pair, capsys):
    f = _scenario(tmp_path, quick_pair)
    sc = yaml.safe_load(open(f))
    for change, msg in [
        ({"real": None}, "execute needs a `real:` section"),
        ({"real": {"pair": str(tmp_path / "nothing")}}, "is not a draft/target pair"),
        ({"real": {"pair": str(quick_pair), "faults": [{"kind": "kill_target", "target": 2, "at_s": 1}]}},
         "real.faults.0.target: target 2 out of range"),
        ({"real": {"pair": str(quick_pair), "temperature": -1}}, "real.temperature"),
        ({"devices": {"d": {"type": "draft"}, "g": {"type": "gpu", "count": 16, "torch": "cuda:99"}}},
         "cuda:99 asked for"),
    ]:
        g = tmp_path / "bad.yaml"
        g.write_text(yaml.safe_dump({**sc, **change}))
        assert main(["execute", str(g)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and msg in err, err


def _serve_and_run(tmp_path, capsys, server_args, target_args, name):
    import signal
    import subprocess
    import sys

    # stderr kept, and faulthandler on: a server that does not stop is made to show its threads.
    # SIGINT restored to its default in the child: a shell's background job (`cmd &` in a script)
    # starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the
    # SIGINT below would do nothing (what made this test time out when CI ran in the background)
    err = (tmp_path / f"{name}-server.err").open("w+")
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "starsim.cli", "draft-server", "--bind",
                             "127.0.0.1:0", *server_args], stdout=subprocess.PIPE, stderr=err, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line.startswith("draft server on 127.0.0.1:"), line
        address = line.split()[3]
        out = tmp_path / name
        rc = main(["target", "--connect", address, "--requests", "2", "--prompt-tokens", "24",
                   "--output-tokens", "16", "--out", str(out), *target_args])
        assert rc == 0
        assert "target 0 (tag 0, same host): 2 requests" in capsys.readouterr().out
        summary = json.loads((out / "summary.json").read_text())
        assert summary["requests_completed"] == 2 and summary["provenance"]["clock_offset_s"] == 0.0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            tail, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
            proc.communicate(timeout=30)
            err.seek(0)
            pytest.fail("the draft server did not stop within 30 s of SIGINT; its stderr:\n" + err.read()[-6000:])
    err.seek(0)
    assert proc.returncode == 0 and "served" in tail, err.read()[-3000:]
    return line, summary


def test_draft_server_and_target_commands(tmp_path, quick_pair, capsys):
    """The two commands of a star across machines, here both on loopback: the offline pair,
    and a random-weight spec with an EAGLE head (hidden states travel with each request)."""
    from test_speculation import EAGLE_SPEC

    _serve_and_run(tmp_path, capsys, ["--pair", str(quick_pair)], ["--pair", str(quick_pair)], "pair")
    spec = tmp_path / "tiny-eagle.yaml"
    spec.write_text(EAGLE_SPEC)
    line, summary = _serve_and_run(tmp_path, capsys, ["--spec", str(spec), "--tree", "3,3,8"],
                                   ["--spec", str(spec)], "spec")
    assert "EAGLE head" in line and summary["provenance"]["model"]["kind"] == "spec"
    for args, msg in [(["--spec", "no-such-spec"], "no such model spec"), (["--model", str(tmp_path)], "no target"),
                      (["--device", "tpu:9"], "--device: tpu:9"), (["--device", "cuda:99"], "cuda:99 asked for")]:
        assert main(["target", "--connect", "127.0.0.1:9", "--pair", str(quick_pair), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and msg in err, err


def test_measured_acceptance_feeds_the_simulator(tmp_path, quick_pair, capsys):
    out = tmp_path / "run"
    f = _scenario(tmp_path, quick_pair, max_requests=6)
    assert main(["execute", f, "--out", str(out)]) == 0
    measured = json.loads((out / "summary.json").read_text())["acceptance_marginal"]
    assert len(measured) == 4 and all(a >= b for a, b in zip(measured, measured[1:]))
    assert main(["acceptance", str(out)]) == 0
    curve = yaml.safe_load((out / "acceptance.yaml").read_text())
    assert curve["marginal"] == [round(a, 6) for a in measured] and curve["measured_by"]["source"] == "real"
    # tree-aware: the ranks the targets took, per depth (the run's greedy rounds, its last ones unseen)
    reached, ranked = curve["ranked_reached"], curve["ranked"]
    assert reached == sorted(reached, reverse=True) and all(sum(row) <= 1 + 1e-6 for row in ranked)
    assert len(ranked) <= 4 and all(len(row) == 10 for row in ranked)  # the draft's best 10 (speculation.RANKS)
    assert len(curve["confidence"]) == 4 and all(row == sorted(row, reverse=True) for row in curve["confidence"])
    # a simulation fed the measured curve draws it back (long run: sampling noise is small)
    from starsim import simulate, validate_scenario

    sc = copy.deepcopy(CONST_STAR)
    sc["acceptance"] = {"kind": "measured", "path": "run/acceptance.yaml"}
    res = simulate(validate_scenario(sc, base_dir=tmp_path))
    sim = res.summary["acceptance_marginal"]
    assert len(sim) == 4
    for a, b in zip(sim, curve["marginal"]):
        assert abs(a - b) < 0.03, (sim, curve["marginal"])


def test_measured_acceptance_bad_file(tmp_path, capsys):
    (tmp_path / "acc.yaml").write_text("marginal: [0.2, 0.5]\n")  # increasing: not a marginal curve
    sc = copy.deepcopy(CONST_STAR)
    sc["acceptance"] = {"kind": "measured", "path": "acc.yaml"}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc))
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "acceptance" in err and "not an acceptance curve file" in err


def test_a_killed_target_is_reported_and_the_others_finish(tmp_path, quick_pair):
    from starsim import load_scenario
    from starsim.real.execute import execute

    # no request budget: both targets keep decoding until 6 s after the start; target 1 dies at 2 s
    f = _scenario(tmp_path, quick_pair, max_requests=None, duration_s=6.0,
                  workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 60},
                  real={"pair": str(quick_pair), "faults": [{"kind": "kill_target", "target": 1, "at_s": 2.0}]})
    res = execute(load_scenario(f))
    s, req = res.summary, res.requests
    assert "1" in s["provenance"]["failures"] and "exit code" in s["provenance"]["failures"]["1"]
    assert "0" not in s["provenance"]["failures"]
    per = {t["target"]: t for t in s["per_target"]}
    assert per[0]["requests_completed"] >= 1 and per[1]["requests_completed"] == 0  # its rows died with it
    # conservation: the request target 1 had taken is in the table, unfinished; target 0 finished its own
    assert s["requests_unfinished"] == 1
    lost = req[req["t_finish"].isna()]
    assert list(lost["target"]) == [1] and int(lost["output_tokens"].iloc[0]) == 60
    assert req["request"].is_unique  # (the requests target 1 finished died with its process)
    assert s["provenance"]["faults"] == [{"kind": "kill_target", "target": 1, "at_s": 2.0}]


def test_draft_server_stopped_targets_finish_autoregressively(tmp_path, quick_pair, quick_models):
    from starsim import load_scenario
    from starsim.real.execute import execute

    _, target, _ = quick_models
    f = _scenario(tmp_path, quick_pair, max_requests=None, duration_s=4.0,
                  workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 60},
                  real={"pair": str(quick_pair), "faults": [{"kind": "stop_draft", "at_s": 1.5}]})
    res = execute(load_scenario(f))
    s = res.summary
    assert not s["provenance"]["failures"] and s["requests_unfinished"] == 0
    fallback = {int(k): v for k, v in s["provenance"]["fallback_at_s"].items()}
    assert sorted(fallback) == [0, 1] and all(1.5 <= t < 3.0 for t in fallback.values())
    r = res.rounds
    for i, t in fallback.items():  # the rows say from when: drafted rounds before, plain decode steps after
        mine = r[r["target"] == i]
        assert (mine.loc[mine["draft"] >= 0, "t_send"] < t).all()
        assert (mine.loc[mine["draft"] < 0, "t_verify_start"] >= t).all() and (mine["draft"] < 0).any()
    assert len(res.outputs) == s["requests_completed"] >= 4
    for o in res.outputs:  # every request, drafted or not, is exactly the target's own greedy output
        assert o["output"] == target_generate(target, o["prompt"], 60, eos=target.config.eos_token_id)


def test_link_emulation_imposes_the_scenario_link(tmp_path, quick_pair):
    import pandas as pd

    out = tmp_path / "run"
    link = {"up": {"latency_s": 0.02}, "down": {"latency_s": 0.01, "bandwidth_bps": 1e6}}
    f = _scenario(tmp_path, quick_pair, max_requests=2)
    sc = yaml.safe_load(open(f))
    sc["targets"][0]["link"] = link
    g = tmp_path / "link.yaml"
    g.write_text(yaml.safe_dump(sc))
    assert main(["execute", str(g), "--out", str(out), "--json"]) == 0
    r = pd.read_parquet(out / "rounds.parquet")
    r = r[r["draft"] >= 0]
    assert len(r) > 0
    assert ((r["t_draft_arrive"] - r["t_send"]) >= 0.02).all()
    # 10 ms + the reply's bits at 1 Mb/s
    assert ((r["t_target_arrive"] - r["t_reply_send"]) >= 0.01 + 8 * r["bytes_down"] / 1e6 - 1e-4).all()
    sc["real"]["emulate_link"] = False
    g.write_text(yaml.safe_dump(sc))
    assert main(["execute", str(g), "--out", str(out), "--json"]) == 0
    r = pd.read_parquet(out / "rounds.parquet")
    assert ((r["t_draft_arrive"] - r["t_send"]) < 0.02).mean() > 0.9  # loopback alone is far faster


def test_execute_pretrained_and_spec_models(tmp_path, quick_pair, quick_models, capsys):
    """Models from local HF directories (here the quick pair's, without `pair`), and random-weight
    networks from a calibration spec with an EAGLE head (target hidden states on the wire)."""
    from test_speculation import EAGLE_SPEC

    _, target, _ = quick_models
    out = tmp_path / "pre"
    f = _scenario(tmp_path, quick_pair, real={
        "target_model": {"kind": "pretrained", "path": str(quick_pair / "target")},
        "draft_model": {"kind": "pretrained", "path": str(quick_pair / "draft")}})
    assert main(["execute", f, "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["requests_completed"] == 4 and s["provenance"]["models"]["draft"]["kind"] == "pretrained"
    for o in map(json.loads, (out / "outputs.jsonl").read_text().splitlines()):
        assert o["output"] == target_generate(target, o["prompt"], 20, eos=target.config.eos_token_id)

    (tmp_path / "tiny-eagle.yaml").write_text(EAGLE_SPEC)
    out = tmp_path / "spec"
    f = _scenario(tmp_path, quick_pair, real={"target_model": {"kind": "spec", "spec": "tiny-eagle.yaml"},
                                              "draft_model": {"kind": "spec", "spec": "tiny-eagle.yaml"}})
    assert main(["execute", f, "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["requests_completed"] == 4 and s["provenance"]["models"]["target"]["kind"] == "spec"
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert all(len(o["output"]) == 20 and max(o["prompt"]) < 512 for o in outputs)  # random ids, no EOS stop
    r = __import__("pandas").read_parquet(out / "rounds.parquet")
    assert (r["bytes_up"] > 64 * 2).all()  # every request carries float16 hidden states of width 64
    capsys.readouterr()

    (tmp_path / "wide.yaml").write_text(EAGLE_SPEC.replace("vocab_size: 512", "vocab_size: 1000"))
    for real, msg in [
        ({"target_model": {"kind": "spec", "spec": "no-such-spec"}}, "no such model spec"),
        ({"target_model": {"kind": "pretrained", "path": str(tmp_path)}}, "holds no model"),
        ({"target_model": {"kind": "spec", "spec": "wide.yaml"},
          "draft_model": {"kind": "pretrained", "path": str(quick_pair / "draft")}}, "vocabulary"),
        ({"threads": 1}, "give real.pair, or real.target_model"),
    ]:
        assert main(["execute", _scenario(tmp_path, quick_pair, real=real)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and msg in err, err


def _sim_and_real(tmp_path, pair, **changes):
    """The same scenario simulated and executed: (sim Result, real Result)."""
    from starsim import load_scenario, simulate
    from starsim.real.execute import execute

    sc = load_scenario(_scenario(tmp_path, pair, **changes))
    return simulate(sc), execute(sc)


def test_execute_open_loop_replays_the_simulated_arrivals(tmp_path, quick_pair, quick_models):
    """Poisson arrivals: request i arrives when, and with the lengths that, the simulator has it
    arrive; a request waits for its time (never starts early) and TTFT counts from arrival."""
    import numpy as np

    _, target, _ = quick_models
    sim, real = _sim_and_real(tmp_path, quick_pair, max_requests=6, workload={
        "kind": "poisson", "rate_per_s": 8.0, "prompt_tokens": {"kind": "uniform", "low": 16, "high": 40},
        "output_tokens": 20})
    s = real.summary
    assert not s["provenance"]["failures"] and s["requests_completed"] == 6 and s["requests_unfinished"] == 0
    a, b = (r.requests.sort_values("request") for r in (real, sim))
    assert a["request"].tolist() == b["request"].tolist() == list(range(6))
    assert np.array_equal(a["t_arrival"].to_numpy(), b["t_arrival"].to_numpy())  # bit for bit
    assert a["prompt_tokens"].tolist() == b["prompt_tokens"].tolist()
    assert a["output_tokens"].tolist() == b["output_tokens"].tolist()
    assert (a["t_start"] >= a["t_arrival"]).all() and set(a["target"]) <= {0, 1}
    assert s["ttft_mean_s"] == pytest.approx((a["t_first_token"] - a["t_arrival"]).mean())
    for o in real.outputs:  # still lossless
        assert o["output"] == target_generate(target, o["prompt"], 20, eos=target.config.eos_token_id)


def test_execute_trace_replay_ends_at_duration(tmp_path, quick_pair):
    """A trace cut by duration_s: the arrivals up to it (the one exactly at it included, as the
    simulator has it) and no later; the run lasts to duration_s, as a simulation does."""
    import numpy as np

    rows = "".join(f"2024-05-10 00:00:{k:02d}.000,{24 + k},16\n" for k in range(12))
    (tmp_path / "trace.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    sim, real = _sim_and_real(tmp_path, quick_pair, max_requests=None, duration_s=2.0, workload={
        "kind": "trace", "path": str(tmp_path / "trace.csv"), "time_scale": 0.25})
    s = real.summary
    assert not s["provenance"]["failures"]
    a, b = (r.requests.sort_values("request") for r in (real, sim))
    assert np.array_equal(a["t_arrival"].to_numpy(), 0.25 * np.arange(9))
    assert np.array_equal(a["t_arrival"].to_numpy(), b["t_arrival"].to_numpy())
    assert a["prompt_tokens"].tolist() == b["prompt_tokens"].tolist() == list(range(24, 33))
    assert s["requests_completed"] + s["requests_unfinished"] == 9 and s["t_end_s"] >= 2.0


def test_execute_one_for_one(tmp_path, quick_pair, quick_models):
    """Each target drafts from its own draft, named and placed as the simulator names and places it."""
    _, target, _ = quick_models
    sim, real = _sim_and_real(tmp_path, quick_pair, mode="one_for_one")
    s = real.summary
    assert not s["provenance"]["failures"] and s["requests_completed"] == 4
    assert real.records.meta["draft_engines"] == sim.records.meta["draft_engines"] == ["draft-0", "draft-1"]
    iv = real.records.intervals
    draft = iv[iv["kind"] == "draft"]
    sim_iv = sim.records.intervals
    assert (set(map(tuple, draft[["engine", "device", "target"]].drop_duplicates().to_numpy()))
            == set(map(tuple, sim_iv.loc[sim_iv["kind"] == "draft", ["engine", "device", "target"]]
                       .drop_duplicates().to_numpy())))
    for i in (0, 1):
        mine = draft[draft["engine"] == f"draft-{i}"]
        assert len(mine) and (mine["target"] == i).all()
    r = real.rounds
    assert (r["draft"] == r["target"]).all()  # the simulator numbers the drafts by target
    assert 0 < s["draft_utilization"] <= 1 and s["draft_tasks"] == len(draft) and len(s["per_target"]) == 2
    assert s["provenance"]["processes"]["draft_servers"] == 2
    for o in real.outputs:
        assert o["output"] == target_generate(target, o["prompt"], 20, eos=target.config.eos_token_id)


def test_execute_pauses_between_a_targets_requests(tmp_path, quick_pair):
    """A closed loop's pause is slept between a target's requests, as the simulator waits it."""
    import pandas as pd

    from starsim import load_scenario
    from starsim.real.execute import execute

    f = _scenario(tmp_path, quick_pair, max_requests=2,
                  workload={"kind": "closed", "prompts": 2, "prompt_tokens": 30, "output_tokens": 8, "pause": 0.4})
    sc = load_scenario(f, ["targets.0.count=1"])
    req = execute(sc).records.requests.sort_values("request")
    assert isinstance(req, pd.DataFrame) and len(req) == 2
    gap = req["t_arrival"].iloc[1] - req["t_finish"].iloc[0]
    assert 0.4 <= gap < 0.6
