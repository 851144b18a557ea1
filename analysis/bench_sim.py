"""Simulator speed benchmark (not a test): simulated rounds per wall second, and starsim's
wall time against a bare SimPy loop that schedules the same number of events.

For each N in ``--targets`` the reference scenario ``scenarios/starsd_ref_n4.yaml`` is
loaded with ``targets.0.count = N``, ``devices.gpu.count = N`` (one GPU per target, so no
device contention) and ``duration_s = --duration``; seed 0, as in the file. Every input is
deterministic and nothing touches the network. ``starsim.simulate`` runs ``--repeat`` times
(after one untimed warm-up run of the whole set-up) and every number is the median over
the repeats. Wall time is split, by wrapping three calls for the duration of the
benchmark only (no starsim source is changed):

- ``sim``: ``simpy.Environment.run`` inside ``simulate`` (the discrete-event run itself);
- ``tables``: ``Recorder.finish`` (row tuples -> the three pandas tables);
- ``metrics``: ``summarize`` (every summary number from the tables);
- ``total``: the whole ``simulate`` call (also building the model, ~1 ms).

``rounds`` counts every row of the rounds table (warm-up and cool-down included, not only
the measured window); ``events`` is SimPy's count of scheduled events (the summary's
``provenance.events_simulated``).

Bare SimPy loop (the reference for the ratio): in a fresh ``simpy.Environment``, K = N + 1
processes (as many as starsim's N targets plus one draft engine) each run
``while budget: budget -= 1; yield env.timeout(rng.random() * 1e-3)``, where ``budget`` is one
shared counter and ``rng`` is a ``random.Random(k)`` per process. The budget is
``events - 2K`` so that, with each process's initialisation and termination event, the
loop schedules exactly as many events as starsim did (checked, and printed). Only its
``env.run()`` is timed. Each repeat runs starsim and then, at once, the bare loop, and a
ratio is the median over repeats of the per-pair ratios (``ratio sim`` = starsim ``sim`` /
bare, ``ratio total`` = starsim ``total`` / bare): this VM's speed can change by 1.5x from
one second to the next, and a pair taken back to back sees the same speed. The table also
gives the spread (min-max) of ``total`` over the repeats. The ratio is per scheduled event:
a change that removes SimPy events shrinks the bare loop as well, so it raises rounds per
second without lowering the ratio; read the two together.

Run: ``python analysis/bench_sim.py [--targets 1,4,16,64] [--duration 300] [--repeat 3]
[--seqs S] [--json OUT]``. ``--seqs S`` (> 1) times serving targets instead:
``scenarios/serving_const.yaml``, each target serving S requests at once (``--no-rounds``:
keeping no rounds rows, ``record_rounds: false``; rounds then count sequence-steps). Targets (from the
issue): >= 50k rounds per wall second and <= 3x the bare
loop, both taken on the total ``simulate`` wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import simpy
from _cli import status_mb  # analysis/ is on sys.path when a script runs

import starsim
import starsim.sim.run as sim_run

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "starsd_ref_n4.yaml"
TARGET_ROUNDS_PER_S = 50_000
TARGET_RATIO = 3.0


# ----------------------------------------------------------------------------- timing hooks


def _wrap(timers: dict, key: str, fn):
    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            timers[key] += time.perf_counter() - t

    return timed


@contextmanager
def _timed_phases():
    """Time ``simpy.Environment.run``, ``Recorder.finish`` and ``summarize`` as called by
    ``starsim.sim.run`` (the functions are wrapped for the duration, then restored). A
    phase whose hook point no longer exists is reported as None rather than failing."""
    hooks = [(simpy.Environment, "run", "sim")]
    recorder = getattr(sim_run, "Recorder", None)
    if recorder is not None and hasattr(recorder, "finish"):
        hooks.append((recorder, "finish", "tables"))
    if hasattr(sim_run, "summarize"):
        hooks.append((sim_run, "summarize", "metrics"))
    timers = {key: 0.0 for _, _, key in hooks}
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in hooks]
    for (owner, name, key), (_, _, fn) in zip(hooks, saved):
        setattr(owner, name, _wrap(timers, key, fn))
    try:
        yield timers
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


# ----------------------------------------------------------------------------- runs


SERVING = REPO / "scenarios" / "serving_const.yaml"
SEQS = [1]  # --seqs: sequences per target (> 1: serving targets, scenarios/serving_const.yaml)
ROWS = [True]  # --no-rounds: serving targets keep no rounds rows (record_rounds: false)


def _rounds(res) -> int:
    """Rounds simulated: the rounds table's rows, or, without one, the sequence-steps the steps table counts."""
    return len(res.records.rounds) or int(res.records.steps["rounds"].sum())


