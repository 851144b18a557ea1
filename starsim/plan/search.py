"""The planner's search: bound every candidate in closed form, confirm the best with the
simulator, stop when no bound left can beat what the simulator confirmed.

The closed form (:func:`starsim.analytic.closed_form`) is the asymptotic bound of the star's
closed queueing network: a cycle of ``max(d + z, n d)`` is never longer than what mean
times allow, so its throughput is an upper bound on what the simulator finds (variance only
adds queueing) and its time per output token a lower bound on the mean. The search uses it
both ways, with ``confirm.slack`` of margin:

- a candidate whose bound on the time per output token already misses an objective is
  infeasible;
- candidates are simulated in order of their bound on the ranking (throughput per GPU or
  per cost), ``confirm.batch`` at a time, in parallel; the search stops when the next
  bound, raised by the slack, is below the ``confirm.keep``-th best score the simulator
  confirmed (the rest are pruned: none of them can enter that top).

Demands (draft and target seconds per round, tokens per round) are computed once per
family (target option, draft option, grid point) by :func:`starsim.analytic.target_demand`;
fleet sizes and draft counts are numpy arrays over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analytic import closed_form, mean_context, target_demand
from ..errors import ScenarioError
from ..scenario import SERVER_ONLY, ClosedLoop, Scenario, load_scenario, parse_device_ref
from ..sweep.run import execute_points
from ..sweep.sweep_file import Point
from .plan_file import AT_LEAST, Option, PlanFile


@dataclass
class Family:
    """A target option, a draft option and a grid point: everything but the fleet's size."""

    target: Option
    draft: Option
    grid: dict[str, Any]
    scenario: Scenario  # one target, one draft: what the demands are computed on
    d: float  # draft seconds per round
    batch_times: list[float]  # seconds of a batch of 1, 2, ... draft.batch.max tasks (1: d)
    z: float  # target-side seconds per round
    verify_s: float
    link_s: float
    tokens_per_round: float
    decode_tokens_per_round: float
    profiles: dict  # the profile files read, shared by every family and candidate of a plan

    @property
    def overrides(self) -> dict[str, Any]:
        return {**self.target.set, **self.draft.set, **self.grid}


def _batch_times(sc: Scenario, d: float) -> list[float]:
    """A batch of 1 .. batch.max tasks at the mean context (a batch of 1 is a plain round, ``d``)."""
    b = sc.draft.batch
    if b.max <= 1 or b.time is None:
        return [d]
    ctx, depth = mean_context(sc), sc.draft.tree.depth
    return [d] + [float(b.time.mean(k, ctx, depth)) for k in range(2, b.max + 1)]


def families(plan: PlanFile, base: Path, progress: Callable[[int], None] | None = None,
             source: str = "plan") -> list[Family]:
    """Every family's scenario and demands; a bad option names the plan file (``source``),
    the option and the field."""
    out, profiles = [], {}
    for t in plan.targets:
        for d in plan.drafts:
            for g in plan.grid_points():
                over = {**plan.set, **t.set, **d.set, **g, "targets.0.count": 1}
                try:
                    sc = load_scenario(base, over, profiles)
                except ScenarioError as e:
                    where = f"targets {t.name}, drafts {d.name}" + (f", grid {g}" if g else "")
                    raise ScenarioError(f"{source} ({where}) -> {e.source}", e.problems) from None
                if sc.mode != "star":
                    raise ScenarioError(str(base), [("mode", f"a plan searches stars; the base is {sc.mode}")])
                dem = target_demand(sc, sc.targets[0].name, sc.targets[0])
                out.append(Family(t, d, g, sc, dem.d, _batch_times(sc, dem.d), dem.z, dem.verify_s, dem.link_s,
                                  dem.tokens_per_round, dem.decode_tokens_per_round, profiles))
                if progress is not None:
                    progress(1)
    return out


