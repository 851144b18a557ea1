"""``starsim report``: the command-line side of the report (parser and handler).

Importing this module does not import matplotlib; the handler does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..flags import seconds

DEFAULT_MULTI_OUT = Path("report")


def cmd_report(args: argparse.Namespace) -> int:
    from . import build_report, default_command, parse_formats

    fmts = parse_formats(args.format)
    out = args.out or (args.run_dirs[0] / "report" if len(args.run_dirs) == 1 else DEFAULT_MULTI_OUT)
    command = default_command(args.run_dirs, out, fmts, args.t_from, args.t_to)
    rep = build_report(args.run_dirs, out, fmts, t_from=args.t_from, t_to=args.t_to, command=command,
                       keep_figures=False)
    for note in rep.notes:
        print(f"note: {note}")
    print(f"wrote {rep.html} and {len(rep.files)} figure files in {out}")
    return 0


def add_parsers(sub) -> None:
    r = sub.add_parser("report", help="idle-gap report of run directories: figures (PNG/SVG) and one offline HTML page")
    r.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directories (starsim run --out, or starsim execute --out), or a starsim validate --out "
                   "directory: each point's real run, its replay and its simulation, side by side")
    r.add_argument("--out", type=Path,
                   help=f"output directory (default RUN_DIR/report for one run, ./{DEFAULT_MULTI_OUT} for several)")
    r.add_argument("--format", default="png,svg", help="figure files: png, svg or png,svg (default png,svg)")
    r.add_argument("--from", dest="t_from", type=seconds, metavar="S",
                   help="timeline start, seconds on the run's clock (default: the end of warm-up)")
    r.add_argument("--to", dest="t_to", type=seconds, metavar="S", help="timeline end (default: 0.5 s after --from)")
    r.set_defaults(func=cmd_report)
