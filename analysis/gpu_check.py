"""The GPU check: calibrate one GPU spec, compare it with the imported profile, run a real star.

The script of ``starsim calibrate gpu-check`` (the code: ``starsim/calibrate/gpu_check/``),
with the same options. Runs, through the CLI, into one output directory (``--out``; default
``analysis/figures/gpu_check/DATE-DEVICE/``), within a time budget (``--budget-s``, 8 minutes):
the spec calibrated per role, the measured profiles against the imported (aiconfigurator)
ones of the same GPU, a real star on the same device (execute and validate for 1 and 2
targets), then ``summary.md`` and ``steps.json``.

``--device cpu`` runs the same steps at toy size (``tiny-cpu``, ``--grid quick``, a short
workload): what the test runs. ``--readme`` prints the README section. Exit status: 0 all
steps ran, 1 a step failed or was skipped (its log is in ``logs/``), 2 a prerequisite is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # starsim without an install (a bare GPU image: PYTHONPATH and the repo)
OPTIONS = REPO / "starsim" / "calibrate" / "gpu_check" / "options.py"  # the standard library only


def main(argv: list[str] | None = None) -> int:
    try:
        from starsim.calibrate.gpu_check import main as check
    except ImportError as e:
        if (e.name or "").partition(".")[0] == "starsim":
            raise
        return without_starsim(e.name, argv)
    return check(argv)


def without_starsim(missing: str | None, argv: list[str] | None) -> int:
    """starsim's dependencies are missing (a bare GPU image): ``--help`` and ``--readme``
    still answer, from the options file alone; anything else is one line, exit 2."""
    spec = importlib.util.spec_from_file_location("gpu_check_options", OPTIONS)
    options = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = options  # its dataclasses look their module up there
    spec.loader.exec_module(options)
    args = options.parser().parse_args(argv)
    if args.readme:
        print(options.readme(), end="")
        return 0
    print(f"error: starsim's dependencies are missing ({missing}): pip install -e '.[torch]', or put wheels "
          "of them on PYTHONPATH", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
