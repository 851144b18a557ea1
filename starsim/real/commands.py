"""``starsim models ...``: the command-line side of the offline models (parsers and handlers).

Importing this module does not import torch; the handlers do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..calibrate.commands import _need_torch

DEFAULT_PAIR = Path("models/pairs/stdlib-pair")


def cmd_build_pair(args: argparse.Namespace) -> int:
    _need_torch()
    from .pair import QUICK, PairSettings, build_pair

    settings = QUICK if args.quick else PairSettings()
    settings.seed = args.seed
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    info = build_pair(args.out, settings, say=say)
    h = info["holdout"]
    print(f"wrote {args.out} in {info['provenance']['wall_s']} s: target loss {h['target_loss']} "
          f"(top-1 accuracy {h['target_top1_accuracy']}), draft/target top-1 agreement "
          f"{h['draft_target_top1_agreement']} on held-out text")
    return 0


def add_parsers(sub) -> None:
    m = sub.add_parser("models", help="build the offline draft/target pair (torch)")
    msub = m.add_subparsers(dest="models_command", metavar="WHAT")
    b = msub.add_parser("build-pair", help="train a target and distil a draft on the CPython stdlib sources")
    b.add_argument("--out", type=Path, default=DEFAULT_PAIR, help=f"output directory (default {DEFAULT_PAIR})")
    b.add_argument("--quick", action="store_true", help="a tiny pair in seconds (tests, smoke runs)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=cmd_build_pair)

    def no_what(args):
        m.print_help()
        return 2

    m.set_defaults(func=no_what)
