"""CLI: ``starsim plan PLAN.yaml``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..flags import output_dir


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan_file import load_plan
    from .run import run_plan

    plan, base = load_plan(args.file)
    out = output_dir(args.out) or Path("runs") / "plans" / plan.name
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    a = run_plan(plan, args.file, base, out, workers=args.jobs, ray=args.ray, progress=not args.quiet,
                 say=say or (lambda m: None))
    print(format_answer(a, plan.rank))
    print(f"wrote {out}/: frontier.csv, frontier.png, candidates.parquet, plan.json"
          + (", chosen.yaml, baselines.csv" if a["chosen"] else ""))
    return 0


def format_answer(a: dict, rank: str) -> str:
    unit = "tok/s per GPU" if rank == "throughput_per_gpu" else "tok/s per $/h"
    lines = [f"{a['candidates']:,} candidates: {a['infeasible_by_bound']:,} miss a TPOT objective in closed form, "
             f"{a['pruned']:,} pruned by their bound, {a['confirmed']:,} confirmed by simulating "
             f"{a['simulated_stars']} stars, {a['meet_objectives']:,} meet every objective ({a['wall_s']:.1f} s)"
             + (" [search capped: raise confirm.max_sims]" if a["search_capped"] else "")]
    c = a["chosen"]
    if c is None:
        lines.append("no simulated configuration meets the objectives: relax them, or widen the space")
        return "\n".join(lines)
    grid = "".join(f", {k}={v}" for k, v in c["grid"].items())
    lines += [f"chosen: {c['targets']} targets on {c['target_option']}, {c['drafts']} draft(s) on "
              f"{c['draft_option']}{grid}: {c['gpus']} GPUs",
              f"  {c['throughput_tokens_per_s']:.1f} tok/s ({c['score']:.2f} {unit}), TPOT p50 "
              f"{1e3 * c['tpot_p50_s']:.2f} ms, p99 {1e3 * c['tpot_p99_s']:.2f} ms, TTFT p99 "
              f"{1e3 * (c['ttft_p99_s'] or 0):.0f} ms, draft utilization {100 * (c['draft_utilization'] or 0):.0f}%",
              f"  (the whole fleet simulated as one scenario; from its stars: "
              f"{c['composed_throughput_tokens_per_s']:.1f} tok/s)"
              + ("" if c["meets_in_its_own_run"] else " MISSES an objective in its own run: see plan.json"),
              f"  limit: {c['limit']}", f"  {c['objective']}"]
    star = c["throughput_tokens_per_s"] / c["gpus"]
    for b in a["baselines"]:
        gain = star / b["throughput_per_gpu"] if b["throughput_per_gpu"] else None
        lines.append(f"  vs {b['baseline']} on {b['gpus']} GPUs: {b['throughput_per_gpu']:.2f} tok/s per GPU, TPOT p50 "
                     f"{1e3 * (b['tpot_p50_s'] or 0):.2f} ms" + ("" if b["meets"] else " (misses an objective)")
                     + (f"; the chosen star gives {gain:.2f}x per GPU" if gain else ""))
    lines.append(f"  scenario: {c['scenario']}  (starsim run it)")
    beat = [b for b in a["baselines"] if b["meets"] and b["throughput_per_gpu"] > star]
    if beat:
        b = max(beat, key=lambda b: b["throughput_per_gpu"])
        lines.append(f"verdict: {b['baseline']} meets the objectives with {b['throughput_per_gpu'] / star:.2f}x the "
                     f"best star's throughput per GPU: on these profiles one shared draft does not pay")
    else:
        lines.append("verdict: the star above is the best way found to meet the objectives on these GPUs")
    return "\n".join(lines)


def add_parsers(sub) -> None:
    p = sub.add_parser("plan", help="what to deploy: search drafts, targets, trees and GPUs under latency objectives")
    p.add_argument("file", type=Path, help="plan YAML: base scenario, options, space, objectives")
    p.add_argument("--out", type=Path, help="output folder (default runs/plans/NAME)")
    p.add_argument("--jobs", type=int, help="local worker processes for the simulations (default: all CPUs)")
    p.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="simulate on Ray: 'local' starts an instance here, 'auto' joins the running cluster")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_plan)
