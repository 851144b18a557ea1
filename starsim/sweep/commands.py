"""CLI: ``starsim sweep SWEEP.yaml`` and ``starsim plot RESULTS``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..flags import output_dir, output_image


def cmd_sweep(args: argparse.Namespace) -> int:
    from .run import RESULTS, run_sweep
    from .sweep_file import load_sweep

    sweep = load_sweep(args.file)
    out = output_dir(args.out) or Path("runs") / "sweeps" / sweep.spec.name
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        table = run_sweep(sweep, out, analytic=args.analytic, jobs=args.jobs, ray=args.ray,
                          keep_runs=args.keep_runs, progress=not args.quiet, say=say)
    except KeyboardInterrupt:
        print(f"interrupted: finished points are kept in {out}/points; run the same command to resume",
              file=sys.stderr)
        return 130
    print(f"{len(table)} points -> {Path(out) / RESULTS}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_results

    dest = plot_results(args.results, args.x, args.y, hue=args.hue, col=args.col, where=args.where,
                        out=output_image(args.out), logx=args.logx, logy=args.logy)
    print(f"wrote {dest}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="run a sweep file's points (simulation or closed form), in parallel, resumable")
    s.add_argument("file", type=Path, help="sweep YAML: base scenario, set, grid, zip")
    s.add_argument("--out", type=Path, help="output folder (default runs/sweeps/NAME); rerun to resume")
    s.add_argument("--analytic", action="store_true", help="closed form only (no simulation)")
    s.add_argument("--jobs", type=int, help="local worker processes (default: all CPUs)")
    s.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="run on Ray: 'local' starts an instance here, 'auto' joins the running cluster, or an address")
    s.add_argument("--keep-runs", action="store_true", help="also write each point's run directory (OUT/runs/ID)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plot", help="draw a sweep's metric against a swept field")
    p.add_argument("results", type=Path, help="a sweep's results.parquet, or its output folder")
    p.add_argument("--x", required=True, help="swept field for the x axis, e.g. targets.0.count")
    p.add_argument("--y", required=True, help="metric, e.g. draft_utilization")
    p.add_argument("--hue", help="swept field: one line per value")
    p.add_argument("--col", help="swept field: one panel per value")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help="keep only these rows")
    p.add_argument("--logx", action="store_true")
    p.add_argument("--logy", action="store_true")
    p.add_argument("--out", type=Path, help="image file (.png, .svg; default: beside the table)")
    p.set_defaults(func=cmd_plot)
