"""The ``starsim`` command line. Every command is a thin shell over a Python function."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ScenarioError, StarsimError
from .flags import output_dir, output_file, seconds
from .metric_display import displays, shown
from .version import __version__

EXIT_BAD_INPUT = 2
MAX_N_ROWS = 10_000  # analyze --n: rows of a printed table

# the terminal table of a run: these rows, then the features' rows a run uses (metric_display.py)
_ROWS = displays(
    "draft_utilization", "draft_idle_gap_mean_s", "draft_idle_gap_p50_s", "draft_idle_gap_p99_s",
    "draft_idle_ratio_mean", "draft_task_time_mean_s", "draft_queue_wait_mean_s", "draft_tasks_per_s",
    "draft_kv_bytes_peak", "throughput_tokens_per_s", "mean_accepted_tokens", "rounds", "requests_completed",
    "requests_unfinished", "ttft_mean_s", "tpot_mean_s",
)
# shown only when the run has them (a feature beyond StarSD that is on)
_OPTIONAL_ROWS = displays(
    "slo_attainment", "draft_evictions", "speculation_depth_mean", "rounds_without_speculation",
    "pipeline_hit_rate", "draft_wasted_fraction", "fabric_repairs",
)
_SERVING_ROWS = displays(
    "serving.batch_size_mean", "serving.batch_size_p99", "serving.num_requests_waiting_mean",
    "serving.kv_cache_usage_mean", "serving.num_preemptions", "serving.itl_s_p50", "serving.e2e_latency_s_mean",
)


def _summary_rows(s: dict, sc) -> list[list[str]]:
    """The terminal table of a run: the usual rows, and those of the features it uses."""
    d = sc.draft
    adaptive = d.adaptive.policy != "fixed"
    on = {"slo_attainment": s.get("slo_attainment") is not None, "draft_evictions": d.memory_bytes is not None,
          "speculation_depth_mean": adaptive, "rounds_without_speculation": adaptive,
          "pipeline_hit_rate": d.pipeline, "draft_wasted_fraction": d.pipeline,
          "fabric_repairs": s.get("fabric_repairs") is not None}
    rows = _ROWS + [r for r in _OPTIONAL_ROWS if on[r.key]] + (_SERVING_ROWS if "serving" in s else [])
    return [[d.label, _fmt(_value(s, d.key), d.scale), d.unit] for d in rows]


def _value(s: dict, key: str) -> Any:
    """A summary value by key; ``section.name`` for a section's (the serving section)."""
    section, _, name = key.rpartition(".")
    return (s.get(section) or {}).get(name) if section else s.get(key)


def _fmt(v: Any, scale: float = 1.0) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    x = shown(v, scale)
    if isinstance(v, int) and scale == 1.0:
        return f"{v:d}"
    if x == float("inf"):
        return "inf"
    return f"{x:.4g}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    def line(r: list) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _parse_ns(text: str) -> list[int]:
    """``"1-8"`` or ``"1,2,4,8"`` -> list of ints."""
    from .scenario import MAX_UNITS

    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                if int(b) - int(a) + 1 + len(out) > MAX_N_ROWS:  # before building the range
                    raise ScenarioError("--n", [("", f"more than {MAX_N_ROWS:,} target counts in {text!r}")])
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ScenarioError("--n", [("", f"expected e.g. 1-8 or 1,2,4,8, got {text!r}")]) from None
    if not out or min(out) < 1:
        raise ScenarioError("--n", [("", f"target counts must be >= 1, got {text!r}")])
    if len(out) > MAX_N_ROWS or max(out) > MAX_UNITS:
        raise ScenarioError("--n", [("", f"at most {MAX_N_ROWS:,} target counts, each at most {MAX_UNITS:,}; "
                                         f"got {len(out):,} up to {max(out):,}")])
    return out


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    return _predict(args, real=False)


def cmd_execute(args: argparse.Namespace) -> int:
    return _predict(args, real=True)


