"""``starsim plan``: bound, confirm, decide, write.

The answer is the best deployment by the plan's ``rank`` among those that meet every
objective in the run that decides them: the best star the search confirmed (its whole fleet
simulated as one scenario) and the baselines (no speculation; one draft per target on its
target's GPU) on that star's GPU budget, for every target option. If the leader's p99
objectives rest on fewer than ``confirm.tail_samples`` requests, every deciding run is
simulated again with a longer measured window (at most ``confirm.max_horizon`` times the
plan's), and the leader taken again.

Writes into the output folder:

- ``candidates.parquet``: every candidate, its closed-form bounds, and for the simulated
  ones the simulator's throughput, TPOT p50/p99, TTFT p99, draft utilization and whether it
  meets the objectives (``status``: simulated, infeasible, pruned), composed from its stars;
- ``frontier.csv``: the simulated candidates no other beats on both the ranking and TPOT p50;
- ``chosen.yaml``: the recommended deployment (a star or a baseline), a scenario named and
  described by what it holds, ready for ``starsim run`` (re-simulated, it gives the plan's
  numbers: same seed, same horizon);
- ``best_star.yaml``: the best star, when a baseline is recommended;
- ``baselines.csv``: the baselines' deciding runs on the best star's GPU budget;
- ``frontier.png`` and ``plan.json`` (``recommended``, ``best_star``, ``baselines``, the
  verdict, why the star binds, the search's counts; ``chosen`` is ``recommended``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..scenario import Scenario
from .plan_file import PlanFile
from .priced import expand as expand_priced
from .search import Family, bounds, candidate_scenario, families, horizon, meets, pools, simulate_all

SIM_KEYS = ("throughput_tokens_per_s", "tpot_p50_s", "tpot_p99_s", "ttft_p99_s", "tpot_mean_s",
            "draft_utilization")
COUNT_KEYS = ("rounds", "requests_completed")  # summed over a candidate's servers
TAILS = ("ttft_p99_s", "tpot_p99_s")  # the objectives a sample count must back
MODES = ("star", "one_for_one", "autoregressive")


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
    for k in COUNT_KEYS:
        df.at[i, k] = sum(c * (p.get(k) or 0) for c, p in zip(counts, parts))
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
    for k in (*SIM_KEYS, *COUNT_KEYS, "score"):
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



@dataclass
class Deployment:
    """One way to serve the plan, star or baseline, and the run that decides it."""

    mode: str  # star, one_for_one, autoregressive
    fam: Family
    targets: int
    drafts: int  # draft servers (star), one per target (one_for_one), none (autoregressive)
    gpus: int
    price: float | None  # what its GPUs cost an hour, as given
    grid: dict[str, Any]  # the grid fields that matter to it
    row: int | None = None  # a star: its row in the candidates
    note: str = ""
    run: dict[str, Any] = field(default_factory=dict)  # the deciding run's summary and sample counts
    scenario: Scenario | None = None
    factor: float = 1.0  # its measured window, over the plan's

    @property
    def key(self) -> str:
        return f"{self.mode}|{self.fam.target.name}|{self.draft_name}|{self.targets}|{self.drafts}|{self.grid}"

    @property
    def draft_name(self) -> str | None:
        return None if self.mode == "autoregressive" else self.fam.draft.name

    def score(self, plan: PlanFile) -> float:
        """Its deciding run's throughput per GPU, or per $/h: the plan's ``rank``."""
        x = self.run.get("throughput_tokens_per_s") or 0.0
        return x / (self.gpus if plan.rank == "throughput_per_gpu" else (self.price or math.nan))

    def meets(self, plan: PlanFile) -> bool:
        return bool(self.run) and meets(self.run, plan)[0]


def _star(df: pd.DataFrame, i: int, fams: list[Family]) -> Deployment:
    """Candidate ``i`` (a star the search confirmed) as a deployment to decide."""
    row = df.loc[i]
    return Deployment("star", fams[int(row["family"])], int(row["targets"]), int(row["drafts"]), int(row["gpus"]),
                      _num(row["price_per_hour"]), dict(fams[int(row["family"])].grid), row=i)


# what a baseline ignores of the grid: the draft server's features, the wire between a target and
# a remote draft (one_for_one drafts in process), and for autoregressive decoding any draft field
_SERVER = ("draft.batch", "draft.fabric", "draft.adaptive", "draft.pipeline", "draft.parse_time",
           "draft.serialize_time")
_WIRE = ("link", "payload", "send_time", "receive_time")


def _matters(key: str, mode: str) -> bool:
    parts = key.split(".")
    if any(key == p or key.startswith(p + ".") for p in _SERVER):
        return False
    if parts[0] == "targets" and len(parts) > 2 and parts[2] in _WIRE:
        return False
    return not (mode == "autoregressive" and parts[0] in ("draft", "acceptance"))


def baseline_deployments(plan: PlanFile, fams: list[Family], budget: int,
                         star: Deployment | None) -> list[Deployment]:
    """Each baseline of the plan, on ``budget`` GPUs (as many targets as it holds), for every
    target option and every grid point that matters to it (see ``_matters``). A
    one_for_one draft runs on its target's GPU: the draft options whose ``gpu`` is the
    target's (if none, the best star's draft option, priced on its own GPU: said so)."""
    out: dict[tuple, Deployment] = {}
    cost = plan.cost_per_gpu_hour
    for fam in fams:
        t = fam.target
        n = max(1, budget // t.gpus)
        price = n * t.gpus * cost[t.gpu] if cost and t.gpu in cost else None
        for mode in plan.baselines:
            note = ""
            if mode == "one_for_one":
                same = [d.name for d in plan.drafts if d.gpu == t.gpu]
                pick = same or [star.fam.draft.name if star else plan.drafts[0].name]
                if fam.draft.name not in pick:
                    continue
                if not same:
                    note = f" (no draft option on {t.gpu}: its draft priced as on {fam.draft.gpu})"
            grid = {k: v for k, v in fam.grid.items() if _matters(k, mode)}
            key = (mode, t.name, None if mode == "autoregressive" else fam.draft.name, repr(grid))
            if key not in out:
                out[key] = Deployment(mode, fam, n, n if mode == "one_for_one" else 0, n * t.gpus, price, grid,
                                      note=note)
    return list(out.values())


def _labels(dep: Deployment, plan: PlanFile, plan_path: Path) -> dict[str, Any]:
    """Overrides that name, describe and type the written scenario by what it holds."""
    t, d = dep.fam.target, dep.fam.draft
    t_pool, d_pool = pools(dep.fam)
    tp = f" ({t.gpus} GPUs each)" if t.gpus > 1 else ""
    grid = "".join(f", {k}={v}" for k, v in dep.grid.items())
    n = dep.targets
    if dep.mode == "star":
        name = f"plan-{plan.name}-star-{t.name}x{n}-draft-{d.name}x{dep.drafts}"
        what = (f"star: {n} targets on {t.gpu}{tp}, {dep.drafts} draft server{'s' if dep.drafts > 1 else ''} "
                f"({d.name}) on {d.gpu}{grid}")
    elif dep.mode == "one_for_one":
        alike = sum(1 for o in plan.drafts if o.gpu == d.gpu) > 1
        name = f"plan-{plan.name}-one_for_one-{t.name}x{n}" + (f"-draft-{d.name}" if alike else "")
        what = f"one_for_one: {n} targets on {t.gpu}{tp}, each with its own draft ({d.name}) on its GPU{grid}"
    else:
        name = f"plan-{plan.name}-autoregressive-{t.name}x{n}"
        what = f"autoregressive: {n} targets on {t.gpu}{tp}, no speculation{grid}"
    over: dict[str, Any] = {"name": name, "description": f"{what}{dep.note}; from starsim plan {plan_path}",
                            f"devices.{t_pool}.type": t.gpu, f"devices.{t_pool}.gpus": t.gpus}
    if d_pool != t_pool:
        if dep.mode == "star":
            over.update({f"devices.{d_pool}.type": d.gpu, f"devices.{d_pool}.gpus": d.gpus})
        else:
            over[f"devices.{d_pool}.type"] = ("unused by one_for_one (each draft runs on its target's GPU)"
                                              if dep.mode == "one_for_one" else "unused by autoregressive (no draft)")
    return over


def _short(dep: Deployment, plan: PlanFile) -> list[tuple[str, int]]:
    """The p99 objectives given whose deciding run has fewer samples than ``confirm.tail_samples``."""
    floor, counts = plan.confirm.tail_samples, _samples(dep.run)
    return [(k, counts[k]) for k, _ in plan.objectives.items() if k in TAILS and counts[k] < floor]


def _samples(run: dict[str, Any]) -> dict[str, int]:
    return {"ttft_p99_s": int(run.get("ttft_samples") or 0), "tpot_p99_s": int(run.get("tpot_samples") or 0),
            "tpot_p50_s": int(run.get("tpot_samples") or 0)}


def _ranked(deps: list[Deployment], plan: PlanFile) -> list[Deployment]:
    """Those meeting every objective in their deciding run, best score first (then fewer GPUs)."""
    ok = [d for d in deps if d.meets(plan)]
    return sorted(ok, key=lambda d: (-d.score(plan), d.gpus, MODES.index(d.mode)))


def decide(deps: list[Deployment], plan: PlanFile, base: Path, plan_path: Path, workers, ray,
           say: Callable[[str], None]) -> Deployment | None:
    """Simulate every deployment (its scenario labelled, as written) and take the best that
    meets the objectives (else the star, flagged); while that one's p99 objectives rest on
    fewer than ``confirm.tail_samples`` requests, simulate them all again with a longer
    measured window (the same for all: one comparison), at most ``confirm.max_horizon``
    times the plan's."""
    factor, cap = 1.0, plan.confirm.max_horizon
    while True:
        for d in deps:
            d.scenario = candidate_scenario(d.fam, base, plan, d.targets, max(d.drafts, 1), mode=d.mode,
                                            extra={**_labels(d, plan, plan_path), **horizon(d.fam, factor)})
            d.factor = factor
        runs = dict(simulate_all([(d.key, d.scenario) for d in deps], workers, ray))
        for d in deps:
            d.run = runs[d.key]
        ranked = _ranked(deps, plan)
        lead = ranked[0] if ranked else next((d for d in deps if d.mode == "star"), None)
        if lead is None:
            return None
        short = _short(lead, plan)
        if not short or factor >= cap or not horizon(lead.fam, 2.0):
            return lead
        least = min(n for _, n in short)
        factor = float(min(cap, max(factor + 1, math.ceil(factor * 1.1 * plan.confirm.tail_samples / max(least, 1)))))
        say(f"{', '.join(f'{k} from {n} requests' for k, n in short)} in the leader's run ({lead.mode}): "
            f"simulating the {len(deps)} deciding runs again over {factor:g}x the plan's measured window")


