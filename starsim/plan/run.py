"""``starsim plan``: bound, confirm, choose, compare, write.

Writes into the output folder:

- ``candidates.parquet``: every candidate, its closed-form bounds, and for the simulated
  ones the simulator's throughput, TPOT p50/p99, TTFT p99, draft utilization and whether it
  meets the objectives (``status``: simulated, infeasible, pruned);
- ``frontier.csv``: the simulated candidates no other beats on both the ranking and TPOT p50;
- ``chosen.yaml``: the best simulated candidate that meets every objective, a scenario
  ready for ``starsim run`` (re-simulated, it gives the plan's numbers: same seed);
- ``baselines.csv``: no speculation and one draft per target on the chosen GPU budget;
- ``frontier.png`` and ``plan.json`` (the answer, why it binds, and the search's counts).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .plan_file import PlanFile
from .search import Family, bounds, candidate_scenario, families, meets, simulate_all

SIM_KEYS = ("throughput_tokens_per_s", "tpot_p50_s", "tpot_p99_s", "ttft_p99_s", "tpot_mean_s",
            "draft_utilization")


def _compose(df: pd.DataFrame, i: int, stars: dict[str, dict], plan: PlanFile) -> bool:
    """Candidate ``i``'s numbers from its simulated stars (False if one is missing): its
    throughput is the sum of its servers' stars; TPOT and TTFT percentiles the worst of
    its stars' (a mix meets an objective when each of its stars does)."""
    keys = df.at[i, "stars"].split(";")
    if any(k not in stars for k in keys):
        return False
    m, h = int(df.at[i, "drafts"]), int(df.at[i, "hi_count"])
    counts = ([m - h] if m > h else []) + ([h] if h else [])
    parts = [stars[k] for k in keys]
    x = sum(c * (p.get("throughput_tokens_per_s") or 0.0) for c, p in zip(counts, parts))
    df.at[i, "throughput_tokens_per_s"] = x
    for k in ("tpot_p50_s", "tpot_p99_s", "ttft_p99_s", "tpot_mean_s"):
        vals = [p.get(k) for p in parts]
        df.at[i, k] = None if any(v is None for v in vals) else max(vals)
    df.at[i, "draft_utilization"] = sum(c * (p.get("draft_utilization") or 0.0) for c, p in zip(counts, parts)) / m
    df.at[i, "meets"] = all(meets(p, plan)[0] for p in parts)
    df.at[i, "score"] = x / _per(df.loc[i], plan)
    df.at[i, "status"] = "simulated"
    return True


def _per(row: pd.Series, plan: PlanFile) -> float:
    """What the ranking divides throughput by: the candidate's GPUs, or what they cost an hour."""
    return float(row["gpus"] if plan.rank == "throughput_per_gpu" else row["price_per_hour"])


def _stars_of(df: pd.DataFrame, i: int, fams: list[Family]) -> dict[str, tuple[Family, int]]:
    """Candidate ``i``'s stars: key -> (family, targets), the ``lo`` star first, then ``lo + 1``'s if any."""
    fam, n = fams[int(df.at[i, "family"])], int(df.at[i, "targets"]) // int(df.at[i, "drafts"])
    return {key: (fam, k) for key, k in zip(df.at[i, "stars"].split(";"), (n, n + 1))}


def _simulate_stars(need: dict[str, tuple[Family, int]], base, plan, workers, ray, bar, stars) -> None:
    jobs = [(key, candidate_scenario(fam, base, plan, n, 1)) for key, (fam, n) in need.items()]
    stars.update(simulate_all(jobs, workers, ray, bar))