def scenario(n: int, duration: float):
    if SEQS[0] > 1:  # targets serving SEQS requests each (continuous batching), users out of step
        s = SEQS[0]
        return starsim.load_scenario(SERVING, {"targets.0.count": n, "devices.gpu.count": n, "duration_s": duration,
                                               "warmup_s": 0.0, "targets.0.serving.max_seqs": s,
                                               "targets.0.serving.kv_capacity_tokens": None,
                                               "workload.concurrency": s, "workload.stagger_s": 2.0 / s,
                                               "record_rounds": ROWS[0]})
    return starsim.load_scenario(SCENARIO, {"targets.0.count": n, "devices.gpu.count": n, "duration_s": duration})


def run_starsim(n: int, duration: float) -> dict:
    sc = scenario(n, duration)
    with _timed_phases() as tm:
        t = time.perf_counter()
        res = starsim.simulate(sc)
        total = time.perf_counter() - t
    return {
        "rounds": _rounds(res),
        "events": res.summary["provenance"]["events_simulated"],
        "t_end": res.records.meta["t_end"],
        "total_s": total,
        "sim_s": tm["sim"],
        "tables_s": tm.get("tables"),
        "metrics_s": tm.get("metrics"),
        "other_s": total - sum(tm.values()),
    }


def bare_loop(events: int, k: int) -> tuple[float, int]:
    """Seconds for ``env.run()`` of K processes scheduling ``events`` events in all; and
    the number of events SimPy scheduled (== ``events`` when ``events >= 2K``)."""
    env = simpy.Environment()
    budget = [max(0, events - 2 * k)]

    def proc(rng: random.Random):
        timeout, draw = env.timeout, rng.random
        while budget[0]:
            budget[0] -= 1
            yield timeout(draw() * 1e-3)

    for i in range(k):
        env.process(proc(random.Random(i)))
    t = time.perf_counter()
    env.run()
    dt = time.perf_counter() - t
    eid = getattr(env, "_eid", None)  # SimPy's event counter, as read by starsim's provenance
    return dt, (int(next(eid)) if eid is not None else -1)


