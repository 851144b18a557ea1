"""analysis/hf_assisted.py: Hugging Face's assisted generation observed round by round, and
the chain scenario it sets beside it (scenarios/real_cpu_one_for_one_chain.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CODE_PROMPTS, REPO, analysis_script

from starsim.errors import StarsimError

SCENARIO = REPO / "scenarios" / "real_cpu_one_for_one_chain.yaml"


def _script():
    return analysis_script("hf_assisted")


def test_the_chain_is_priced_by_a_profile_of_that_chain():
    # the file prices its chain of 4 with chain-4's draft_round, and each k's overrides swap in
    # chain-k's: each timed on that very chain, on the file's core, with one thread, as its
    # header says they were made
    from starsim.scenario import load_scenario

    sc = load_scenario(SCENARIO)
    assert sc.mode == "one_for_one" and sc.draft.time is None and sc.draft.encode_per_token_s == 0
    assert (sc.draft.tree.top_k, sc.draft.tree.depth, sc.draft.tree.tokens) == (1, 4, 4)
    rt = sc.draft.round_time
    assert rt.kind == "profile" and rt.op == "draft_round"
    script = _script()
    assert Path(rt.path) == (SCENARIO.parent / script.chain_profile(4)).resolve()
    cpus = sorted(sc.devices["core"].unit_cpus(0))
    means = []
    for k in (2, 4, 6):
        sk = load_scenario(SCENARIO, script.chain(k, [0.5] * k))
        prof = sk.draft.round_time.file
        assert prof.model["role"] == "draft" and prof.device["threads"] == 1
        assert dict(prof.ops["draft_round"].fixed["tree"]) == {"top_k": 1, "depth": k, "tokens": k}
        assert prof.provenance["cpus"] == cpus
        command = " ".join(prof.provenance["command"].split())
        assert f"--tree 1,{k},{k}" in command and "--ops draft_round" in command and f"/chain-{k}" in command
        assert sk.draft.warm_cold is not None  # each round scaled by the chain's own warm/cold curve
        means.append(sk.draft.mean_round(2, 150))
    assert means == sorted(means)  # a longer chain, a longer round
    with pytest.raises(StarsimError, match="differs from the tree"):  # a chain's profile with another tree
        load_scenario(SCENARIO, {**script.chain(6), "draft.round_time.path": script.chain_profile(4)})


def test_chain_overrides_load():
    from starsim.scenario import load_scenario

    sc = load_scenario(SCENARIO, _script().chain(6, [0.9, 0.7, 0.5, 0.3, 0.2, 0.1]))
    assert (sc.draft.tree.top_k, sc.draft.tree.depth, sc.draft.tree.tokens) == (1, 6, 6)
    assert sc.acceptance.curve == [0.9, 0.7, 0.5, 0.3, 0.2, 0.1]


def _fake_run(k: int = 2) -> object:
    """An HF run of two requests, its times made up: every steady round a 4 ms draft, a 5 ms
    verify and 1 ms around it; each request's first round 20 ms after a 1 ms set-up."""
    script = _script()
    requests, t = [], 0.0
    for n_rounds in (5, 8):
        t += 0.002  # the loop between requests
        start = t
        t += 0.001
        rounds = [script.HFRound(start=t, draft_s=0.008, forward_s=0.006, drafted=k, verify_s=0.01, verifies=1,
                                 accepted=1)]
        t += 0.02
        for _ in range(n_rounds - 1):
            rounds.append(script.HFRound(start=t, draft_s=0.004, forward_s=0.003, drafted=k, verify_s=0.005,
                                         verifies=1, accepted=k))
            t += 0.01
        requests.append(script.HFRequest([1] * 40, [2] * 10, start, t, rounds))
    return script.HFRun(k, requests, t + 0.002)


def test_hf_costs_price_one_for_one_by_hf_s_own_times():
    from starsim.scenario import load_scenario
    from starsim.sim import simulate

    script, run = _script(), _fake_run()
    outside = run.outside()
    # outside the steady rounds: set-up, the first round, the loop's time, shared out evenly
    assert outside == pytest.approx([0.021 + 0.003, 0.021 + 0.003])
    assert sum(outside) + sum(c for _, c in run.steady()) == pytest.approx(run.wall_s)
    c = run.components()
    assert (c["draft_s"], c["verify_s"], c["cycle_s"]) == pytest.approx((0.004, 0.005, 0.01))
    assert c["per_request_s"] == pytest.approx(0.024)
    over = {**script.chain(2, [0.6, 0.3], profile=False), **script.hf_costs(run)}
    sc = load_scenario(SCENARIO, over)
    assert sc.draft.round_time.kind == sc.targets[0].verify_time.kind == "empirical"
    sim = script.mean_components([simulate(load_scenario(SCENARIO, {**over, "seed": s})) for s in (0, 1)])
    # a simulated round is HF's steady one: its draft, then the rest of the round as the verify
    assert (sim["draft_s"], sim["verify_s"], sim["cycle_s"]) == pytest.approx((0.004, 0.006, 0.01))
    # and each request's time outside them is HF's, as the prefill (which emits one token: HF's
    # first round emits its accepted ones too, so the simulator runs that much more in rounds)
    assert sim["per_request_s"] == pytest.approx(0.024)


def test_a_missing_pair_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "analysis" / "hf_assisted.py"), "--pair", str(tmp_path),
                        "--no-write"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: no built pair") and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.real
@pytest.mark.xdist_group("real")
def test_hf_assisted_is_lossless_and_counts_its_rounds(quick_models):
    from starsim.real.speculation import target_generate

    tok, target, draft = quick_models
    k, n = 2, 20
    before = draft.generation_config.to_dict()
    prompts = [(tok.encode(p).ids, n) for p in CODE_PROMPTS[:2]]
    run = _script().hf_assisted(target, draft, prompts, k)
    for req, (ids, _) in zip(run.requests, prompts):
        # greedy assisted generation emits the target's own greedy tokens
        assert req.output == target_generate(target, ids, n, eos=target.config.eos_token_id)
        # each round: one target forward, its accepted draft tokens plus the target's own
        assert len(req.output) == len(req.rounds) + sum(r.accepted for r in req.rounds)
        assert all(r.verifies == 1 and 0 <= r.accepted <= r.drafted <= k for r in req.rounds)
    assert run.tokens == 2 * n or any(r.output[-1] == target.config.eos_token_id for r in run.requests)
    curve = run.marginal()
    assert len(curve) == k and curve == sorted(curve, reverse=True)
    assert run.tokens_per_round() == pytest.approx(1 + sum(curve))
    c = run.components()
    assert c["cycle_s"] >= c["draft_s"] + c["verify_s"] and c["draft_s"] >= c["forward_s"] > 0
    assert sum(run.outside()) + sum(t for _, t in run.steady()) == pytest.approx(run.wall_s)
    assert draft.generation_config.to_dict() == before  # the shared fixture's model is left as it was