def _entry(dep: Deployment, plan: PlanFile, scenario: Path | None = None) -> dict[str, Any]:
    """A deployment as plan.json gives it: what it is, its deciding run's numbers and sample counts."""
    r, t, d = dep.run, dep.fam.target, dep.fam.draft
    ok, ratios = meets(r, plan)
    x = r.get("throughput_tokens_per_s") or 0.0
    counts = _samples(r)
    sc = dep.scenario
    edges = (sc.warmup_s + sc.cooldown_s) if sc is not None else 0.0
    return {"mode": dep.mode, "name": sc.name if sc else None, "description": sc.description if sc else None,
            "target_option": t.name, "target_gpu": t.gpu, "draft_option": dep.draft_name,
            "draft_gpu": None if dep.mode == "autoregressive" else d.gpu,
            "targets": dep.targets, "gpus_per_target": t.gpus, "drafts": dep.drafts, "gpus": dep.gpus,
            "price_per_hour": dep.price,
            "grid": dep.grid, **{k: _num(r.get(k)) for k in SIM_KEYS},
            "throughput_per_gpu": x / dep.gpus, "throughput_per_cost": x / dep.price if dep.price else None,
            "score": dep.score(plan), "meets": ok, "objective_ratios": ratios,
            "rounds": r.get("rounds"), "requests_completed": r.get("requests_completed"),
            "ttft_samples": r.get("ttft_samples"), "tpot_samples": r.get("tpot_samples"),
            "tails": {k: {"value": _num(r.get(k)), "samples": counts[k], "floor": plan.confirm.tail_samples,
                          "objective": dict(plan.objectives.items()).get(k)} for k in TAILS},
            "duration_s": sc.duration_s if sc else None,
            "measured_s": (sc.duration_s - edges) if sc is not None and sc.duration_s is not None else None,
            "horizon_factor": dep.factor, "scenario": str(scenario) if scenario else None}


