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

import numpy as np
import pandas as pd
import yaml

from .errors import StarsimError
from .metric_display import displays
from .metrics import dist_stats, hop_means, idle_gaps_all
from .profile_fields import foreign_profiles, role_cpus
from .profile_fields import profile_fields as _profile_fields
from .real.resources import pinned
from .replay import replay as replay_run
from .replay import replay_refusal

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
    ("verify time", ("verify_s",)),
    ("waiting for the unit", ("verify_wait_s",)),
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


def compare(real: dict[str, Any], sim: dict[str, Any], analytic: dict[str, Any] | None,
            replay: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per metric: the values (in the metric's display unit) and each prediction's
    error against the real run (the replay's too, when there is one)."""
    def get(d, key, scale):
        v = None if d is None else d.get(key)
        return None if v is None else float(v) * scale

    rows = []
    for key, label, unit, scale in METRICS:
        r, s, a, p = (get(d, key, scale) for d in (real, sim, analytic, replay))
        sim_abs, sim_pct = _err(s, r)
        an_abs, an_pct = _err(a, r)
        rp_abs, rp_pct = _err(p, r)
        rows.append({"metric": key, "label": label, "unit": unit, "real": r, "sim": s, "analytic": a, "replay": p,
                     "sim_err": sim_abs, "sim_err_pct": sim_pct, "analytic_err": an_abs, "analytic_err_pct": an_pct,
                     "replay_err": rp_abs, "replay_err_pct": rp_pct})
    return rows


def gap_stats(gaps: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Per source (real, sim, replay): the draft idle gaps' mean, p50 and p99 (ms), and their
    two-sample Kolmogorov-Smirnov distance to the real run's (the largest difference between
    the two empirical distribution functions: 0 alike, 1 apart)."""
    from scipy.stats import ks_2samp

    real = gaps["real"]
    out = {}
    for src, g in gaps.items():
        d = dist_stats("gap", g)  # the summary's mean, p50 and p99, of these gaps
        ks = float(ks_2samp(real, g, method="asymp").statistic) if len(g) and len(real) and src != "real" else None
        out[src] = {"n": int(len(g)), **{f"{q}_ms": None if d[f"gap_{q}"] is None else d[f"gap_{q}"] * 1e3
                                         for q in ("mean", "p50", "p99")}, "ks": ks}
    return out


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
    """Mean absolute percentage error of ``predictor`` (sim | analytic | replay) per metric over the points."""
    out = {}
    for key, *_ in METRICS:
        errs = [abs(row[f"{predictor}_err_pct"]) for p in points for row in p["metrics"]
                if row["metric"] == key and row[f"{predictor}_err_pct"] is not None]
        out[key] = sum(errs) / len(errs) if errs else None
    return out


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return ""
    return f"{v:+.1f}%" if pct else f"{v:.4g}"


@dataclass
class Validation:
    scenario: str
    sweep_field: str | None
    acceptance: str
    points: list[dict[str, Any]] = field(default_factory=list)
    repeat: int = 1
    notices: list[str] = field(default_factory=list)  # profiles measured on another machine
    replayed: bool = False  # each real run also replayed (starsim.replay)
    no_replay: str | None = None  # why not, when the scenario cannot be replayed

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "sweep_field": self.sweep_field, "acceptance": self.acceptance,
                "repeat": self.repeat, "replayed": self.replayed, "no_replay": self.no_replay, "points": self.points,
                "mape_sim_pct": mape(self.points, "sim"), "mape_analytic_pct": mape(self.points, "analytic"),
                "mape_replay_pct": mape(self.points, "replay") if self.replayed else None,
                "real_spread_pct": self.mean_spread()}

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
        used = {row["metric"] for p in self.points for row in p["metrics"] if row["real"] or row["sim"]}
        out = self._intro() + self._points_table(used) + self._speeds() + self._gaps_table()
        out += self._mape_table(used)
        noisy = self.within_spread(used)
        if noisy:
            out += ["", f"Within the real runs' own spread (run-to-run CV at least the simulator's |error|: the "
                    f"error there is not told apart from noise): {'; '.join(noisy)}."]
        return "\n".join(out + self._components_table()) + "\n"

    def _intro(self) -> list[str]:
        out = [f"# Validation: {self.scenario}", ""]
        if self.sweep_field:
            fed = "the acceptance each real run measured" if self.acceptance == "real" else "the scenario's acceptance"
            out += [f"Sweep over `{self.sweep_field}`; simulator and closed form fed {fed}.", ""]
        out += [f"Note: {line}." for line in self.notices] + ([""] if self.notices else [])
        if self.replayed:
            out += ["Two simulations of each real run: **sim** times each role from its profiles (calibration "
                    "and model together); **replay** takes each role's times from what that real run measured, "
                    "in order, with its acceptance round by round (`starsim.replay`): what is left between replay "
                    "and real is the model's own error (queueing, turns, placement, policy), whatever the "
                    "machine's speed that day.", ""]
        elif self.no_replay:
            out += [f"No replay: {self.no_replay}.", ""]
        if self.repeat > 1:
            return out + [f"Real: the mean of {self.repeat} runs per point; real CV: their run-to-run coefficient "
                          "of variation.", ""]
        return out + ["One real run per point: how far its numbers move from run to run is not known here, and on "
                      "a shared machine that can be wider than the simulator's error (`--repeat 3`, the default, "
                      "states it beside each error).", ""]

    def _points_table(self, used: set[str]) -> list[str]:
        many, rp = self.repeat > 1, self.replayed
        cols = ["point", "metric", "unit", "real"] + (["real CV"] if many else []) + ["sim", "sim err"]
        cols += (["replay", "replay err"] if rp else []) + ["closed form", "closed-form err"]
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        # a metric neither side has, or has only as 0 (an SLO nobody set, a feature not used), is
        # left out of the table
        for p in self.points:
            spread = p.get("real_spread_pct") or {}
            for row in p["metrics"]:
                if row["metric"] not in used:
                    continue
                cells = [p["point"], row["label"], row["unit"], _fmt(row["real"])]
                if many:
                    cv = spread.get(row["metric"])
                    cells.append(f"{_fmt(cv)}%" if cv is not None else "")
                cells += [_fmt(row["sim"]), _fmt(row["sim_err_pct"], True)]
                if rp:
                    cells += [_fmt(row.get("replay")), _fmt(row.get("replay_err_pct"), True)]
                cells += [_fmt(row["analytic"]), _fmt(row["analytic_err_pct"], True)]
                out.append("| " + " | ".join(cells) + " |")
        return out

    def _speeds(self) -> list[str]:
        ratios = {p["point"]: p.get("speed_ratio") or {} for p in self.points}
        if not any(ratios.values()):
            return []
        out = ["", "Machine speed at each real run against its profiles' calibration (profile times scaled by it):",
               ""]
        return out + [f"- {pt}: " + ", ".join(f"{k} x{v:.3f}" for k, v in r.items())
                      for pt, r in ratios.items() if r]

    def _gaps_table(self) -> list[str]:
        if not any(p.get("idle_gaps") for p in self.points):
            return []
        out = ["", "Draft idle gaps, real vs each simulation: mean, p50 and p99 (ms), and the Kolmogorov-Smirnov "
               "distance of each gap distribution to the real one (0: alike, 1: apart):", "",
               "| point | source | gaps | mean | p50 | p99 | KS distance to real |", "|" + "---|" * 7]
        for p in self.points:
            for src, g in (p.get("idle_gaps") or {}).items():
                ks = "" if g["ks"] is None else f"{g['ks']:.3f}"
                out.append(f"| {p['point']} | {src} | {g['n']} | {_fmt(g['mean_ms'])} | {_fmt(g['p50_ms'])} | "
                           f"{_fmt(g['p99_ms'])} | {ks} |")
        return out

    def _mape_table(self, used: set[str]) -> list[str]:
        many, rp, d = self.repeat > 1, self.replayed, self.as_dict()
        out = ["", "MAPE over the points (%)" + (", and the real runs' mean run-to-run CV (%)" if many else "") + ":",
               ""]
        cols = ["metric", "sim"] + (["replay"] if rp else []) + ["closed form"] + (["real CV"] if many else [])
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for key, label, *_ in METRICS:
            if key not in used:
                continue
            cells = [label, _fmt(d["mape_sim_pct"][key])] + ([_fmt(d["mape_replay_pct"][key])] if rp else [])
            cells += [_fmt(d["mape_analytic_pct"][key])] + ([_fmt(d["real_spread_pct"][key])] if many else [])
            out.append("| " + " | ".join(cells) + " |")
        return out

    def _components_table(self) -> list[str]:
        out = ["", "Where a round's time goes, real vs simulated from the profiles (ms per round, largest "
               "difference first; draft and verify time here are the profiles' error against this run, the "
               "drift a replay takes away):", "",
               "| point | component | real | sim | sim - real | share of the difference |", "|" + "---|" * 6]
        for p in self.points:
            for c in p["components"]:
                share = "" if c["share_pct"] is None else f"{c['share_pct']:.0f}%"
                out.append(f"| {p['point']} | {c['component']} | {c['real_ms']:.3f} | {c['sim_ms']:.3f} | "
                           f"{c['diff_ms']:+.3f} | {share} |")
        return out

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
             speed: str = "spot", repeat: int = 1, replay: bool | None = None,
             calibrate: bool = False) -> Validation:
    """Run the three predictors for each sweep point (see the module docstring); writes each
    point's real and simulated run directories under ``out`` when given.

    ``repeat``: real runs per point. The table's real value is their mean, each metric's
    run-to-run spread is reported beside it, and spot checks (``speed="spot"``) run before
    each real run and once after the last, the profiles scaled by their mean.

    ``replay``: also simulate each real run on its own measured times (:mod:`starsim.replay`),
    compared beside the profile-based simulation; None: where the scenario can be replayed
    (True refuses one that cannot).

    ``calibrate``: first re-time the profiles the scenario uses on this machine, on each
    role's declared cores (:mod:`starsim.calibrate.here`; into ``out``/profiles, or a
    temporary directory), and predict from them."""
    from .scenario import load_scenario

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
    notes: list[str] = []
    if calibrate:
        import tempfile

        from .calibrate.here import calibrate_here

        where = Path(out) / "profiles" if out is not None else Path(tempfile.mkdtemp(prefix="starsim-profiles-"))
        sets, notes = calibrate_here(first, where, say)
        base += sets
        first = load_scenario(path, base)
        notes.append(f"the profiles were re-timed here first (--calibrate), into {where}")
    why = replay_refusal(first)
    if replay and why:
        raise StarsimError(f"--replay: {path}: cannot replay {why}")
    v = Validation(scenario=first.name, sweep_field=field_path, acceptance=acceptance, repeat=repeat,
                   notices=foreign_profiles(first) + notes, replayed=replay is not False and why is None,
                   no_replay=why if replay is None else None)
    for value in values:
        point = f"{field_path}={value}" if field_path else "base"
        sets = base + ([point] if field_path else [])
        reals, ratios = _real_runs(load_scenario(path, sets), point, repeat, speed, say)
        say(f"{point}: simulation and closed form ...")
        sim, ana = _predictions(path, sets, reals[0], ratios, acceptance)
        replays = []
        if v.replayed:
            say(f"{point}: replay of each real run ...")
            replays = [replay_run(path, sets, r.records) for r in reals]
        if out is not None:
            d = Path(out) / point.replace("/", "_")
            for name, results in (("real", reals), ("replay", replays)):
                for i, r in enumerate(results):
                    r.write(d / (name if i == 0 else f"{name}-{i + 1}"))
            sim.write(d / "sim")
        v.points.append(_point(point, reals, sim, ana, replays, ratios))
    if out is not None:
        v.write(Path(out))
    return v


def _real_runs(sc, point: str, repeat: int, speed: str, say) -> tuple[list, dict[str, float]]:
    """``repeat`` real runs of ``sc``, and the machine's speed against the profiles' (each
    profile field's ratio, the mean over the checks around the runs)."""
    from .real.execute import execute

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
    return reals, _mean_dicts(ratio_sets)


def _predictions(path, sets: list[str], real, ratios: dict[str, float], acceptance: str):
    """The simulation and the closed form (None where it cannot take the scenario) of the
    scenario at the machine speed the real runs saw, fed the first run's acceptance when
    ``acceptance`` is ``real``."""
    from .analytic import analyze
    from .scenario import load_scenario
    from .sim import simulate

    extra: list[str] = []  # what the predictions take from the real runs
    curve = real.summary.get("acceptance_marginal") or []
    if acceptance == "real" and curve:  # the simulator and the closed form get what the pair accepted
        measured = yaml.safe_dump({"kind": "marginal", "curve": curve}, default_flow_style=True).strip()
        extra.append(f"acceptance={measured}")
    sc = load_scenario(path, sets)
    extra += scale_overrides(sc, ratios)
    if extra:
        sc = load_scenario(path, [*sets, *extra])
    try:
        ana = analyze(sc)
    except (StarsimError, ValueError, ZeroDivisionError):  # a scenario the closed form cannot take
        ana = None
    return simulate(sc), ana


def _point(point: str, reals: list, sim, ana, replays: list, ratios: dict[str, float]) -> dict[str, Any]:
    """One point of the table: each metric's values and errors, the idle gaps side by side,
    the real runs' spread and where a round's time goes."""
    summaries = [r.summary for r in reals]
    gaps = {"real": np.concatenate([idle_gaps_all(r.records) for r in reals]), "sim": idle_gaps_all(sim.records)}
    if replays:
        gaps["replay"] = np.concatenate([idle_gaps_all(r.records) for r in replays])
    many = len(reals) > 1
    mean_replay = (_mean_dicts([r.summary for r in replays]) if len(replays) > 1
                   else replays[0].summary if replays else None)
    return {
        "point": point,
        "metrics": compare(_mean_dicts(summaries) if many else summaries[0], sim.summary, ana, mean_replay),
        "idle_gaps": gap_stats(gaps),
        "real_spread_pct": real_spread(summaries),
        "components": components(_mean_dicts([hop_means(r.records) for r in reals]), hop_means(sim.records)),
        "speed_ratio": ratios,
        "real_provenance": [{k: r.summary["provenance"].get(k) for k in ("wall_time_s", "failures", "models")}
                            for r in reals],
    }