def search(plan: PlanFile, base: Path, fams: list[Family], workers, ray, say, bar) -> pd.DataFrame:
    """Bound every candidate, then confirm the best bounds with the simulator until no bound
    left can enter the top ``confirm.keep`` (see :mod:`starsim.plan.search`), then the
    closed-form frontier's points. A candidate's numbers come from its stars
    (:func:`starsim.plan.search.star_key`), each simulated once."""
    df = bounds(plan, fams)
    rank = f"cf_{plan.rank}"
    df["status"] = np.where(df["cf_feasible"], "pruned", "infeasible")
    for k in (*SIM_KEYS, "score"):
        df[k] = np.nan
    df["meets"] = False
    order = df[df["cf_feasible"]].sort_values([rank, "targets"], ascending=[False, True], kind="stable").index
    slack, keep, stars, pos = 1.0 + plan.confirm.slack, plan.confirm.keep, {}, 0
    pending = list(order)  # feasible candidates not yet confirmed
    while pos < len(order) and len(stars) < plan.confirm.max_sims:
        scores = sorted(df.loc[df["meets"].astype(bool), "score"], reverse=True)
        need: dict[str, tuple[Family, int]] = {}
        while pos < len(order) and len(need) < plan.confirm.batch:
            i = int(order[pos])
            if len(scores) >= keep and df.at[i, rank] * slack < scores[keep - 1]:
                pos = len(order)  # sorted: no bound left can enter the top `keep`
                break
            pos += 1
            for key, job in _stars_of(df, i, fams).items():
                if key not in stars and len(stars) + len(need) < plan.confirm.max_sims:
                    need.setdefault(key, job)
        if not need:
            break
        _simulate_stars(need, base, plan, workers, ray, bar, stars)
        pending = [i for i in pending if not _compose(df, i, stars, plan)]
    df.attrs["capped"] = pos < len(order) and len(stars) >= plan.confirm.max_sims
    front = _pareto(df[df["cf_feasible"]], rank, "cf_tpot_s")
    need = {key: job for i in _thin(front, plan.confirm.frontier)
            for key, job in _stars_of(df, i, fams).items() if key not in stars}
    if need:
        say(f"simulating {len(need)} more stars of the closed-form frontier")
        _simulate_stars(need, base, plan, workers, ray, bar, stars)
        for i in pending:
            _compose(df, i, stars, plan)
    df.attrs["stars"] = len(stars)
    return df


def _pareto(df: pd.DataFrame, up: str, down: str) -> list[int]:
    """Rows no other row beats on both ``up`` (higher is better) and ``down`` (lower)."""
    d = df.dropna(subset=[up, down]).sort_values([down, up], ascending=[True, False])
    out, best = [], -math.inf
    for i, v in zip(d.index, d[up]):
        if v > best:
            out.append(int(i))
            best = v
    return out


def _thin(rows: list[int], k: int) -> list[int]:
    if len(rows) <= k:
        return rows
    return [rows[int(j)] for j in np.unique(np.linspace(0, len(rows) - 1, k).round().astype(int))]