def _star_entry(dep: Deployment, df: pd.DataFrame, fams: list[Family], plan: PlanFile,
                scenario: Path | None) -> dict[str, Any]:
    i = int(dep.row)
    row = df.loc[i]
    e = _entry(dep, plan, scenario)
    composed = {k: _num(row[k]) for k in (*SIM_KEYS, *COUNT_KEYS, "score")}
    return {"row": i, **e, "meets_in_its_own_run": e["meets"], "composed": composed,
            "composed_throughput_tokens_per_s": composed["throughput_tokens_per_s"],
            **why(df, i, dep.fam, plan)}


def _baseline_entry(dep: Deployment, plan: PlanFile, star: Deployment | None,
                    scenario: Path | None = None) -> dict[str, Any]:
    e = _entry(dep, plan, scenario)
    gain = star.score(plan) / e["score"] if star is not None and star.run and e["score"] else None
    return {"baseline": dep.mode, **e, "star_over_this": gain}


def _verdict(rec: Deployment | None, star: Deployment | None, base_deps: list[Deployment], plan: PlanFile) -> str:
    unit = "tok/s per GPU" if plan.rank == "throughput_per_gpu" else "tok/s per $/h"
    if rec is None:
        return "no simulated deployment meets the objectives: relax them, or widen the space"
    if not rec.meets(plan):
        return ("no deployment met every objective in its deciding run; the best star (which met them composed "
                "from its stars) is written, flagged: see plan.json")
    if rec.mode == "star":
        ok = _ranked(base_deps, plan)
        if not ok:
            return "the star is the best way found to meet the objectives: no baseline meets them"
        b = ok[0]
        return (f"the star is the best way found to meet the objectives: {rec.score(plan) / b.score(plan):.2f}x "
                f"the {unit} of the best baseline that meets them ({b.mode}, {b.targets} x {b.fam.target.name})")
    what = f"{rec.mode} ({rec.targets} x {rec.fam.target.name})"
    if star is not None and star.meets(plan) and star.score(plan) > 0:
        cmp = (f"meets the objectives with {rec.score(plan) / star.score(plan):.2f}x the best star's {unit}: on "
               "these profiles one shared draft does not pay")
    elif star is not None:
        cmp = "meets the objectives; the best star misses them in its own run"
    else:
        cmp = "meets the objectives; no star candidate does"
    return (f"{what} {cmp}; recommended and written as chosen.yaml"
            + (", the best star as best_star.yaml" if star is not None else ""))