def peak_memory(n: int, duration: float) -> dict:
    """One run of N targets in a fresh Python process: its peak resident memory and its
    resident memory before the run (imports and the scenario loaded), so the run's own
    growth shows; with the rounds it kept, the memory per round kept."""
    cmd = [sys.executable, __file__, "--one", str(n), "--duration", repr(duration), "--seqs", str(SEQS[0]),
           *([] if ROWS[0] else ["--no-rounds"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["mb_per_1k_rounds"] = (r["rss_peak_mb"] - r["rss_before_mb"]) / max(r["rounds"], 1) * 1e3
    return r


def one(n: int, duration: float) -> dict:
    """The measurement :func:`peak_memory` runs in its fresh process."""
    sc = scenario(n, duration)
    before = status_mb("VmRSS")
    t = time.perf_counter()
    res = starsim.simulate(sc)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "rounds": _rounds(res), "rss_before_mb": before,
            "rss_peak_mb": status_mb("VmHWM")}


def closed_form_speed(points: int = 1_000_000, repeat: int = 5) -> float:
    """Seconds (best of ``repeat``) for ``starsim.analytic.closed_form`` over ``points``
    random parameter sets (N, draft time, target time, tokens per round)."""
    import numpy as np

    from starsim.analytic import closed_form

    rng = np.random.default_rng(0)
    n = rng.integers(1, 1000, points)
    d, z, m = rng.uniform(1e-3, 1e-2, points), rng.uniform(1e-2, 1e-1, points), rng.uniform(1, 5, points)
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        closed_form(n, d, z, m)
        best = min(best, time.perf_counter() - t)
    return best


def _median(xs: list):
    return None if any(x is None for x in xs) else statistics.median(xs)


def bench(n: int, duration: float, repeat: int) -> dict:
    """``repeat`` times: one starsim run, then at once the bare loop with its event count.

    Pairing them matters on a shared VM, whose speed can change by 1.5x from one second to
    the next: each ratio compares two runs taken back to back, and the reported ratio is the
    median of the per-pair ratios (times are medians too)."""
    k = n + 1
    runs = []
    for _ in range(repeat):
        r = run_starsim(n, duration)
        if r["events"] is None:
            raise SystemExit("starsim reported no events_simulated: cannot size the bare SimPy loop")
        r["bare_s"], r["bare_events"] = bare_loop(r["events"], k)
        r["ratio_sim"] = r["sim_s"] / r["bare_s"]
        r["ratio_total"] = r["total_s"] / r["bare_s"]
        runs.append(r)
    first = runs[0]
    for r in runs[1:]:  # deterministic: every repeat simulates the same thing
        assert (r["rounds"], r["events"]) == (first["rounds"], first["events"]), "non-deterministic run"
    keys = ("total_s", "sim_s", "tables_s", "metrics_s", "other_s", "bare_s", "ratio_sim", "ratio_total")
    med = {key: _median([r[key] for r in runs]) for key in keys}
    rounds = first["rounds"]
    return {
        "n_targets": n,
        "duration_s": duration,
        "t_end": first["t_end"],
        "rounds": rounds,
        "events": first["events"],
        "events_per_round": first["events"] / rounds if rounds else None,
        **med,
        "rounds_per_s_total": rounds / med["total_s"],
        "rounds_per_s_sim": rounds / med["sim_s"],
        "bare_processes": k,
        "bare_events": first["bare_events"],
        "total_s_min": min(r["total_s"] for r in runs),
        "total_s_max": max(r["total_s"] for r in runs),
        "repeats": runs,
    }


# ----------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "simpy": ver("simpy"),
        "numpy": ver("numpy"),
        "pandas": ver("pandas"),
        "starsim": starsim.__version__,
        "platform": platform.platform(),
    }


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{1e3 * x:.0f}"


def table(rows: list[dict]) -> str:
    head = (
        "| N | rounds | events | events/round | total ms | total min-max ms | sim ms | tables ms | metrics ms "
        "| rounds/s total | rounds/s sim | bare loop ms | ratio sim | ratio total | peak MB | MB per 1k rounds |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mem = r.get("memory") or {}
        peak = f"{mem['rss_peak_mb']:.0f}" if mem else "n/a"
        per = f"{mem['mb_per_1k_rounds']:.2f}" if mem else "n/a"
        lines.append(
            f"| {r['n_targets']} | {r['rounds']:,} | {r['events']:,} | {r['events_per_round']:.2f} "
            f"| {1e3 * r['total_s']:.0f} | {1e3 * r['total_s_min']:.0f}-{1e3 * r['total_s_max']:.0f} "
            f"| {_ms(r['sim_s'])} | {_ms(r['tables_s'])} "
            f"| {_ms(r['metrics_s'])} | {r['rounds_per_s_total']:,.0f} | {r['rounds_per_s_sim']:,.0f} "
            f"| {1e3 * r['bare_s']:.0f} | {r['ratio_sim']:.2f}x | {r['ratio_total']:.2f}x | {peak} | {per} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="1,4,16,64", help="comma-separated N values (default 1,4,16,64)")
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds per run (default 300)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per N; medians are reported (default 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory run (a fresh process per N)")
    ap.add_argument("--seqs", type=int, default=1,
                    help="sequences per target: > 1 runs scenarios/serving_const.yaml, its targets serving that many "
                    "requests at once (rounds: one row per sequence per step); default 1, the reference scenario")
    ap.add_argument("--no-rounds", action="store_true",
                    help="with --seqs: keep no rounds rows (record_rounds: false; the steps table counts the "
                    "sequence-steps), as a fleet too large for them runs")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # peak_memory's child process
    args = ap.parse_args(argv)
    if args.seqs < 1:
        ap.error("need --seqs >= 1")
    SEQS[0] = args.seqs
    if args.no_rounds and args.seqs < 2:
        ap.error("--no-rounds needs --seqs > 1 (serving targets)")
    ROWS[0] = not args.no_rounds
    if args.one:
        print(json.dumps(one(args.one, args.duration)))
        return 0
    ns = [int(x) for x in args.targets.split(",") if x.strip()]
    if not ns or min(ns) < 1 or args.repeat < 1 or args.duration <= 0:
        ap.error("need N >= 1, --repeat >= 1, --duration > 0")

    run_starsim(ns[0], min(args.duration, 30.0))  # warm-up: imports, pydantic, numpy paths
    bare_loop(10_000, 2)
    rows = []
    for n in ns:
        rows.append(bench(n, args.duration, args.repeat))
        if not args.no_memory:
            rows[-1]["memory"] = peak_memory(n, args.duration)
        print(f"N={n}: done", file=sys.stderr, flush=True)
    cf = closed_form_speed()

    info = machine()
    print(
        f"## starsim simulator speed ({(SCENARIO if SEQS[0] == 1 else SERVING).relative_to(REPO)}"
        f"{f', {SEQS[0]} sequences per target' if SEQS[0] > 1 else ''}, duration_s={args.duration:g}, "
        f"median of {args.repeat})\n"
    )
    print(table(rows))
    print()
    print(
        "- total: the whole `starsim.simulate` call; sim: its `simpy.Environment.run`; tables: `Recorder.finish` "
        "(rows -> pandas); metrics: `summarize`.\n"
        "- rounds: every row of the rounds table (warm-up and cool-down included); events: SimPy scheduled events "
        "(`provenance.events_simulated`).\n"
        "- bare loop: K = N + 1 SimPy processes, each `while budget: budget -= 1; "
        "yield env.timeout(rng.random() * 1e-3)` on one shared budget, so that exactly the same number of events "
        "is scheduled (bare events == events: "
        + ", ".join(f"N={r['n_targets']}: {'yes' if r['bare_events'] == r['events'] else 'NO'}" for r in rows)
        + "); only its `env.run()` is timed.\n"
        "- ratio sim = sim / bare loop; ratio total = total / bare loop; each ratio is the median over repeats of "
        "(starsim run / bare loop run right after it), so both sides of a ratio see the same machine speed."
    )
    slow = [r["n_targets"] for r in rows if r["rounds_per_s_total"] < TARGET_ROUNDS_PER_S]
    heavy = [r["n_targets"] for r in rows if r["ratio_total"] > TARGET_RATIO]
    print(
        f"- targets (on total wall time): >= {TARGET_ROUNDS_PER_S:,} rounds/s: "
        f"{'met' if not slow else 'NOT met for N=' + ','.join(map(str, slow))}; "
        f"<= {TARGET_RATIO:g}x bare loop: {'met' if not heavy else 'NOT met for N=' + ','.join(map(str, heavy))}.\n"
        "- the ratio is per scheduled event: a change that removes SimPy events shrinks the bare loop too, so it "
        "raises rounds/s without lowering the ratio; read both.\n"
        "- peak MB: the peak resident memory of one run in a fresh process (imports included); MB per 1k rounds: "
        "its growth over the memory before the run, per thousand rounds kept in the tables.\n"
        f"- closed form (`starsim.analytic.closed_form`) over 1,000,000 random points: {cf * 1e3:.0f} ms "
        "(best of 5)."
    )
    print(
        f"\nmachine: {info['cpu']} ({info['cpus']} CPUs), {info['implementation']} {info['python']}, "
        f"simpy {info['simpy']}, numpy {info['numpy']}, pandas {info['pandas']}, starsim {info['starsim']}; "
        f"{info['platform']}"
    )
    print(
        f"command: python analysis/bench_sim.py --targets {','.join(map(str, ns))} "
        f"--duration {args.duration:g} --repeat {args.repeat}{' --no-memory' if args.no_memory else ''}"
        f"{f' --seqs {args.seqs}' if args.seqs > 1 else ''}{' --no-rounds' if args.no_rounds else ''}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"machine": info, "scenario": str(SCENARIO.relative_to(REPO)), "repeat": args.repeat, "results": rows,
                 "closed_form_1e6_s": cf},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