def baselines(plan: PlanFile, base: Path, fam: Family, gpus: int, workers, ray) -> list[dict[str, Any]]:
    """No speculation and one draft per target (on its target's GPU), each with as many
    targets as the chosen configuration's GPU budget holds."""
    n = max(1, gpus // fam.target.gpus)
    jobs = [(mode, candidate_scenario(fam, base, plan, n, 1, mode=mode)) for mode in plan.baselines]
    out = []
    for mode, s in simulate_all(jobs, workers, ray):
        ok, _ = meets(s, plan)
        x = s.get("throughput_tokens_per_s") or 0.0
        out.append({"baseline": mode, "targets": n, "gpus": n * fam.target.gpus, "meets": ok,
                    "throughput_per_gpu": x / (n * fam.target.gpus), **{k: s.get(k) for k in SIM_KEYS}})
    return sorted(out, key=lambda r: plan.baselines.index(r["baseline"]))


def why(df: pd.DataFrame, i: int, fam: Family, plan: PlanFile) -> dict[str, str]:
    """What limits the chosen configuration (draft saturated, verify- or link-bound) and which
    objective binds (the tightest, or the one the next better candidate misses)."""
    row = df.loc[i]
    util = row["draft_utilization"]
    per_draft = row["targets"] / row["drafts"]
    parts = {"drafting": fam.d, "verifying": fam.verify_s, "on the link": fam.link_s}
    top = max(parts, key=parts.get)
    each = ", ".join(f"{1e3 * v:.2f} ms {k}" for k, v in parts.items())
    if util is not None and util >= 0.9:
        limit = (f"draft-saturated: each draft is busy {100 * util:.0f}% serving {per_draft:g} targets "
                 f"(a round: {each}); more drafts or a faster draft GPU would add throughput")
    else:
        kind = {"drafting": "draft-bound", "verifying": "verify-bound", "on the link": "link-bound"}[top]
        limit = f"{kind}: a round is {each}; the draft is {100 * (util or 0):.0f}% busy"
    _, ratios = meets(row.to_dict(), plan)
    tight = max(ratios, key=lambda k: ratios[k] or 0.0)
    better = df[(df["status"] == "simulated") & (df["score"] > row["score"]) & ~df["meets"].astype(bool)]
    if len(better):
        b = better.sort_values("score", ascending=False).iloc[0]
        _, br = meets(b.to_dict(), plan)
        miss = [k for k, r in br.items() if r is None or r > 1.0]
        binds = (f"{', '.join(miss)} binds: the next better candidate ({_label(b)}, "
                 f"{b['score']:.4g} against {row['score']:.4g}) misses it "
                 + ", ".join(f"{k} {100 * (br[k] or math.inf):.0f}% of its bound" for k in miss))
    else:
        binds = (f"no objective binds: no simulated candidate scores higher; the tightest is {tight} at "
                 f"{100 * ratios[tight]:.0f}% of its bound")
    return {"limit": limit, "objective": binds}


def _label(row: pd.Series) -> str:
    return f"{row['target_option']} x{int(row['targets'])}, draft {row['draft_option']} x{int(row['drafts'])}"


def run_plan(plan: PlanFile, plan_path: Path, base: Path, out: Path, workers: int | None = None,
             ray: str | None = None, progress: bool = True, say: Callable[[str], None] = lambda m: None) -> dict:
    """The whole plan (see the module docstring); returns plan.json's content."""
    from tqdm.auto import tqdm

    from .plot import frontier_figure

    t0 = time.perf_counter()
    with tqdm(total=len(plan.targets) * len(plan.drafts) * len(plan.grid_points()), desc="options",
              unit="family", disable=not progress) as bar:
        fams = families(plan, base, bar.update, str(plan_path))
    say(f"{plan.name}: {plan.size():,} candidates in {len(fams)} families, bounded in closed form")
    with tqdm(desc="simulations", unit="run", disable=not progress) as bar:
        df = search(plan, base, fams, workers, ray, say, bar.update)
    sim = df[df["status"] == "simulated"]
    ok = sim[sim["meets"].astype(bool)]
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "candidates.parquet", index=False)
    front = df.loc[_pareto(sim, "score", "tpot_p50_s")].sort_values("tpot_p50_s")
    front.drop(columns=["family"]).to_csv(out / "frontier.csv", index=False)
    answer: dict[str, Any] = {
        "plan": str(plan_path), "base": _rel(base), "rank": plan.rank, "objectives": dict(plan.objectives.items()),
        "candidates": len(df), "families": len(fams), "infeasible_by_bound": int((df["status"] == "infeasible").sum()),
        "pruned": int((df["status"] == "pruned").sum()), "confirmed": len(sim),
        "simulated_stars": int(df.attrs.get("stars", 0)), "meet_objectives": len(ok),
        "search_capped": bool(df.attrs.get("capped")), "chosen": None, "baselines": []}
    if len(ok):
        answer["chosen"] = _choose(df, ok, fams, plan, plan_path, base, out, workers, ray)
        fam = fams[int(df.at[answer["chosen"]["row"], "family"])]
        answer["baselines"] = baselines(plan, base, fam, answer["chosen"]["gpus"], workers, ray)
        pd.DataFrame(answer["baselines"]).to_csv(out / "baselines.csv", index=False)
    frontier_figure(df, front, answer, plan, out / "frontier.png")
    answer["wall_s"] = time.perf_counter() - t0
    (out / "plan.json").write_text(json.dumps(answer, indent=2, default=str) + "\n")
    return answer


def _choose(df, ok, fams, plan, plan_path, base, out, workers, ray) -> dict[str, Any]:
    """The best score (among equals the smallest fleet), its scenario written, and the whole
    fleet simulated once more as one scenario: its numbers are what ``starsim run`` of
    chosen.yaml gives (the same seed), beside the ones composed from its stars."""
    i = int(ok.sort_values(["score", "targets"], ascending=[False, True], kind="stable").index[0])
    row, fam = df.loc[i], fams[int(df.at[i, "family"])]
    sc = candidate_scenario(fam, base, plan, int(row["targets"]), int(row["drafts"]))
    (out / "chosen.yaml").write_text(f"# starsim plan {plan_path}: the chosen configuration ({_label(row)})\n"
                                     + yaml.safe_dump(sc.to_dict(), sort_keys=False))
    (_, own), = simulate_all([("chosen", sc)], workers, ray)
    return {"row": i, "target_option": row["target_option"], "draft_option": row["draft_option"],
            "targets": int(row["targets"]), "drafts": int(row["drafts"]), "gpus": int(row["gpus"]),
            "grid": fam.grid, **{k: _num(own.get(k)) for k in SIM_KEYS},
            "score": (own.get("throughput_tokens_per_s") or 0.0) / _per(row, plan),
            "meets_in_its_own_run": meets(own, plan)[0],
            "composed_throughput_tokens_per_s": _num(row["throughput_tokens_per_s"]),
            **why(df, i, fam, plan), "scenario": str(out / "chosen.yaml")}


def _rel(p: Path) -> str:
    """``p`` relative to the working folder when it is under it (plan.json travels)."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