def why(df: pd.DataFrame, i: int, fam: Family, plan: PlanFile) -> dict[str, str]:
    """What limits the best star (draft saturated, verify- or link-bound) and which
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


def _budget(df: pd.DataFrame, plan: PlanFile) -> tuple[int, str]:
    """The baselines' GPU budget when no star meets the objectives (and where it comes from):
    the best simulated star's GPUs, else the largest fleet of the first target option."""
    sim = df[df["status"] == "simulated"]
    if len(sim):
        best = sim.sort_values(["score", "targets"], ascending=[False, True], kind="stable").iloc[0]
        return int(best["gpus"]), "the budget of the best simulated star, which misses an objective"
    return max(plan.space.targets) * plan.targets[0].gpus, "the largest fleet: no star was simulated"


def _write(dep: Deployment, path: Path, plan_path: Path, what: str, plan: PlanFile) -> Path:
    grow = (f"; its measured window is {dep.factor:g}x the plan's, so that each p99 objective rests on "
            f"{plan.confirm.tail_samples} requests or more" if dep.factor > 1 else "")
    path.write_text(f"# starsim plan {plan_path}: {what} ({dep.scenario.description.split(';')[0]}){grow}\n"
                    + yaml.safe_dump(dep.scenario.to_dict(), sort_keys=False))
    return path


