"""`starsim execute` with serving targets: each target process keeps a running batch and
verifies it in one forward per step, drafting every decoding sequence in one multi-sequence
request; the run's tables are the simulator's (a steps table included), so `report` and
`validate` read it unchanged."""

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

STEP = {"overhead_s": 0.002, "per_token_s": 0.0001}  # the simulator's price; the real run measures its own


def _scenario(tmp_path, pair, *, max_seqs: int = 4, count: int = 1, **changes) -> str:
    sc = copy.deepcopy(CONST_STAR)
    t = sc["targets"][0]
    t["count"] = count
    t["serving"] = {"max_seqs": max_seqs, "step_time": STEP}
    sc["draft"]["batch"] = {"max": 1, "time": {"kind": "linear", "a": 0.004, "b": 0.001}}
    sc.update(max_requests=8, duration_s=60.0, warmup_s=0.0,
              workload={"kind": "closed", "concurrency": 4, "prompts": 4, "prompt_tokens": 30, "output_tokens": 20},
              real={"pair": str(pair)})
    sc.update(changes)
    f = tmp_path / "serving.yaml"
    f.write_text(yaml.safe_dump(sc))
    return str(f)


def test_a_serving_target_runs_for_real_and_is_lossless(tmp_path, quick_pair, quick_models):
    out = tmp_path / "run"
    f = _scenario(tmp_path, quick_pair)
    assert main(["execute", f, "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["requests_completed"] == 8 and s["requests_unfinished"] == 0 and not s["provenance"]["failures"]
    import pandas as pd

    steps = pd.read_parquet(out / "steps.parquet")
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert steps["running"].max() == 4  # four users, four slots: the batch fills
    assert steps["trees"].sum() == len(rounds[rounds["draft"] >= 0]) > 0
    assert steps["rounds"].sum() == len(rounds)
    assert 0 < s["draft_utilization"] <= 1 and s["mean_accepted_tokens"] >= 1 and s["serving"] is not None
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert sorted(o["request"] for o in outputs) == list(range(8))
    _, target, _ = quick_models  # each sequence's tokens are the target's own greedy ones, whatever shared its batch
    for o in outputs:
        assert o["output"] == target_generate(target, o["prompt"], 20, eos=target.config.eos_token_id)
    # one draft request per step: the draft server's busy intervals are the steps that drafted
    intervals = pd.read_parquet(out / "intervals.parquet")
    assert (intervals["kind"] == "draft").sum() == steps["trees"].gt(0).sum()
    assert main(["report", str(out)]) == 0
    assert list((out / "report").glob("fig8_serving.*"))  # batch and KV use over time


def test_open_loop_arrivals_join_a_running_batch(tmp_path, quick_pair):
    """Two targets take a fleet's arrivals when a slot is free; sampled (temperature 0.8): each
    step's trees come back with their draft probabilities, one request for the whole batch."""
    from starsim import load_scenario
    from starsim.real.execute import execute

    f = _scenario(tmp_path, quick_pair, max_seqs=3, count=2,
                  workload={"kind": "poisson", "rate_per_s": 20.0, "prompt_tokens": 30, "output_tokens": 16},
                  real={"pair": str(quick_pair), "temperature": 0.8})
    res = execute(load_scenario(f))
    s = res.summary
    assert s["requests_completed"] == 8 and not s["provenance"]["failures"]
    assert s["provenance"]["temperature"] == 0.8 and s["mean_accepted_tokens"] >= 1
    req = res.requests
    assert (req["t_start"] >= req["t_arrival"] - 1e-9).all()  # none starts before it arrived
    assert set(req["target"]) <= {0, 1} and req["request"].is_unique


def test_a_target_killed_mid_batch_loses_no_other_sequence(tmp_path, quick_pair):
    """Target 1 dies holding a batch: target 0 finishes every request it took, and each of
    target 1's requests in progress is in the table, unfinished."""
    from starsim import load_scenario
    from starsim.real.execute import execute

    f = _scenario(tmp_path, quick_pair, count=2, max_requests=None, duration_s=5.0,
                  workload={"kind": "closed", "concurrency": 3, "prompts": 4, "prompt_tokens": 30,
                            "output_tokens": 400},
                  real={"pair": str(quick_pair), "faults": [{"kind": "kill_target", "target": 1, "at_s": 1.5}]})
    res = execute(load_scenario(f))
    s, req = res.summary, res.requests
    assert "1" in s["provenance"]["failures"] and "0" not in s["provenance"]["failures"]
    lost = req[req["t_finish"].isna()]
    assert list(lost["target"]) == [1, 1, 1]  # its three users' requests, held when it died
    mine = req[req["target"] == 0]
    assert len(mine) >= 3 and mine["t_finish"].notna().all()  # target 0 served its own to the end
    assert req["request"].is_unique


def test_what_a_real_serving_target_cannot_run_is_refused_in_one_line(tmp_path, quick_pair, capsys, monkeypatch):
    f = _scenario(tmp_path, quick_pair)
    sc = yaml.safe_load(open(f))
    draft = sc["draft"]
    for change, msg in [
        ({"draft": {**draft, "pipeline": True}}, "draft.pipeline: not supported for real with serving targets"),
        ({"draft": {**draft, "policy": "edf"}}, "draft.policy: not supported for real"),
        ({"workload": {"kind": "poisson", "rate_per_s": 5.0, "prompt_tokens": 30, "output_tokens": 20,
                       "router": "round_robin"}},
         "workload.router"),
    ]:
        g = tmp_path / "bad.yaml"
        g.write_text(yaml.safe_dump({**sc, **change}))
        assert main(["execute", str(g)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and msg in err, err
    # a batch larger than this machine's free memory: refused before any process starts
    import starsim.real.serving_checks as checks

    monkeypatch.setattr(checks, "available_bytes", lambda device: 1024**2)
    assert main(["execute", f]) == 2
    err = capsys.readouterr().err.strip()
    assert "targets.0.serving.max_seqs: 4 sequences" in err and "GiB" in err and "\n" not in err, err
