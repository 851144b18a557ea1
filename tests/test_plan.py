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
from starsim.plan.search import candidate_scenario, families, meets

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
                s = simulate(candidate_scenario(fam, base, plan, t, m)).summary
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
    data["space"]["grid"] = {k: v[:2] for k, v in data["space"]["grid"].items()}
    data["confirm"] = {**data.get("confirm", {}), "max_sims": 1000, "frontier": 0}
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
    assert "chosen:" in out and "limit:" in out and "vs autoregressive" in out
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
