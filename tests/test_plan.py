"""`starsim plan` (issue 18): the planner's choice against an exhaustive simulation, its
pruning against the simulator's ranking, its written scenario, and bad plan files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import CONST_STAR

from starsim import load_scenario, simulate
from starsim.cli import main
from starsim.plan.plan_file import load_plan
from starsim.plan.run import run_plan
from starsim.plan.search import candidate_scenario, families, lean, meets

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "scenarios" / "plans").glob("*.yaml"))


def _const_plan(tmp_path: Path, **extra) -> Path:
    """A plan over the constant-time star: one draft time, two links, fleets and draft counts."""
    sc = copy.deepcopy(CONST_STAR)
    sc.update(duration_s=30.0, warmup_s=2.0)
    sc["workload"].update(output_tokens=60)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(sc))
    plan = {"name": "const", "base": "base.yaml",
            "targets": [{"name": "g", "gpu": "G"}],
            "drafts": [{"name": "fast", "gpu": "G"}, {"name": "slow", "gpu": "G", "set": {"draft.time": 0.006}}],
            "space": {"targets": ["1-6"], "drafts": [1, 2, 3], "grid": {"targets.0.link.latency_s": [0.001, 0.004]}},
            "objectives": {"tpot_p50_s": 0.0065},
            "baselines": ["autoregressive"],
            "confirm": {"batch": 2, "max_sims": 200, "slack": 0.05, "frontier": 0}, **extra}
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan, sort_keys=False))
    return p


def _exhaustive(plan, base) -> list[tuple[float, bool, tuple]]:
    """(score, meets, key) of every candidate, each simulated; key: (target option, draft
    option, targets, drafts, grid values)."""
    out = []
    for fam in families(plan, base):
        for t in plan.space.targets:
            for m in plan.space.drafts:
                if m > t:
                    continue
                s = simulate(lean(candidate_scenario(fam, base, plan, t, m))).summary
                gpus = t * fam.target.gpus + m * fam.draft.gpus
                out.append((s["throughput_tokens_per_s"] / gpus, meets(s, plan)[0],
                            (fam.target.name, fam.draft.name, t, m, tuple(fam.grid.values()))))
    return out


def _key(row, plan) -> tuple:
    return (row["target_option"], row["draft_option"], int(row["targets"]), int(row["drafts"]),
            tuple(row[k] for k in plan.space.grid))


def test_on_a_constant_time_plan_the_choice_is_the_exhaustive_best(tmp_path):
    plan, base = load_plan(_const_plan(tmp_path))
    a = run_plan(plan, tmp_path / "plan.yaml", base, tmp_path / "out", workers=1, progress=False)
    every = _exhaustive(plan, base)
    best = max((s, k) for s, ok, k in every if ok)
    c = a["chosen"]
    assert (c["target_option"], c["draft_option"], c["targets"], c["drafts"], tuple(c["grid"].values())) == best[1]
    assert c["score"] == pytest.approx(best[0], rel=0.02)  # the whole fleet's own run: its stars' noise
    assert a["simulated_stars"] < len(every)  # the bounds pruned some: not an exhaustive search itself


def test_the_chosen_scenario_resimulates_to_the_plans_numbers(tmp_path):
    plan, base = load_plan(_const_plan(tmp_path))
    a = run_plan(plan, tmp_path / "plan.yaml", base, tmp_path / "out", workers=1, progress=False)
    s = simulate(load_scenario(tmp_path / "out" / "chosen.yaml")).summary
    assert s["throughput_tokens_per_s"] == pytest.approx(a["chosen"]["throughput_tokens_per_s"], rel=0.02)
    assert meets(s, plan)[0]
    for f in ("frontier.csv", "frontier.png", "candidates.parquet", "plan.json", "baselines.csv"):
        assert (tmp_path / "out" / f).is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_no_top_five_candidate_of_a_shipped_plan_is_pruned(tmp_path, path):
    # the shipped plan on a space small enough to simulate whole (every option kept)
    data = yaml.safe_load(path.read_text())
    data["base"] = str((path.parent / data["base"]).resolve())
    data["space"]["targets"] = [2, 6]
    data["space"]["drafts"] = [1, 2]
    # each axis's two largest values: where a serving plan's candidates meet its objectives
    data["space"]["grid"] = {k: v[-2:] for k, v in data["space"]["grid"].items()}
    data["confirm"] = {**data.get("confirm", {}), "max_sims": 1000, "frontier": 0}
    if any("serving" in k for k in data["space"]["grid"]):  # serving runs cost ~10x more: a smaller space
        data["space"]["targets"] = [2, 4]
        data["targets"], data["drafts"] = data["targets"][-1:], data["drafts"][-1:]
    else:
        data["targets"], data["drafts"] = data["targets"][-2:], data["drafts"][-2:]
    p = tmp_path / "small.yaml"
    p.write_text(yaml.safe_dump(data))
    plan, base = load_plan(p)
    from starsim.plan.run import search

    df = search(plan, base, families(plan, base), 1, None, lambda m: None, None)
    status = {_key(r, plan): r["status"] for _, r in df.iterrows()}
    every = sorted(_exhaustive(plan, base), reverse=True)
    top = [k for _, ok, k in every if ok][:5]
    assert top, "no candidate meets the objectives on the small space"
    for k in top:  # simulated, or a copy of a simulated star mix: never pruned
        assert status[k] == "simulated", (k, status[k])


@pytest.mark.parametrize("change, expect", [
    ({"objectives": {}}, "objectives: give at least one objective"),
    ({"space": {"targets": [0]}}, "space.targets"),
    ({"space": {"targets": ["4-2"]}}, "range '4-2'"),
    ({"rank": "throughput_per_cost"}, "cost_per_gpu_hour has no price for ['G']"),
    ({"base": "missing.yaml"}, "no scenario file at"),
    ({"targets": [{"name": "g", "gpu": "G", "set": {"targets.0.verify_tme": 0.01}}]}, "verify_tme"),
    ({"budget": 3}, "budget"),
])
def test_a_bad_plan_file_is_exit_2_with_the_field(tmp_path, capsys, change, expect):
    p = _const_plan(tmp_path)
    data = yaml.safe_load(p.read_text())
    data.update(change)
    p.write_text(yaml.safe_dump(data))
    assert main(["plan", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expect in err and str(p) in err


def test_the_command_prints_the_answer(tmp_path, capsys):
    p = _const_plan(tmp_path)
    assert main(["plan", str(p), "--out", str(tmp_path / "o"), "--quiet", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "recommended:" in out and "limit:" in out and "vs autoregressive" in out and "verdict:" in out
    a = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert a["chosen"]["scenario"].endswith("chosen.yaml")


def test_an_open_loop_plan_bounds_tpot_from_below(tmp_path):
    # at a light arrival rate the stars never saturate: the TPOT bound is a round alone
    p = _const_plan(tmp_path)
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["workload"] = {"kind": "poisson", "rate_per_s": 5.0, "prompt_tokens": 50, "output_tokens": 60}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    plan, base_path = load_plan(p)
    from starsim.plan.run import search

    df = search(plan, base_path, families(plan, base_path), 1, None, lambda m: None, None)
    sim = df[df["status"] == "simulated"]
    assert len(sim) and (sim["cf_tpot_s"] <= sim["tpot_mean_s"] * 1.02).all()


def test_a_plan_ranked_by_cost_prefers_the_cheaper_gpu(tmp_path):
    # two draft GPUs as fast as each other, one at a tenth of the price: per cost, the cheap one
    p = _const_plan(tmp_path, rank="throughput_per_cost", cost_per_gpu_hour={"G": 2.0, "C": 0.2})
    data = yaml.safe_load(p.read_text())
    data["drafts"] = [{"name": "dear", "gpu": "G"}, {"name": "cheap", "gpu": "C"}]
    p.write_text(yaml.safe_dump(data))
    plan, base = load_plan(p)
    a = run_plan(plan, p, base, tmp_path / "out", workers=1, progress=False)
    assert a["chosen"]["draft_option"] == "cheap"


# ---- the answer among stars and baselines, by the plan's own ranking

# three contests on the constant-time star (tokens per round 4; verify 10 ms; link 1 or 4 ms each way):
# - "o4o": every draft on the targets' GPU G: one draft per target (4 ms + 10 ms a round, no link, no
#   draft GPU) beats any star per GPU;
# - "star": the fast draft is on its own GPU D, the one on G is slow (12 ms): a star of 4 targets on
#   one fast draft (16 ms a round, 5 GPUs) beats a slow draft per target (22 ms a round) per GPU;
# - "cost": the same, ranked per cost with D priced at 3 G's: the star's draft GPU costs it the lead.
CONTESTS = {
    "o4o": {},
    "star": {"drafts": [{"name": "fast", "gpu": "D"}, {"name": "slowg", "gpu": "G", "set": {"draft.time": 0.012}}]},
    "cost": {"drafts": [{"name": "fast", "gpu": "D"}, {"name": "slowg", "gpu": "G", "set": {"draft.time": 0.012}}],
             "rank": "throughput_per_cost", "cost_per_gpu_hour": {"G": 1.0, "D": 3.0}},
}
EXPECT = {"o4o": "one_for_one", "star": "star", "cost": "one_for_one"}


def _contest_plan(tmp_path: Path, name: str) -> Path:
    p = _const_plan(tmp_path, baselines=["autoregressive", "one_for_one"], **CONTESTS[name])
    data = yaml.safe_load(p.read_text())
    data["space"].update(targets=["1-4"], drafts=[1, 2])
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _every_deployment(plan, base) -> list[dict]:
    """Every star candidate and every baseline (each mode, target option, co-located draft
    option on the target's GPU, grid point, at every fleet size), each simulated whole."""
    cost = plan.cost_per_gpu_hour
    out = []
    for fam in families(plan, base):
        t, d = fam.target, fam.draft
        ct, cd = t.gpus * cost.get(t.gpu, 0), d.gpus * cost.get(d.gpu, 0)
        runs = [("star", n, m, n * t.gpus + m * d.gpus, n * ct + m * cd)
                for n in plan.space.targets for m in plan.space.drafts if m <= n]
        runs += [(mode, n, 1, n * t.gpus, n * ct) for mode in plan.baselines
                 for n in plan.space.targets if mode != "one_for_one" or d.gpu == t.gpu]
        for mode, n, m, gpus, price in runs:
            s = simulate(candidate_scenario(fam, base, plan, n, m, mode=mode)).summary
            x = s["throughput_tokens_per_s"]
            out.append({"mode": mode, "target_option": t.name,
                        "draft_option": None if mode == "autoregressive" else d.name, "targets": n, "drafts": m,
                        "grid": tuple(fam.grid.values()), "meets": meets(s, plan)[0],
                        "score": x / (gpus if plan.rank == "throughput_per_gpu" else price)})
    return out


_CONTESTS: dict[str, tuple] = {}


def _contest(tmp_path_factory, name: str):
    """(plan, output folder, answer, every deployment simulated) of a contest, run once per session."""
    if name not in _CONTESTS:
        d = tmp_path_factory.mktemp(f"contest-{name}")
        p = _contest_plan(d, name)
        plan, base = load_plan(p)
        a = run_plan(plan, p, base, d / "out", workers=1, progress=False)
        _CONTESTS[name] = (plan, d / "out", a, _every_deployment(plan, base))
    return _CONTESTS[name]


def _identity(e: dict) -> tuple:
    """What a deployment is; a baseline's fleet size and grid aside (its targets run alone:
    its score does not depend on them, the link is not on its path)."""
    if e["mode"] != "star":
        return e["mode"], e["target_option"], e["draft_option"]
    return e["mode"], e["target_option"], e["draft_option"], e["targets"], e["drafts"], tuple(e["grid"])


@pytest.mark.parametrize("name", list(CONTESTS))
def test_the_recommended_answer_is_the_exhaustive_best_of_stars_and_baselines(tmp_path_factory, name):
    plan, out, a, every = _contest(tmp_path_factory, name)
    best = max((e for e in every if e["meets"]), key=lambda e: e["score"])
    r = a["recommended"]
    assert r["mode"] == best["mode"] == EXPECT[name]
    got = {**r, "grid": tuple(r["grid"].values())}
    assert _identity(got) == _identity(best)
    assert r["score"] == pytest.approx(best["score"], rel=0.02)
    assert r["meets"] and a["chosen"] == r and r["scenario"].endswith("chosen.yaml")
    for b in a["baselines"]:  # never beaten by a baseline it printed
        assert not b["meets"] or b["score"] <= r["score"] * (1 + 1e-9)
    s = simulate(load_scenario(out / "chosen.yaml")).summary  # the written winner is what was judged
    assert s["throughput_tokens_per_s"] == pytest.approx(r["throughput_tokens_per_s"], rel=0.02)
    assert (out / "best_star.yaml").is_file() == (r["mode"] != "star")


def test_with_throughput_per_cost_the_baselines_are_ranked_per_cost(tmp_path_factory, capsys):
    plan, out, a, _ = _contest(tmp_path_factory, "cost")
    per_gpu = _contest(tmp_path_factory, "star")[2]
    assert per_gpu["recommended"]["mode"] == "star"  # per GPU the star wins; per cost the baseline
    assert a["recommended"]["mode"] == "one_for_one"
    for b in a["baselines"]:
        assert b["price_per_hour"] == pytest.approx(b["gpus"] * 1.0)  # every target on G at 1 $/h
        assert b["score"] == pytest.approx(b["throughput_tokens_per_s"] / b["price_per_hour"])
    s = a["best_star"]
    assert s["score"] == pytest.approx(s["throughput_tokens_per_s"] / s["price_per_hour"])
    from starsim.plan.commands import format_answer

    text = format_answer(a, plan.rank)
    assert "tok/s per $/h" in text and "the best star's tok/s per $/h" in text


def test_the_written_scenario_describes_the_candidate(tmp_path):
    # targets of 2 GPUs each (tensor parallel): the pool says so
    p = _const_plan(tmp_path, baselines=["autoregressive", "one_for_one"],
                    targets=[{"name": "g2", "gpu": "G TP2", "gpus": 2}],
                    drafts=[{"name": "fast", "gpu": "G TP2"}, {"name": "dd", "gpu": "D", "set": {"draft.time": 0.002}}])
    data = yaml.safe_load(p.read_text())
    data["space"] = {"targets": [2, 3], "drafts": [1]}
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    plan, base = load_plan(p)
    a = run_plan(plan, p, base, tmp_path / "out", workers=1, progress=False)
    r = a["recommended"]
    assert r["mode"] == "one_for_one"  # the co-located draft: no link, no draft GPU
    sc = load_scenario(tmp_path / "out" / "chosen.yaml")
    assert sc.mode == "one_for_one"
    assert sc.name == f"plan-const-one_for_one-g2x{r['targets']}" == r["name"]
    assert sc.description.startswith(f"one_for_one: {r['targets']} targets on G TP2 (2 GPUs each), each with its own "
                                     "draft (fast) on its GPU")
    assert str(p) in sc.description
    assert sc.devices["g"].type == "G TP2" and sc.devices["g"].gpus == 2
    assert "unused" in sc.devices["d"].type
    s = a["best_star"]  # the best star, written beside it
    star = load_scenario(tmp_path / "out" / "best_star.yaml")
    assert star.mode == "star" and s["scenario"].endswith("best_star.yaml")
    assert star.name == f"plan-const-star-g2x{s['targets']}-draft-{s['draft_option']}x{s['drafts']}"
    assert star.description.startswith(f"star: {s['targets']} targets on G TP2 (2 GPUs each), ")
    assert star.devices["g"].type == "G TP2" and star.devices["d"].type == s["draft_gpu"]
    for old in ("const", "gpu", "draft"):  # nothing of the base scenario's labels
        assert old not in (sc.name, sc.devices["g"].type)


def test_a_p99_objective_lengthens_the_deciding_runs_until_it_has_its_requests(tmp_path, capsys):
    # 2 s measured: a few dozen requests; the floor (100) needs a longer window, which the answer says
    p = _const_plan(tmp_path, baselines=["one_for_one"], set={"duration_s": 4.0, "warmup_s": 2.0},
                    objectives={"tpot_p50_s": 0.0065, "ttft_p99_s": 1.0})
    data = yaml.safe_load(p.read_text())
    data["space"] = {"targets": [2], "drafts": [1]}
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["plan", str(p), "--out", str(tmp_path / "o"), "--quiet", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    a = json.loads((tmp_path / "o" / "plan.json").read_text())
    r = a["recommended"]
    assert r["tails"]["ttft_p99_s"]["samples"] >= 100 and r["ttft_samples"] >= 100
    assert 1 < r["horizon_factor"] <= 8 and r["measured_s"] == pytest.approx(2.0 * r["horizon_factor"])
    assert load_scenario(tmp_path / "o" / "chosen.yaml").duration_s == pytest.approx(2.0 + r["measured_s"])
    assert f"TTFT p99 {1e3 * r['ttft_p99_s']:.0f} ms (from {r['ttft_samples']} requests)" in out
    assert "x the plan's 2 s" in out
    # capped at the plan's own window: the answer says the p99 is short
    data["confirm"]["max_horizon"] = 1
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["plan", str(p), "--out", str(tmp_path / "o2"), "--quiet", "--jobs", "1"]) == 0
    assert "FEWER than the 100 a p99 objective needs" in capsys.readouterr().out


def test_plan_schema_describes_every_field(capsys):
    assert main(["plan", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    models = [schema, *schema["$defs"].values()]
    for m in models:
        for k, v in m["properties"].items():
            assert v.get("description"), (m.get("title"), k)
    confirm = schema["$defs"]["Confirm"]["properties"]
    assert {"batch", "max_sims", "slack", "keep", "frontier", "tail_samples", "max_horizon"} <= set(confirm)
    assert main(["plan"]) == 2  # neither a file nor --schema


def _tree_plan(tmp_path: Path, acceptance: dict | None) -> Path:
    """The Qwen3 pair on H100, one draft option searched over two trees."""
    pytest.importorskip("aiconfigurator_core")
    base = REPO / "scenarios" / "gpu" / "qwen3-8b-qwen3-06b-h100_sxm.yaml"
    plan = {"name": "trees", "base": str(base),
            "set": {"duration_s": 8, "warmup_s": 1, "cooldown_s": 0,
                    **({"acceptance": acceptance} if acceptance else {})},
            "targets": [{"name": "h100", "gpu": "H100 SXM"}],
            "drafts": [{"name": "h100", "gpu": "H100 SXM", "trees": [[10, 5, 59], [4, 4, 20]]}],
            "space": {"targets": [2, 4], "drafts": [1]},
            "objectives": {"tpot_p50_s": 0.05}, "baselines": ["autoregressive"],
            "confirm": {"batch": 4, "max_sims": 20, "frontier": 0}}
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan, sort_keys=False))
    return p


def test_trees_are_an_axis_each_priced_and_accepting_as_its_shape(tmp_path):
    """A draft option's trees become options of their own, each with its draft profile priced
    for that tree (cheaper for the smaller tree) and, on a ranked acceptance, its own tokens
    per round (fewer for the smaller tree)."""
    ranked = {"kind": "ranked", "ranked": [[0.6, 0.15, 0.06, 0.03, 0.02], [0.7, 0.12, 0.04], [0.72, 0.1, 0.03]]}
    p = _tree_plan(tmp_path, ranked)
    plan, base = load_plan(p)
    assert plan.size() == 2 * 2  # two trees, two fleet sizes
    from starsim.plan.priced import expand

    wide = expand(plan, base, tmp_path / "profiles")
    assert [d.name for d in wide.drafts] == ["h100-t10-5-59", "h100-t4-4-20"]
    fams = families(wide, base)
    big, small = fams
    assert small.scenario.draft.tree.tokens == 20 and big.scenario.draft.tree.tokens == 59
    assert small.d < big.d and small.tokens_per_round < big.tokens_per_round
    answer = run_plan(plan, p, base, tmp_path / "out", workers=1, progress=False)
    assert answer["recommended"] is not None
    assert sorted(x.name for x in (tmp_path / "out" / "profiles").glob("*.yaml")) == [
        "qwen3-8b-qwen3-06b.draft.h100_sxm-vllm-tp1.bfloat16-tree10-5-59.yaml",
        "qwen3-8b-qwen3-06b.draft.h100_sxm-vllm-tp1.bfloat16-tree4-4-20.yaml"]


def test_a_tree_axis_needs_acceptance_that_follows_the_tree(tmp_path, capsys):
    p = _tree_plan(tmp_path, None)  # the base's marginal curve: every tree would accept alike
    assert main(["plan", str(p), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "drafts.0.trees: the base's acceptance (marginal) does not follow the tree" in err
    bad = yaml.safe_load(p.read_text())
    bad["drafts"][0]["trees"] = [[4, 4, 400]]
    p.write_text(yaml.safe_dump(bad))
    assert main(["plan", str(p), "--quiet"]) == 2
    assert "tree [4, 4, 400]: tokens=400 exceeds the 340 nodes" in capsys.readouterr().err


def test_an_offered_load_and_a_gpu_budget_bound_the_answer(tmp_path):
    """throughput_tokens_per_s is a floor the answer must reach (a load to carry) and max_gpus a
    ceiling on every deployment: no candidate over the budget is simulated, none under the load
    meets the objectives, and the recommended one does both."""
    p = _const_plan(tmp_path)
    data = yaml.safe_load(p.read_text())
    data["objectives"]["throughput_tokens_per_s"] = 800.0
    data["max_gpus"] = 7
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    plan, base = load_plan(p)
    answer = run_plan(plan, p, base, tmp_path / "out", workers=1, progress=False)
    import pandas as pd

    df = pd.read_parquet(tmp_path / "out" / "candidates.parquet")
    assert not (df["gpus"] > 7).any() or (df.loc[df["gpus"] > 7, "status"] == "infeasible").all()
    sim = df[df["status"] == "simulated"]
    assert (sim.loc[sim["meets"].astype(bool), "throughput_tokens_per_s"] >= 800.0).all()
    rec = answer["recommended"]
    assert rec is not None and rec["gpus"] <= 7 and rec["throughput_tokens_per_s"] >= 800.0
    assert answer["baseline_budget"]["gpus"] <= 7
    ok, ratios = meets({"throughput_tokens_per_s": 400.0, "tpot_p50_s": 0.001}, plan)
    assert not ok and ratios["throughput_tokens_per_s"] == pytest.approx(2.0)


def test_a_co_located_draft_uses_no_gpu_of_its_own_and_takes_turns(tmp_path):
    """A draft option with gpus 0 puts its servers on the targets' units (draft.device: g[0]):
    its candidates count only the targets' GPUs, and its scenario shares units, which the
    simulator takes turns on."""
    from starsim.notices import shared_units

    p = _const_plan(tmp_path)
    data = yaml.safe_load(p.read_text())
    data["drafts"] = [{"name": "own", "gpu": "G"}, {"name": "shared", "gpu": "G", "gpus": 0,
                                                    "set": {"draft.device": "g[0]"}}]
    data["space"] = {"targets": [2, 4], "drafts": [1]}
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    plan, base = load_plan(p)
    fams = families(plan, base)
    shared = next(f for f in fams if f.draft.name == "shared")
    sc = candidate_scenario(shared, base, plan, 4, 1)
    assert shared_units(sc) == {"g[0]": ["the draft server", "t-0"]}
    from starsim.plan.search import bounds

    df = bounds(plan, fams)
    assert (df.loc[df["draft_option"] == "shared", "gpus"] == df.loc[df["draft_option"] == "shared", "targets"]).all()
    data["drafts"][1]["set"] = {}
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(Exception, match="gpus 0 \\(co-located\\) needs set.draft.device"):
        load_plan(p)


def test_a_per_forward_overhead_prices_every_profile_again(tmp_path):
    """overhead_us re-prices each option's imported profiles with it: a draft round (one forward
    a level) grows by depth x the overhead, a verify by one."""
    pytest.importorskip("aiconfigurator_core")
    p = _tree_plan(tmp_path, None)
    data = yaml.safe_load(p.read_text())
    data["drafts"][0].pop("trees")
    data["overhead_us"] = 100
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    plan, base = load_plan(p)
    from starsim.plan.priced import expand

    plain = families(plan, base)[0]
    (fam,) = families(expand(plan, base, tmp_path / "profiles"), base)
    depth = fam.scenario.draft.tree.depth
    assert fam.d - plain.d == pytest.approx(depth * 100e-6, rel=0.05)
    assert fam.verify_s - plain.verify_s == pytest.approx(100e-6, rel=0.05)
    names = sorted(x.name for x in (tmp_path / "profiles").glob("*.yaml"))
    assert names == ["qwen3-8b-qwen3-06b.draft.h100_sxm-vllm-tp1.bfloat16-oh100us.yaml",
                     "qwen3-8b-qwen3-06b.target.h100_sxm-vllm-tp1.bfloat16-oh100us.yaml"]
