"""``starsim validate``: the closed form, the simulator and the real backend on one scenario,
and how far each prediction is from the real run.

For each point of an optional sweep (``--sweep targets.0.count=1,2,3,4``), the real run goes
first; by default its measured acceptance curve then feeds the simulator and the closed
form (``acceptance="real"``), so the predictions differ from reality only in time, not in
what the pair accepts. Shared machines drift in speed by 10% and more over minutes, so each
profile-based time is also scaled by how fast the machine is at the run against at that
profile's calibration: by default (``speed="spot"``) by re-timing the profile's own op right
before the run; ``"matmul"``: by a reference matmul timed around the run against the
profile's (``provenance.reference_matmul_s``); ``"none"``: as measured.

The table holds, per metric, the three values and each prediction's error against the
real run (absolute and percent), with the mean absolute percentage error (MAPE) over the
sweep. With ``repeat`` > 1 (the command's default is 3) the real value is the mean of that
many runs, and the runs' run-to-run spread (CV) sits beside it: on a shared machine that
spread is the floor under any prediction's error, and the table names the points where it
is at least the error. With one run it says that the spread is unknown. The simulator's
misses are attributed to components by setting the two ``rounds`` tables side by side hop
by hop (:func:`starsim.metrics.hop_means`): draft time, verify time, link, queueing, the
server's parse/serialize and the target's own time between rounds.

Everything here compares numbers the metrics module and the closed form computed; no
metric is computed twice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .errors import StarsimError
from .metric_display import displays
from .metrics import hop_means
from .profile_fields import foreign_profiles
from .profile_fields import profile_fields as _profile_fields
from .real.resources import pinned
from .scenario import parse_device_ref

# (summary key, label, unit, scale from the summary's SI value): the metrics validate compares
METRICS: tuple[tuple[str, str, str, float], ...] = tuple(displays(
    "draft_utilization", "draft_idle_gap_mean_s", "draft_idle_gap_p99_s", "draft_idle_ratio_mean",
    "throughput_tokens_per_s", "target_tokens_per_s_mean", "ttft_mean_s", "tpot_mean_s", "draft_queue_wait_mean_s",
    "target_tokens_per_s_jain", "target_weighted_jain", "slo_attainment", "speculation_depth_mean",
    "rounds_without_speculation", "fabric_repairs", "draft_evictions", "pipeline_hit_rate", "draft_wasted_fraction",
))

# the components a round's time is made of, as hop_means names them
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("draft time", ("draft_s",)),
    ("verify time", ("verify_s", "verify_wait_s")),
    ("link", ("link_up_s", "link_down_s")),
    ("queueing", ("queue_s",)),
    ("server parse/serialize", ("parse_s", "serialize_s")),
    ("target between rounds", ("between_rounds_s",)),
)


def _mean_ref(ref: dict | None) -> float | None:
    vals = [v for v in ((ref or {}).get("before"), (ref or {}).get("after")) if isinstance(v, (int, float)) and v > 0]
    return sum(vals) / len(vals) if vals else None


def scale_overrides(scenario, ratios: dict[str, float]) -> list[str]:
    """``--set`` overrides that multiply each profile timing's ``scale`` by its ratio
    (``ratios``: field path -> machine speed now / at the profile's calibration)."""
    by_path = dict(_profile_fields(scenario))
    return [f"{p}.scale={by_path[p].scale * r!r}" for p, r in ratios.items()]


def speed_overrides(scenario, real_summary: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """``--set`` overrides that rescale each profile-based timing by how fast the machine
    was during the real run against during that profile's calibration (both timed on the
    same reference matmul with the same threads on the same device), and the ratios used. A
    profile measured with other threads, on another device or without the reference, is
    left as is."""
    real_ref = real_summary.get("provenance", {}).get("reference_matmul_s") or {}
    now = _mean_ref(real_ref)
    ratios: dict[str, float] = {}
    if now is None:
        return [], ratios
    for path, prof in _profile_fields(scenario):
        f = prof.file
        op = f.ops.get(prof.op)
        then = op.reference_s if op is not None else None  # the speed its fit is normalized to
        if then is None:  # a profile before drift normalization: the reference around its calibration
            then = _mean_ref(f.provenance.get("reference_matmul_s"))
        same_device = f.device.get("torch_device", "cpu") == real_ref.get("device", "cpu")
        if then is None or f.device.get("threads") != real_ref.get("threads") or not same_device:
            continue  # timed otherwise: the two references are not comparable
        ratios[path] = now / then
    return scale_overrides(scenario, ratios), ratios


def role_cpus(scenario, path: str) -> frozenset[int] | None:
    """The cores the role of profile field ``path`` is declared on (``draft.*``: the draft's
    device, ``targets.I.*``: group I's; a pool's unit 0 when the reference names no unit);
    None where the scenario declares none."""
    ref = scenario.draft.device if path.startswith("draft.") else scenario.targets[int(path.split(".")[1])].device
    pool, unit = parse_device_ref(ref)
    return scenario.devices[pool].unit_cpus(unit or 0)


def spot_overrides(scenario) -> tuple[list[str], dict[str, float]]:
    """``--set`` overrides that rescale each profile-based timing by re-timing its op on this
    machine now (:func:`starsim.calibrate.compute.spot_check`, at three of the profile's grid
    points, with the profile's threads) against what the profile measured there."""
    from .calibrate.compute import SPOT_OPS, spot_check

    ratios, seen = {}, {}
    for path, prof in _profile_fields(scenario):
        if prof.op not in SPOT_OPS:
            continue
        cpus = role_cpus(scenario, path)
        key = (prof.path, prof.op, cpus)
        if key not in seen:  # one timing per profile op and placement, whichever fields use it
            with pinned(cpus):  # where the run runs that role: another core may be another speed
                seen[key] = spot_check(prof.file, prof.op, int(prof.file.device.get("threads") or 1))
        ratios[path] = seen[key]
    return scale_overrides(scenario, ratios), ratios


def parse_sweep(spec: str | None) -> tuple[str | None, list[str]]:
    """``"targets.0.count=1,2,3"`` -> ("targets.0.count", ["1", "2", "3"])."""
    if not spec:
        return None, [""]
    field_path, eq, values = spec.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not field_path.strip() or not vals:
        raise StarsimError(f"--sweep {spec}: expected FIELD=V1,V2,... (e.g. targets.0.count=1,2,3,4)")
    return field_path.strip(), vals


def _err(pred: float | None, real: float | None) -> tuple[float | None, float | None]:
    if pred is None or real is None or not (math.isfinite(pred) and math.isfinite(real)):
        return None, None
    return pred - real, (100.0 * (pred - real) / abs(real) if real != 0 else None)


def compare(real: dict[str, Any], sim: dict[str, Any], analytic: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per metric: the three values (in the metric's display unit) and each
    prediction's error against the real run."""
    def get(d, key, scale):
        v = None if d is None else d.get(key)
        return None if v is None else float(v) * scale

    rows = []
    for key, label, unit, scale in METRICS:
        r, s, a = get(real, key, scale), get(sim, key, scale), get(analytic, key, scale)
        sim_abs, sim_pct = _err(s, r)
        an_abs, an_pct = _err(a, r)
        rows.append({"metric": key, "label": label, "unit": unit, "real": r, "sim": s, "analytic": a,
                     "sim_err": sim_abs, "sim_err_pct": sim_pct, "analytic_err": an_abs, "analytic_err_pct": an_pct})
    return rows


def components(real_hops: dict[str, float | None], sim_hops: dict[str, float | None]) -> list[dict[str, Any]]:
    """Per component: mean time per round (ms) real and simulated, the difference, and its
    share of the round-time difference; largest |difference| first."""
    rows = []
    for name, hops in COMPONENTS:
        r = sum(real_hops.get(h) or 0.0 for h in hops) * 1e3
        s = sum(sim_hops.get(h) or 0.0 for h in hops) * 1e3
        rows.append({"component": name, "real_ms": r, "sim_ms": s, "diff_ms": s - r})
    total = sum(row["diff_ms"] for row in rows)
    for row in rows:
        row["share_pct"] = 100.0 * row["diff_ms"] / total if total else None
    return sorted(rows, key=lambda row: -abs(row["diff_ms"]))


def mape(points: list[dict[str, Any]], predictor: str) -> dict[str, float | None]:
    """Mean absolute percentage error of ``predictor`` (sim | analytic) per metric over the points."""
    out = {}
    for key, *_ in METRICS:
        errs = [abs(row[f"{predictor}_err_pct"]) for p in points for row in p["metrics"]
                if row["metric"] == key and row[f"{predictor}_err_pct"] is not None]
        out[key] = sum(errs) / len(errs) if errs else None
    return out


@dataclass
class Validation:
    scenario: str
    sweep_field: str | None
    acceptance: str
    points: list[dict[str, Any]] = field(default_factory=list)
    repeat: int = 1
    notices: list[str] = field(default_factory=list)  # profiles measured on another machine

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "sweep_field": self.sweep_field, "acceptance": self.acceptance,
                "repeat": self.repeat, "points": self.points, "mape_sim_pct": mape(self.points, "sim"),
                "mape_analytic_pct": mape(self.points, "analytic"), "real_spread_pct": self.mean_spread()}

    def within_spread(self, metrics) -> list[str]:
        """``point: metric, ...`` where the real runs' CV is at least the simulator's |error| (of ``metrics``)."""
        labels = {k: lbl for k, lbl, *_ in METRICS}
        out = []
        for p in self.points:
            cv = p.get("real_spread_pct") or {}
            hit = [labels[r["metric"]] for r in p["metrics"] if r["metric"] in metrics and r["sim_err_pct"] is not None
                   and cv.get(r["metric"]) is not None and cv[r["metric"]] >= abs(r["sim_err_pct"])]
            if hit:
                out.append(f"{p['point']}: {', '.join(hit)}")
        return out

    def mean_spread(self) -> dict[str, float | None]:
        """Per metric, the mean over the points of the real runs' run-to-run CV (%)."""
        out = {}
        for key, *_ in METRICS:
            xs = [p["real_spread_pct"][key] for p in self.points
                  if (p.get("real_spread_pct") or {}).get(key) is not None]
            out[key] = sum(xs) / len(xs) if xs else None
        return out

    def tidy(self) -> pd.DataFrame:
        """One row per point and metric (the CSV)."""
        rows = [{"point": p["point"], **row, "real_cv_pct": (p.get("real_spread_pct") or {}).get(row["metric"])}
                for p in self.points for row in p["metrics"]]
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        """The validation table as markdown: per point, then MAPE over the sweep and components."""

        def f(v, pct=False):
            if v is None:
                return ""
            return f"{v:+.1f}%" if pct else (f"{v:.4g}")

        out = [f"# Validation: {self.scenario}", ""]
        if self.sweep_field:
            fed = "the acceptance each real run measured" if self.acceptance == "real" else "the scenario's acceptance"
            out.append(f"Sweep over `{self.sweep_field}`; simulator and closed form fed {fed}.")
            out.append("")
        out += [f"Note: {line}." for line in self.notices] + ([""] if self.notices else [])
        many = self.repeat > 1
        if many:
            out += [f"Real: the mean of {self.repeat} runs per point; real CV: their run-to-run coefficient of "
                    "variation.", ""]
        else:
            out += ["One real run per point: how far its numbers move from run to run is not known here, and on a "
                    "shared machine that can be wider than the simulator's error (`--repeat 3`, the default, "
                    "states it beside each error).", ""]
        head = "| point | metric | unit | real |" + (" real CV |" if many else "")
        head += " sim | sim err | closed form | closed-form err |"
        out += [head, "|" + "---|" * (9 if many else 8)]
        # a metric neither side has, or has only as 0 (an SLO nobody set, a feature not used), is
        # left out of the table
        used = {row["metric"] for p in self.points for row in p["metrics"] if row["real"] or row["sim"]}
        for p in self.points:
            spread = p.get("real_spread_pct") or {}
            for row in p["metrics"]:
                if row["metric"] not in used:
                    continue
                cv = f" {f(spread.get(row['metric']))}% |" if many and spread.get(row["metric"]) is not None else (
                    " |" if many else "")
                out.append(f"| {p['point']} | {row['label']} | {row['unit']} | {f(row['real'])} |{cv} "
                           f"{f(row['sim'])} | {f(row['sim_err_pct'], True)} | {f(row['analytic'])} "
                           f"| {f(row['analytic_err_pct'], True)} |")
        d = self.as_dict()
        ratios = {p["point"]: p.get("speed_ratio") or {} for p in self.points}
        if any(ratios.values()):
            out += ["", "Machine speed at each real run against its profiles' calibration (profile times scaled "
                    "by it):", ""]
            out += [f"- {pt}: " + ", ".join(f"{k} x{v:.3f}" for k, v in r.items()) for pt, r in ratios.items() if r]
        out += ["", "MAPE over the points (%)" + (", and the real runs' mean run-to-run CV (%)" if many else "")
                + ":", ""]
        out += (["| metric | sim | closed form | real CV |", "|---|---|---|---|"] if many
                else ["| metric | sim | closed form |", "|---|---|---|"])
        labels = {k: lbl for k, lbl, *_ in METRICS}
        for key in (k for k in labels if k in used):
            ms, ma = d["mape_sim_pct"][key], d["mape_analytic_pct"][key]
            tail = f" {f(d['real_spread_pct'][key])} |" if many else ""
            out.append(f"| {labels[key]} | {f(ms)} | {f(ma)} |{tail}")
        noisy = self.within_spread(used)
        if noisy:
            out += ["", f"Within the real runs' own spread (run-to-run CV at least the simulator's |error|: the "
                    f"error there is not told apart from noise): {'; '.join(noisy)}."]
        out += ["", "Where a round's time goes, real vs simulated (ms per round, largest difference first):", ""]
        out += ["| point | component | real | sim | sim - real | share of the difference |", "|" + "---|" * 6]
        for p in self.points:
            for c in p["components"]:
                share = "" if c["share_pct"] is None else f"{c['share_pct']:.0f}%"
                out.append(f"| {p['point']} | {c['component']} | {c['real_ms']:.3f} | {c['sim_ms']:.3f} | "
                           f"{c['diff_ms']:+.3f} | {share} |")
        return "\n".join(out) + "\n"

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n")
        self.tidy().to_csv(out / "validation.csv", index=False)
        (out / "validation.md").write_text(self.markdown())


def _mean_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    """Key by key mean of the dicts' numeric values (a key missing from one counts without it)."""
    out: dict[str, list[float]] = {}
    for d in ds:
        for k, x in d.items():
            if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
                out.setdefault(k, []).append(float(x))
    return {k: sum(xs) / len(xs) for k, xs in out.items()}


def real_spread(summaries: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per metric, the real runs' coefficient of variation (%, population): how much the
    same scenario moves from run to run on this machine, the floor under any prediction's
    error. None with one run."""
    out: dict[str, float | None] = {}
    for key, *_ in METRICS:
        xs = [float(s[key]) for s in summaries if isinstance(s.get(key), (int, float)) and math.isfinite(s[key])]
        if len(xs) < 2:
            out[key] = None
            continue
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
        out[key] = 100.0 * sd / abs(m) if m else None
    return out


def validate(path: str | Path, sweep: str | None = None, overrides: list[str] | None = None,
             out: str | Path | None = None, acceptance: str = "real", say=None,
             speed: str = "spot", repeat: int = 1) -> Validation:
    """Run the three predictors for each sweep point (see the module docstring); writes each
    point's real and simulated run directories under ``out`` when given.

    ``repeat``: real runs per point. The table's real value is their mean, each metric's
    run-to-run spread is reported beside it, and spot checks (``speed="spot"``) run before
    each real run and once after the last, the profiles scaled by their mean."""
    from .analytic import analyze
    from .real.execute import execute
    from .scenario import load_scenario
    from .sim import simulate

    if acceptance not in ("real", "scenario"):
        raise StarsimError(f"--acceptance {acceptance}: expected real or scenario")
    if speed not in ("spot", "matmul", "none"):
        raise StarsimError(f"--speed {speed}: expected spot, matmul or none")
    if repeat < 1:
        raise StarsimError(f"--repeat {repeat}: expected at least 1 real run per point")
    field_path, values = parse_sweep(sweep)
    say = say or (lambda msg: None)
    base = list(overrides or [])
    first = load_scenario(path, base)
    v = Validation(scenario=first.name, sweep_field=field_path, acceptance=acceptance, repeat=repeat,
                   notices=foreign_profiles(first))
    for value in values:
        point = f"{field_path}={value}" if field_path else "base"
        sets = base + ([point] if field_path else [])
        sc = load_scenario(path, sets)
        reals, ratio_sets = [], []
        for i in range(repeat):
            run = f" {i + 1}/{repeat}" if repeat > 1 else ""
            if speed == "spot":  # the profiles' own ops, re-timed right before the run
                say(f"{point}: re-timing the profiles' ops ...")
                ratio_sets.append(spot_overrides(sc)[1])
            say(f"{point}: real run{run} ...")
            reals.append(execute(sc))
            if speed == "matmul":
                ratio_sets.append(speed_overrides(sc, reals[-1].summary)[1])
        if speed == "spot":  # and once after the last
            say(f"{point}: re-timing the profiles' ops after the run ...")
            ratio_sets.append(spot_overrides(sc)[1])
        real = reals[0]
        extra: list[str] = []  # what the predictions take from the real runs
        curve = real.summary.get("acceptance_marginal") or []
        if acceptance == "real" and curve:  # the simulator and the closed form get what the pair accepted
            measured = yaml.safe_dump({"kind": "marginal", "curve": curve}, default_flow_style=True).strip()
            extra.append(f"acceptance={measured}")
        # the predictions at the machine speed the real runs saw
        ratios = _mean_dicts(ratio_sets)
        extra += scale_overrides(sc, ratios)
        if extra:
            sc = load_scenario(path, [*sets, *extra])
        say(f"{point}: simulation and closed form ...")
        sim = simulate(sc)
        try:
            ana = analyze(sc)
        except (StarsimError, ValueError, ZeroDivisionError):  # a scenario the closed form cannot take
            ana = None
        if out is not None:
            d = Path(out) / point.replace("/", "_")
            for i, r in enumerate(reals):
                r.write(d / ("real" if i == 0 else f"real-{i + 1}"))
            sim.write(d / "sim")
        summaries = [r.summary for r in reals]
        real_hops = _mean_dicts([hop_means(r.records) for r in reals])
        v.points.append({
            "point": point,
            "metrics": compare(_mean_dicts(summaries) if repeat > 1 else real.summary, sim.summary, ana),
            "real_spread_pct": real_spread(summaries),
            "components": components(real_hops, hop_means(sim.records)),
            "speed_ratio": ratios,
            "real_provenance": [{k: r.summary["provenance"].get(k) for k in ("wall_time_s", "failures", "models")}
                                for r in reals],
        })
    if out is not None:
        v.write(Path(out))
    return v