def bounds(plan: PlanFile, fams: list[Family]) -> pd.DataFrame:
    """One row per candidate: its family, fleet (targets, drafts) and closed-form bounds."""
    pairs = np.array([(t, m) for t in plan.space.targets for m in plan.space.drafts if m <= t], dtype=float)
    k = len(pairs)
    f = np.repeat(np.arange(len(fams)), k)
    T, M = np.tile(pairs[:, 0], len(fams)), np.tile(pairs[:, 1], len(fams))
    col = {name: np.array([getattr(x, name) for x in fams])[f]
           for name in ("d", "z", "tokens_per_round", "decode_tokens_per_round")}
    width = max(len(x.batch_times) for x in fams)
    batch = np.array([x.batch_times + [np.inf] * (width - len(x.batch_times)) for x in fams])[f]
    lo = np.floor(T / M)
    hi_count = T - lo * M  # servers with one target more
    x_lo = closed_form(lo, col["d"], col["z"], col["tokens_per_round"], batch)
    x_hi = closed_form(lo + 1, col["d"], col["z"], col["tokens_per_round"], batch)
    throughput = (M - hi_count) * x_lo["throughput_tokens_per_s"] + hi_count * x_hi["throughput_tokens_per_s"]
    worst_cycle = np.where(hi_count > 0, x_hi["cycle_s"], x_lo["cycle_s"])
    # an open loop may run below saturation: its bound on TPOT is a round alone, not the saturated cycle
    closed = np.array([isinstance(x.scenario.workload, ClosedLoop) for x in fams])[f]
    tpot = np.where(closed, worst_cycle, col["d"] + col["z"]) / col["decode_tokens_per_round"]
    tg = np.array([x.target.gpus for x in fams])[f]
    dg = np.array([x.draft.gpus for x in fams])[f]
    gpus = T * tg + M * dg
    cost = plan.cost_per_gpu_hour
    price = (T * tg * np.array([cost.get(x.target.gpu, np.nan) for x in fams])[f]
             + M * dg * np.array([cost.get(x.draft.gpu, np.nan) for x in fams])[f])
    df = pd.DataFrame({
        "family": f, "target_option": [fams[i].target.name for i in f], "draft_option": [fams[i].draft.name for i in f],
        "targets": T.astype(int), "drafts": M.astype(int), "gpus": gpus.astype(int),
        "cf_throughput_tokens_per_s": throughput, "cf_tpot_s": tpot,
        "cf_draft_utilization": np.where(hi_count > 0, x_hi["draft_utilization"], x_lo["draft_utilization"]),
        "stars": _stars(fams, f, lo, hi_count, M), "hi_count": hi_count.astype(int),
    })
    df["price_per_hour"] = price if cost else np.nan  # what the candidate's GPUs cost, as given
    df["cf_throughput_per_gpu"] = throughput / gpus
    df["cf_throughput_per_cost"] = throughput / price if cost else np.nan
    for key in plan.space.grid:
        df[key] = [_cell(fams[i].grid[key]) for i in f]
    slack = 1.0 + plan.confirm.slack
    tpot_bounds = [v for k, v in plan.objectives.items() if k.startswith("tpot")]
    feasible = df["cf_tpot_s"] <= (min(tpot_bounds) * slack if tpot_bounds else np.inf)
    load = plan.objectives.throughput_tokens_per_s
    if load is not None:  # an offered load: the closed form bounds throughput from above
        feasible &= df["cf_throughput_tokens_per_s"] * slack >= load
    if plan.max_gpus is not None:
        feasible &= df["gpus"] <= plan.max_gpus
    df["cf_feasible"] = feasible
    return df


def star_key(fam: Family, n: int) -> str:
    """One star of ``n`` targets of a family, as the simulator runs it: a batch never holds
    more tasks than the star has targets, and a batch window is moot without batching, so
    families that differ only there run the same star."""
    b = fam.scenario.draft.batch
    most = min(b.max, n)
    rest = {k: v for k, v in fam.grid.items() if k not in ("draft.batch.max", "draft.batch.window_s")}
    return f"{fam.target.name}|{fam.draft.name}|{rest}|batch {most}|window {b.window_s if most > 1 else 0}|n {n}"


