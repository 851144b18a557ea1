"""CLI: ``starsim plan PLAN.yaml`` (``starsim plan --schema``: the plan file's JSON schema)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import StarsimError
from ..flags import output_dir

UNITS = {"throughput_per_gpu": "tok/s per GPU", "throughput_per_cost": "tok/s per $/h"}


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan_file import PlanFile, load_plan
    from .run import run_plan

    if args.schema:
        print(json.dumps(PlanFile.model_json_schema(), indent=2))
        return 0
    if args.file is None:
        raise StarsimError("starsim plan: give a plan file (or --schema for the plan file's JSON schema)")
    plan, base = load_plan(args.file)
    out = output_dir(args.out) or Path("runs") / "plans" / plan.name
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    a = run_plan(plan, args.file, base, out, workers=args.jobs, ray=args.ray, progress=not args.quiet,
                 say=say or (lambda m: None))
    print(format_answer(a, plan.rank))
    files = ["frontier.csv", "frontier.png", "candidates.parquet", "plan.json"]
    files += [f for f in ("chosen.yaml", "best_star.yaml", "baselines.csv") if (out / f).is_file()]
    print(f"wrote {out}/: {', '.join(files)}")
    return 0


def _ms(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{1e3 * v:.{digits}f} ms"


def _what(e: dict[str, Any]) -> str:
    """A deployment in words: mode, targets and their GPU, the drafts, the grid."""
    tp = f", {e['gpus_per_target']} GPUs each" if e["gpus_per_target"] > 1 else ""
    grid = "".join(f", {k}={v}" for k, v in e["grid"].items())
    t = f"{e['targets']} targets on {e['target_option']} ({e['target_gpu']}{tp})"
    if e["mode"] == "star":
        return f"star, {t}, {e['drafts']} draft(s) on {e['draft_option']} ({e['draft_gpu']}){grid}"
    if e["mode"] == "one_for_one":
        return f"one_for_one, {t}, each with its own {e['draft_option']} draft on its GPU{grid}"
    return f"autoregressive, {t}, no speculation{grid}"


def _tail(e: dict[str, Any], key: str, floor: int, decided: bool) -> str:
    """``4.56 ms (from 230 requests)``, and whether that is short of the floor a p99 objective needs."""
    t = e["tails"][key]
    s = f"{_ms(t['value'], 2 if key.startswith('tpot') else 0)} (from {t['samples']:,} requests"
    if key == "tpot_p99_s" and decided and e.get("rounds"):
        s += f", {e['rounds']:,} rounds"
    if t["objective"] is not None and t["samples"] < floor:
        s += (f"; FEWER than the {floor} a p99 objective needs (confirm.tail_samples), still at the "
              f"{e['horizon_factor']:g}x cap on the window (confirm.max_horizon)" if decided else f": < {floor}")
    return s + ")"


def _numbers(e: dict[str, Any], floor: int, decided: bool) -> list[str]:
    per = f"{e['throughput_per_gpu']:.2f} tok/s per GPU"
    if e.get("throughput_per_cost") is not None:
        per += f", {e['throughput_per_cost']:.2f} tok/s per $/h"
    util = "" if e.get("draft_utilization") is None else f", draft utilization {100 * e['draft_utilization']:.0f}%"
    lines = [f"  {e['throughput_tokens_per_s']:.1f} tok/s ({per}), TPOT p50 {_ms(e['tpot_p50_s'])}, "
             f"p99 {_tail(e, 'tpot_p99_s', floor, decided)}, TTFT p99 {_tail(e, 'ttft_p99_s', floor, decided)}{util}"]
    if e.get("measured_s") is not None:
        f = e["horizon_factor"]
        why = ("lengthened until each p99 objective of the recommended run rests on "
               f"{floor} requests or more" if decided else "as every deciding run")
        lines.append(f"  measured over {e['measured_s']:g} simulated s"
                     + (f" ({f:g}x the plan's {e['measured_s'] / f:g} s: {why})" if f > 1 else ""))
    return lines


def format_answer(a: dict, rank: str) -> str:
    unit = UNITS[rank]
    floor = a.get("tail_samples", 100)
    lines = [f"{a['candidates']:,} candidates: {a['infeasible_by_bound']:,} miss a TPOT objective in closed form, "
             f"{a['pruned']:,} pruned by their bound, {a['confirmed']:,} confirmed by simulating "
             f"{a['simulated_stars']} stars, {a['meet_objectives']:,} meet every objective ({a['wall_s']:.1f} s)"
             + (" [search capped: raise confirm.max_sims]" if a["search_capped"] else "")]
    r, s = a["recommended"], a["best_star"]
    if r is None:
        lines.append(f"verdict: {a['verdict']}")
        return "\n".join(lines)
    lines.append(f"recommended: {_what(r)}: {r['gpus']} GPUs"
                 + (f", ${r['price_per_hour']:.2f}/h" if r.get("price_per_hour") else "")
                 + ("" if r["meets"] else " [MISSES an objective in its own run: see plan.json]"))
    lines += _numbers(r, floor, True)
    if r["mode"] == "star":
        lines += _star_lines(r)
    else:
        tight = max(r["objective_ratios"], key=lambda k: r["objective_ratios"][k] or 0.0)
        lines.append(f"  the tightest objective: {tight} at {100 * (r['objective_ratios'][tight] or 0):.0f}% of its "
                     "bound")
    lines.append(f"  scenario: {r['scenario']}  (starsim run it)")
    if s is not None and s is not r and s["scenario"] != r["scenario"]:
        lines.append(f"best star: {_what(s)}: {s['gpus']} GPUs"
                     + ("" if s["meets"] else " [misses an objective in its own run]"))
        lines += _numbers(s, floor, False) + _star_lines(s)
        lines.append(f"  scenario: {s['scenario']}")
    if a["baselines"]:
        bud = a.get("baseline_budget") or {}
        lines.append(f"baselines on {bud.get('gpus')} GPUs ({bud.get('from')}), by {unit}:")
    star = s["score"] if s else None
    for b in a["baselines"]:
        gain = f"; the best star gives {star / b['score']:.2f}x" if star and b["score"] else ""
        lines.append(f"  vs {b['baseline']}: {b['targets']} x {b['target_option']}"
                     + (f" (draft {b['draft_option']} on each)" if b["draft_option"] else "")
                     + f", {b['gpus']} GPUs: {b['score']:.2f} {unit}, TPOT p50 {_ms(b['tpot_p50_s'])}, "
                     f"p99 {_tail(b, 'tpot_p99_s', floor, False)}, TTFT p99 {_tail(b, 'ttft_p99_s', floor, False)}; "
                     + ("meets the objectives" if b["meets"] else "misses an objective")
                     + (" [recommended]" if b["scenario"] else "") + gain)
    lines.append(f"verdict: {a['verdict']}")
    return "\n".join(lines)


def _star_lines(e: dict[str, Any]) -> list[str]:
    c = e["composed"]
    return [f"  (the whole fleet simulated as one scenario; composed from its stars: "
            f"{c['throughput_tokens_per_s']:.1f} tok/s, score {c['score']:.2f})",
            f"  limit: {e['limit']}", f"  {e['objective']}"]


def add_parsers(sub) -> None:
    p = sub.add_parser("plan", help="what to deploy: search drafts, targets, trees and GPUs under latency objectives")
    p.add_argument("file", type=Path, nargs="?", help="plan YAML: base scenario, options, space, objectives")
    p.add_argument("--schema", action="store_true", help="print the plan file's JSON schema (every field described)")
    p.add_argument("--out", type=Path, help="output folder (default runs/plans/NAME)")
    p.add_argument("--jobs", type=int, help="local worker processes for the simulations (default: all CPUs)")
    p.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="simulate on Ray: 'local' starts an instance here, 'auto' joins the running cluster")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_plan)