def cmd_validate(args: argparse.Namespace) -> int:
    """The validation table: closed form and simulation against a real run, per sweep point."""
    from .models.specs import need_torch
    from .validate import validate

    need_torch()
    say = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    v = validate(args.file, args.sweep, args.set, args.out, args.acceptance, say=say,
                 speed=args.speed, repeat=args.repeat, replay=args.replay, calibrate=args.calibrate)
    if args.json:
        print(json.dumps(v.as_dict(), indent=2, allow_nan=False))
    else:
        print(v.markdown(), end="")
        if args.out:
            print(f"wrote {args.out}/validation.md, validation.csv, validation.json and the run directories")
    return 0


def cmd_bench_compare(args: argparse.Namespace) -> int:
    """A measured ``vllm bench serve`` result beside a run's own, metric by metric."""
    from .metrics import BENCH_COMPARED, vllm_bench_result
    from .records import Records

    try:
        measured = json.loads(args.result.read_text())
    except OSError as e:
        raise StarsimError(f"{args.result}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise StarsimError(f"{args.result}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(measured, dict) or not any(k in measured for k, _ in BENCH_COMPARED):
        raise StarsimError(f"{args.result}: not a `vllm bench serve --save-result` file (none of its keys: "
                           f"{', '.join(k for k, _ in BENCH_COMPARED[:4])}, ...)")
    try:
        records = Records.read(args.run_dir)
    except (OSError, ValueError) as e:
        raise StarsimError(f"{args.run_dir}: not a run directory ({e})") from None
    ours = vllm_bench_result(records)
    rows = []
    for key, unit in BENCH_COMPARED:
        m, o = measured.get(key), ours.get(key)
        err = 100.0 * (o / m - 1.0) if isinstance(m, (int, float)) and m and o is not None else None
        rows.append({"metric": key, "unit": unit, "measured": m, "starsim": o, "err_pct": err})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(_table(["metric", "measured", "starsim", "starsim err", "unit"],
                 [[r["metric"], _fmt(r["measured"]) if isinstance(r["measured"], (int, float)) else "-",
                   _fmt(r["starsim"]), "-" if r["err_pct"] is None else f"{r['err_pct']:+.1f}%", r["unit"]]
                  for r in rows]))
    return 0


def cmd_acceptance(args: argparse.Namespace) -> int:
    """A run's measured marginal acceptance curve as a file ``acceptance: {kind: measured}`` reads."""
    import yaml

    from .acceptance import MIN_REACHED, ranked_tables
    from .metrics import summarize
    from .report.data import read_run

    run = read_run(args.run_dir)  # the run directory checked as report checks it
    if run.skipped:  # the copy only says the tree the curve was measured on
        print(f"warning: the run's scenario.yaml was skipped ({run.skipped}): the file will not say which tree "
              "the curve was measured on", file=sys.stderr)
    records = run.records
    # from the tables, not a stored summary (which another version may have written); read_run
    # already did so when the directory has no summary.json
    s = summarize(records) if run.summary_stored else run.summary
    curve = s["acceptance_marginal"]
    if not curve:
        raise StarsimError(f"{args.run_dir}: no speculative rounds in the measurement window")
    prov = run.summary.get("provenance")
    prov = prov if isinstance(prov, dict) else {}
    out = args.out or args.run_dir / "acceptance.yaml"
    doc = {
        "kind": "acceptance_curve",
        "semantics": "marginal: marginal[j-1] = P(accepted >= j), draft tokens accepted per round (bonus not "
                     "counted); mean_accepted_tokens: tokens per round, the bonus token counted (1 + sum(marginal))",
        "marginal": [round(a, 6) for a in curve],
        "mean_accepted_tokens": s["mean_accepted_tokens"],
        "rounds": s["rounds"],
        "measured_by": {"run_dir": str(args.run_dir.resolve()), "source": records.meta.get("source"),
                        **{k: prov[k] for k in ("scenario", "scenario_hash", "seed", "temperature", "models")
                           if k in prov}},
    }
    draft = (run.scenario or {}).get("draft")
    tree = draft.get("tree") if isinstance(draft, dict) else None
    if tree:  # the tree the curve belongs to: a different shape accepts differently
        doc["measured_by"]["tree"] = tree
    doc.update(ranked_tables(records.meta.get("accepted_ranks"), MIN_REACHED))  # tree-aware, when counted
    output_file(out, "acceptance.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"acceptance over {s['rounds']} rounds: {', '.join(f'{a:.3f}' for a in curve)} "
          f"(mean tokens per round {s['mean_accepted_tokens']:.3f}); wrote {out}")
    if "ranked" in doc:
        rows = "; ".join(", ".join(f"{q:.3f}" for q in row[:4]) for row in doc["ranked"])
        print(f"tree-aware (ranked), depths 1-{len(doc['ranked'])} (each seen >= {MIN_REACHED} times), "
              f"best ranks first: {rows}")
    print(f"use it: acceptance: {{kind: measured, path: {out.resolve()}}}")
    return 0


def _predict(args: argparse.Namespace, real: bool) -> int:
    """``run`` (simulate) and ``execute`` (for real): one scenario in, one run directory out."""
    from .scenario import load_scenario

    output_dir(args.out)
    sc = load_scenario(args.file, args.set)
    if real:
        from .models.specs import need_torch

        need_torch()
        from .real.execute import execute

        res = execute(sc)
    else:
        from .sim import simulate

        res = simulate(sc)
    if args.out:
        try:
            res.write(args.out, csv=args.csv, trace=not args.no_trace, trace_s=args.trace_s)
        except OSError as e:
            raise StarsimError(f"--out {args.out}: cannot write: {e.strerror or e}") from None
    if args.vllm_bench:
        from .metrics import vllm_bench_result

        try:
            args.vllm_bench.write_text(json.dumps(vllm_bench_result(res.records), indent=2) + "\n")
        except OSError as e:
            raise StarsimError(f"--vllm-bench {args.vllm_bench}: cannot write: {e.strerror or e}") from None
    alt = None if real else _alternatives(sc, args, res.summary)
    if args.json:
        print(json.dumps(res.summary if alt is None else {**res.summary, "alternatives": alt}, indent=2,
                         sort_keys=True))
    else:
        s = res.summary
        p = s["provenance"]
        if real:
            print(f"{sc.name}: executed for real, mode {sc.mode}, {s['n_targets']} target processes, seed {sc.seed}, "
                  f"{s['t_end_s']:.4g} s ({s['measured_s']:.4g} s measured) in {p['wall_time_s']:.3g} s wall")
        else:
            print(f"{sc.name}: mode {sc.mode}, {s['n_targets']} targets, seed {sc.seed}, "
                  f"{s['t_end_s']:.4g} s simulated ({s['measured_s']:.4g} s measured) in "
                  f"{p['wall_time_s']:.3g} s wall, {p['events_simulated']} events")
        print(_table(["metric", "value", "unit"], _summary_rows(s, sc)))
        _print_alternatives(alt, sc, args)
        if args.out:
            print(f"wrote {args.out}")
    _say_notices(res.summary["provenance"]["notices"])
    if res.summary["requests_unfinished"] and sc.duration_s is None:
        print(f"warning: {res.summary['requests_unfinished']} requests unfinished", file=sys.stderr)
    for i, err in res.summary["provenance"].get("failures", {}).items():
        print(f"warning: target {i} failed: {err}", file=sys.stderr)
    for i, t in res.summary["provenance"].get("fallback_at_s", {}).items():
        print(f"warning: target {i} lost the draft server at {t:.3f} s and finished autoregressively",
              file=sys.stderr)
    return 0


def _alternatives(sc, args: argparse.Namespace, own: dict | None) -> dict | None:
    """The file as a star, decoding alone and with a draft per target (``starsim.alternatives``):
    closed form, or simulated with ``--baselines``; ``own``: this file's simulated summary."""
    from .alternatives import alternatives, variants

    if sc.mode == "star" and sc.draft.fabric.failures:
        return None  # a failing fabric is a study of failure, not a deployment to compare
    try:
        simulated = {sc.mode: own} if own is not None else {}
        if getattr(args, "baselines", False):
            from .sim import simulate

            for mode, variant in variants(sc).items():
                if mode not in simulated:
                    simulated[mode] = simulate(variant).summary
        return alternatives(sc, simulated)
    except StarsimError as e:  # the file cannot be read as another mode (one line says why)
        print(f"note: no alternatives for this file: {e}", file=sys.stderr)
        return None


def _print_alternatives(alt: dict | None, sc, args: argparse.Namespace) -> None:
    from .alternatives import lines

    if alt is None:
        return
    how = "simulated" if getattr(args, "baselines", False) else "closed form; --baselines simulates them"
    print(f"\nalternatives (the same file as each mode, per GPU; {how}):")
    print("\n".join(lines(alt, sc.mode)))


def _say_notices(lines: list[str], prefix: str = "note: ") -> None:
    """Notices (``starsim.notices``) on stderr, one line each."""
    for line in lines:
        print(f"{prefix}{line}", file=sys.stderr)


def _analyze_rows(a: dict, s: dict | None) -> list[list[str]]:
    keys = [
        ("draft_utilization", "draft utilization", 100.0, "%"),
        ("draft_idle_gap_mean_s", "draft idle gap, mean", 1e3, "ms"),
        ("draft_tasks_per_s", "draft tasks per second", 1.0, "/s"),
        ("throughput_tokens_per_s", "throughput", 1.0, "tok/s"),
        ("mean_accepted_tokens", "tokens per round (bonus incl.)", 1.0, ""),
        ("tpot_mean_s", "TPOT, mean", 1e3, "ms"),
    ]
    rows = []
    for k, lbl, scale, unit in keys:
        row = [lbl, _fmt(a.get(k), scale)]
        if s is not None:
            sv, av = s.get(k), a.get(k)
            row.append(_fmt(sv, scale))
            row.append(f"{100.0 * (av - sv) / sv:+.2f}%" if sv not in (None, 0) and av is not None else "-")
        rows.append(row + [unit])
    return rows


def _why_apart(n: int, a: dict, s: dict, units: str, tolerance: float = 0.03) -> str | None:
    """Why the closed form's utilization is more than ``tolerance`` from the simulator's at N
    targets, in one line (None when it is not)."""
    u_a, u_s = a["draft_utilization"], s["draft_utilization"]
    if not u_s or abs(u_a - u_s) <= tolerance * u_s:
        return None
    err = f"N = {n}: U {100 * (u_a - u_s) / u_s:+.1f}%"
    if units == "shared":
        return f"{err}: targets share units, which the closed form does not model"
    n_star, mva = a["n_saturation"], a.get("draft_utilization_mva")
    if mva is not None and 0.5 * n_star <= n <= 2 * n_star:
        return (f"{err}, at the knee (N* = {n_star:.3g}): the file's times vary, so rounds queue near N*, which "
                f"the closed form's mean times do not; the simulator ({100 * u_s:.1f}%) lies between it "
                f"({100 * u_a:.1f}%, constant times) and MVA ({100 * mva:.1f}%, exponential draft times)")
    return f"{err}: beyond the closed form's assumptions (see `starsim analyze` without --n)"


def _analyze_over_n(args: argparse.Namespace, base) -> int:
    """``analyze --n``: the closed form (and the simulator, with --compare) over target counts,
    each target on its own unit unless --keep-pool."""
    from .analytic import analyze
    from .notices import own_units, shared_units
    from .scenario import load_scenario
    from .sim import simulate

    if len(base.targets) != 1:
        raise ScenarioError(args.file, [("targets", "--n needs exactly one target group")])
    ns = _parse_ns(args.n)
    headers = ["N", "U analytic", "N*", "gap ms", "tok/s", "cycle ms"]
    if args.compare:
        headers += ["U sim", "U err", "tok/s sim", "tok/s err"]
    headers.insert(1, "units")
    rows, out, grown, kept, whys = [], [], {}, [], []
    for n in ns:
        sets = [*args.set, f"targets.0.count={n}"]
        sc = load_scenario(args.file, sets)
        more = own_units(sc)
        if more and not args.keep_pool:  # the closed form gives each target its own unit: so does the simulator
            sc = load_scenario(args.file, [*sets, *(f"{k}={v}" for k, v in more.items())])
            grown.update({k: max(v, grown.get(k, 0)) for k, v in more.items()})
        elif more:
            kept.append(n)
        a = analyze(sc)
        units = "shared" if shared_units(sc) else "own"
        row = [str(n), units, _fmt(a["draft_utilization"], 100), _fmt(a["n_saturation"]),
               _fmt(a["draft_idle_gap_mean_s"], 1e3), _fmt(a["throughput_tokens_per_s"]),
               _fmt(a["per_target"][0]["cycle_s"], 1e3)]
        rec = {"n": n, "units": units, "overrides": sets[len(args.set):] + [f"{k}={v}" for k, v in more.items()
                                                                             if not args.keep_pool],
               "analytic": a}
        if args.compare:
            s = simulate(sc).summary
            rec["sim"] = s
            for k in ("draft_utilization", "throughput_tokens_per_s"):
                scale = 100 if k == "draft_utilization" else 1
                row += [_fmt(s[k], scale), f"{100 * (a[k] - s[k]) / s[k]:+.2f}%" if s[k] else "-"]
            why = _why_apart(n, a, s, units)
            if why:
                whys.append(why)
        rows.append(row)
        out.append(rec)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
    else:
        print(f"{base.name}: closed form vs N (U in %, N* = saturating number of targets)")
        print(_table(headers, rows))
    for why in whys:
        print(f"# {why}", file=sys.stderr)
    if grown:
        print(f"# units: one per target, as the closed form assumes: {', '.join(grown)} raised up to "
              f"{max(grown.values())} where N outgrows the file's pool (--keep-pool keeps the file's pool)",
              file=sys.stderr)
    if kept:
        print(f"# units: the file's pool (--keep-pool): at N = {', '.join(map(str, kept))} targets share units, "
              "which the simulator takes turns on and the closed form does not model (each target its own)",
              file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analytic import analyze
    from .notices import notices
    from .scenario import load_scenario
    from .sim import simulate

    base = load_scenario(args.file, args.set)
    if args.n:
        return _analyze_over_n(args, base)
    a = analyze(base)
    s = simulate(base).summary if args.compare else None
    alt = _alternatives(base, args, s)
    if args.json:
        out = {"analytic": a, "sim": s} if s else a
        print(json.dumps(out if alt is None else {**out, "alternatives": alt}, indent=2, sort_keys=True,
                         default=str))
        return 0
    print(f"{base.name}: closed form, mode {base.mode}, {a['n_targets']} targets")
    headers = ["metric", "closed form"] + (["simulated", "closed vs sim"] if s else []) + ["unit"]
    print(_table(headers, _analyze_rows(a, s)))
    print()
    print(f"draft load sum(d/T) = {a['draft_load']:.4g}; saturates at N* = {_fmt(a['n_saturation'])} targets"
          + ("; SATURATED: the draft is the bottleneck" if a["saturated"] else ""))
    if a.get("draft_utilization_mva") is not None:
        print(f"exponential draft times (MVA) would give U = {100 * a['draft_utilization_mva']:.4g}%: the two ends, "
              "constant times (the closed form above) and exponential ones (MVA); the simulator draws the file's own "
              "distributions and is the one to use where they differ (--compare)")
    print(_table(
        ["target", "draft ms", "link ms", "verify ms", "cycle alone ms", "cycle ms", "TPOT below sat. ms",
         "TPOT ms", "tok/s"],
        [[p["name"], _fmt(p["draft_s"], 1e3), _fmt(p["link_s"], 1e3), _fmt(p["verify_s"], 1e3),
          _fmt(p["cycle_alone_s"], 1e3), _fmt(p["cycle_s"], 1e3), _fmt(p["tpot_below_saturation_s"], 1e3),
          _fmt(p["tpot_s"], 1e3), _fmt(p["tokens_per_s"])] for p in a["per_target"]],
    ))
    print("assumptions: " + "; ".join(a["assumptions"]))
    _print_alternatives(alt, base, args)
    _say_notices(notices(base))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import yaml

    from .notices import notices
    from .scenario import load_scenario
    from .sim.run import check_work

    sc = load_scenario(args.file, args.set)
    rounds = check_work(sc)  # a horizon too full to simulate is refused here too
    print(yaml.safe_dump(sc.to_dict(), sort_keys=False), end="")
    work = f", about {rounds:,.0f} rounds to simulate" if rounds else ""
    print(f"# ok: {sc.n_targets} targets, mode {sc.mode}, hash {sc.digest()[:12]}{work}", file=sys.stderr)
    _say_notices(notices(sc), "# note: ")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .scenario import Scenario

    print(json.dumps(Scenario.model_json_schema(by_alias=True), indent=2))
    return 0


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line refusals: ``error: starsim run: argument --x: ...``
    and exit 2, without the usage block (``--help`` still shows it). Subcommands inherit it."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _scenario_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("file", help="scenario YAML")
    sp.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field, e.g. --set targets.0.count=8 (repeatable)")


def _run_args(sp: argparse.ArgumentParser) -> None:  # what run and execute both write
    _scenario_args(sp)
    sp.add_argument("--out", type=Path, help="write the run directory here")
    sp.add_argument("--csv", action="store_true", help="tables as CSV instead of Parquet")
    sp.add_argument("--no-trace", action="store_true", help="do not write trace.json")
    sp.add_argument("--trace-s", type=seconds, default=20.0,
                    help="seconds of trace.json after warm-up (default 20)")
    sp.add_argument("--json", action="store_true", help="print summary.json instead of a table")
    sp.add_argument("--vllm-bench", type=Path, metavar="FILE",
                    help="also write the run's requests as `vllm bench serve --save-result` writes its JSON "
                    "(its keys: throughputs, mean/median/p99 TTFT, TPOT, ITL, E2E latency in ms)")


BASELINES_HELP = ("simulate the file's alternatives too (autoregressive and one_for_one, or the star; same seed), "
                  "not only their closed form")


def _run_parsers(sub) -> None:
    """run, execute, acceptance and validate: a scenario's runs."""
    r = sub.add_parser("run", help="simulate a scenario (SimPy) and summarize it, beside its alternatives")
    _run_args(r)
    r.add_argument("--baselines", action="store_true", help=BASELINES_HELP)
    r.set_defaults(func=cmd_run)

    x = sub.add_parser("execute", help="run a scenario for real: draft server + target processes over TCP (torch)")
    _run_args(x)
    x.set_defaults(func=cmd_execute)

    b = sub.add_parser("bench-compare", help="a measured `vllm bench serve --save-result` JSON beside a run, "
                       "metric by metric")
    b.add_argument("run_dir", type=Path, help="a run directory (starsim run --out, or starsim execute --out)")
    b.add_argument("result", type=Path, help="the benchmark's result JSON (vllm bench serve --save-result)")
    b.add_argument("--json", action="store_true", help="print the comparison as JSON")
    b.set_defaults(func=cmd_bench_compare)

    m = sub.add_parser("acceptance", help="write the per-position acceptance a run measured, for scenarios")
    m.add_argument("run_dir", type=Path, help="a run directory (starsim execute --out, or starsim run --out)")
    m.add_argument("--out", type=Path, help="curve file to write (default RUN_DIR/acceptance.yaml)")
    m.set_defaults(func=cmd_acceptance)

    v = sub.add_parser("validate", help="closed form, simulation and a real run of a scenario, and the errors (torch)")
    _scenario_args(v)
    v.add_argument("--sweep", metavar="FIELD=V1,V2,...", help="one point per value, e.g. targets.0.count=1,2,3,4")
    v.add_argument("--out", type=Path, help="write validation.{md,csv,json} and each point's run directories here")
    v.add_argument("--acceptance", choices=["real", "scenario"], default="real",
                   help="what the predictions accept: the curve each real run measured (default) or the file's")
    v.add_argument("--speed", choices=["spot", "matmul", "none"], default="spot",
                   help="scale profile times to the machine's speed at each run: re-time their ops just before "
                   "(spot, default), a reference matmul around it (matmul), or not (none)")
    v.add_argument("--repeat", type=int, default=3, metavar="K",
                   help="real runs per point: their mean is compared, their run-to-run spread reported beside each "
                   "error (default 3; 1 for a quick look, whose error may be run-to-run noise)")
    v.add_argument("--replay", action=argparse.BooleanOptionalAction, default=None,
                   help="also simulate each real run on its own measured times and acceptance, beside the "
                   "profile-based simulation: the model's error apart from the profiles' (default: where the "
                   "scenario can be replayed; --replay refuses one that cannot)")
    v.add_argument("--calibrate", action="store_true",
                   help="first re-time the profiles the scenario uses on this machine, on each role's declared "
                   "cores (about a minute per profile; into OUT/profiles), and predict from them")
    v.add_argument("--json", action="store_true", help="print validation.json instead of the table")
    v.set_defaults(func=cmd_validate)


def _scenario_parsers(sub) -> None:
    """analyze, check and schema: a scenario without a run."""
    a = sub.add_parser("analyze", help="closed-form predictions (optionally beside the simulation)")
    _scenario_args(a)
    a.add_argument("--compare", action="store_true", help="also simulate and show the difference")
    a.add_argument("--baselines", action="store_true", help=BASELINES_HELP)
    a.add_argument("--n", help="a table over target counts, e.g. 1-8 or 1,2,4,8 (one target group); where N "
                   "outgrows the file's pool, the pool grows to one unit per target (as the closed form assumes)")
    a.add_argument("--keep-pool", action="store_true",
                   help="with --n: keep the file's pool, so targets past it share units in the simulator")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_analyze)

    c = sub.add_parser("check", help="validate a scenario and print it resolved")
    _scenario_args(c)
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("schema", help="print the scenario JSON schema")
    s.set_defaults(func=cmd_schema)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="starsim",
        description="Predict, measure and explain one-for-many speculative decoding (StarSD).",
    )
    p.add_argument("--version", action="version", version=f"starsim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from .calibrate.commands import add_parsers as add_calibrate
    from .plan.commands import add_parsers as add_plan
    from .real.commands import add_parsers as add_models
    from .real.commands import add_server_parsers
    from .report.commands import add_parsers as add_report
    from .sweep.commands import add_parsers as add_sweep

    _run_parsers(sub)
    add_report(sub)
    _scenario_parsers(sub)
    add_sweep(sub)
    add_plan(sub)
    add_calibrate(sub)
    add_models(sub)
    add_server_parsers(sub)
    return p


@contextmanager
def _plain_warnings():
    """Warnings (e.g. a profile extrapolated) print as ``warning: ...``, without a source line."""
    saved = warnings.formatwarning
    warnings.formatwarning = lambda message, *_a, **_k: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        with _plain_warnings():
            return args.func(args)
    except StarsimError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `starsim run ... | head`
        return 0
    except KeyboardInterrupt:  # Ctrl-C: no traceback (calibrate keeps what it measured itself)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