def _stars(fams: list[Family], f: np.ndarray, lo: np.ndarray, hi_count: np.ndarray, M: np.ndarray) -> list[str]:
    """Each candidate's stars: servers alike (target i on server i mod M), a candidate is
    ``M - h`` stars of ``lo`` targets and ``h`` of ``lo + 1``; its numbers are theirs, so
    each star is simulated once, whatever fleets it appears in."""
    out = []
    for i, n, h, m in zip(f, lo.astype(int), hi_count.astype(int), M.astype(int)):
        keys = ([star_key(fams[i], n)] if m > h else []) + ([star_key(fams[i], n + 1)] if h else [])
        out.append(";".join(keys))
    return out


def _cell(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def candidate_scenario(fam: Family, base: Path, plan: PlanFile, targets: int, drafts: int,
                       mode: str = "star", extra: dict[str, Any] | None = None) -> Scenario:
    """The family's scenario for a fleet: ``targets`` instances, ``drafts`` servers (a
    fabric, target i on server i mod M), pools grown to hold them; ``extra`` overrides
    last (labels, a longer horizon)."""
    sc = fam.scenario
    over: dict[str, Any] = {**plan.set, **fam.overrides, "targets.0.count": targets}
    if mode != "star":  # a baseline has no draft server: the server's features do not apply
        over = {k: v for k, v in over.items()
                if not any(k == f or k.startswith(f + ".") or f.startswith(k + ".") for f in SERVER_ONLY)}
    t_pool, _ = parse_device_ref(sc.targets[0].device)
    d_pool, d_unit = parse_device_ref(sc.draft.device)
    need = {t_pool: targets}
    if mode == "star":
        if drafts > 1:
            over["draft.fabric.servers"] = drafts
        need[d_pool] = need.get(d_pool, 0) + (d_unit or 0) + drafts
    else:
        over["mode"] = mode
    for pool, n in need.items():
        if sc.devices[pool].count < n:
            over[f"devices.{pool}.count"] = n
    return load_scenario(base, {**over, **(extra or {})}, fam.profiles)


def pools(fam: Family) -> tuple[str, str]:
    """The target's and the draft's device pools in the family's scenario."""
    return parse_device_ref(fam.scenario.targets[0].device)[0], parse_device_ref(fam.scenario.draft.device)[0]


def horizon(fam: Family, factor: float) -> dict[str, Any]:
    """Overrides that make the measured window (duration less warm-up and cool-down)
    ``factor`` times the plan's; none when the run is not bounded by ``duration_s``."""
    sc = fam.scenario
    if factor == 1 or sc.duration_s is None:
        return {}
    edges = sc.warmup_s + sc.cooldown_s
    return {"duration_s": round(edges + (sc.duration_s - edges) * factor, 6)}


def simulate_all(jobs: list[tuple[str, Scenario]], workers: int | None, ray: str | None,
                 progress: Callable[[int], None] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, summary scalars) of each simulated scenario, as they finish (in parallel). A plan
    reads totals only, so a fleet of serving targets runs without rounds rows (``record_rounds:
    false``): the same numbers (tests/test_serving.py), faster."""
    points = [Point(i, {"key": key}, lean(sc)) for i, (key, sc) in enumerate(jobs)]
    for p, rec in execute_points(points, workers=workers, ray=ray):
        if progress is not None:
            progress(1)
        yield p.values["key"], rec["summary"]


def lean(sc: Scenario) -> Scenario:
    """``sc`` as a plan simulates it: see :func:`simulate_all`."""
    if sc.record_rounds and all(g.serving is not None for g in sc.targets):
        return sc.model_copy(update={"record_rounds": False})
    return sc


def meets(summary: dict[str, Any], plan: PlanFile) -> tuple[bool, dict[str, float | None]]:
    """Whether a simulated run meets every objective, and each objective's value / bound."""
    ratios = {}
    for key, bound in plan.objectives.items():
        v = summary.get(key)
        if v is None or not math.isfinite(v):
            ratios[key] = None
        else:  # a floor (a load to carry) is met when the value reaches it: bound / value <= 1
            ratios[key] = (bound / v if v > 0 else math.inf) if key in AT_LEAST else v / bound
    return all(r is not None and r <= 1.0 for r in ratios.values()), ratios