def run_plan(plan: PlanFile, plan_path: Path, base: Path, out: Path, workers: int | None = None,
             ray: str | None = None, progress: bool = True, say: Callable[[str], None] = lambda m: None) -> dict:
    """The whole plan (see the module docstring); returns plan.json's content."""
    from tqdm.auto import tqdm

    from .plot import frontier_figure

    t0 = time.perf_counter()
    plan = expand_priced(plan, base, out / "profiles", str(plan_path), say)  # trees, an overhead: priced here
    with tqdm(total=len(plan.targets) * len(plan.drafts) * len(plan.grid_points()), desc="options",
              unit="family", disable=not progress) as bar:
        fams = families(plan, base, bar.update, str(plan_path))
    say(f"{plan.name}: {plan.size():,} candidates in {len(fams)} families, bounded in closed form")
    with tqdm(desc="simulations", unit="run", disable=not progress) as bar:
        df = search(plan, base, fams, workers, ray, say, bar.update)
    sim = df[df["status"] == "simulated"]
    ok = sim[sim["meets"].astype(bool)]
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("chosen.yaml", "best_star.yaml", "baselines.csv"):
        (out / stale).unlink(missing_ok=True)  # a previous answer in the same folder is not this one's
    df.to_parquet(out / "candidates.parquet", index=False)
    front = df.loc[_pareto(sim, "score", "tpot_p50_s")].sort_values("tpot_p50_s")
    front.drop(columns=["family"]).to_csv(out / "frontier.csv", index=False)
    answer: dict[str, Any] = {
        "plan": str(plan_path), "base": _rel(base), "rank": plan.rank, "objectives": dict(plan.objectives.items()),
        "candidates": len(df), "families": len(fams), "infeasible_by_bound": int((df["status"] == "infeasible").sum()),
        "pruned": int((df["status"] == "pruned").sum()), "confirmed": len(sim),
        "simulated_stars": int(df.attrs.get("stars", 0)), "meet_objectives": len(ok),
        "search_capped": bool(df.attrs.get("capped")), "tail_samples": plan.confirm.tail_samples,
        "recommended": None, "chosen": None, "best_star": None, "baselines": [], "verdict": None}
    star = None
    if len(ok):  # the best composed score (among equals the smallest fleet)
        star = _star(df, int(ok.sort_values(["score", "targets"], ascending=[False, True], kind="stable").index[0]),
                     fams)
    budget, whence = (star.gpus, "the best star's budget") if star else _budget(df, plan)
    if plan.max_gpus is not None and budget > plan.max_gpus:
        budget, whence = plan.max_gpus, "the plan's max_gpus"
    answer["baseline_budget"] = {"gpus": budget, "from": whence}
    base_deps = baseline_deployments(plan, fams, budget, star)
    rec = decide(([star] if star else []) + base_deps, plan, base, plan_path, workers, ray, say)
    if rec is not None:
        chosen = _write(rec, out / "chosen.yaml", plan_path, "the recommended deployment", plan)
        star_file = (None if star is None else chosen if rec is star
                     else _write(star, out / "best_star.yaml", plan_path, "the best star", plan))
        if star is not None:
            answer["best_star"] = _star_entry(star, df, fams, plan, star_file)
        answer["recommended"] = (answer["best_star"] if rec is star
                                 else _baseline_entry(rec, plan, star, chosen))
        answer["chosen"] = answer["recommended"]
    answer["baselines"] = sorted((_baseline_entry(d, plan, star, out / "chosen.yaml" if d is rec else None)
                                  for d in base_deps),
                                 key=lambda b: (not b["meets"], -b["score"]))
    if base_deps:
        pd.DataFrame([{k: v for k, v in b.items() if not isinstance(v, dict)} for b in answer["baselines"]]).to_csv(
            out / "baselines.csv", index=False)
    answer["verdict"] = _verdict(rec, star, base_deps, plan)
    frontier_figure(df, front, answer, plan, out / "frontier.png")
    answer["wall_s"] = time.perf_counter() - t0
    (out / "plan.json").write_text(json.dumps(answer, indent=2, default=str) + "\n")
    return answer


def _rel(p: Path) -> str:
    """``p`` relative to the working folder when it is under it (plan.json travels)."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
