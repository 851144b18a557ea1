"""A/B speed of the simulator: this checkout against another revision, in one process.

On a shared VM the speed moves by 1.5x within minutes, so two benchmark runs taken apart say
little about a change of a few percent. This script takes the ``starsim/`` package of
``--base`` (a git revision, via ``git archive``) and the working tree's, imports both in one
Python process under other names (the package imports itself relatively), and times
``simulate`` on the same scenario with each in turn, alternating which goes first. Every pair
of runs sees the same machine state; the report is the median of the paired ratios
(this / base; below 1: this checkout is faster) and each side's median wall time.

The scenario is ``analysis/bench_sim.py``'s: ``scenarios/starsd_ref_n4.yaml`` with N targets on
one GPU each, seed 0.

Run: ``python analysis/bench_ab.py --base b47e820 [--targets 10,1000] [--duration 600] [--pairs 6]``
"""

from __future__ import annotations

import argparse
import gc
import importlib
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "scenarios" / "starsd_ref_n4.yaml"


def _extract(base: str, into: Path) -> None:
    """``starsim/`` at revision ``base`` as ``into/s_base``, the working tree's as ``into/s_this``."""
    try:
        data = subprocess.run(["git", "archive", "--format=tar", base, "starsim"], cwd=REPO, check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        raise SystemExit(f"bench_ab: cannot read starsim/ at {base!r} with git archive: "
                         f"{err.decode(errors='replace').strip() or e}") from None
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (into / "starsim").rename(into / "s_base")
    shutil.copytree(REPO / "starsim", into / "s_this", ignore=shutil.ignore_patterns("__pycache__"))


def compare(n: int, duration: float, pairs: int) -> dict:
    mods = {k: importlib.import_module(f"s_{k}") for k in ("base", "this")}
    overrides = {"targets.0.count": n, "devices.gpu.count": n, "duration_s": duration}
    scen = {k: importlib.import_module(f"s_{k}.scenario").load_scenario(str(SCENARIO), overrides) for k in mods}
    for k in mods:  # warm-up: imports, pydantic, numpy paths
        mods[k].simulate(scen[k])
    times: dict[str, list[float]] = {"base": [], "this": []}
    for i in range(pairs):
        for k in ("base", "this") if i % 2 == 0 else ("this", "base"):
            gc.collect()
            t = time.perf_counter()
            mods[k].simulate(scen[k])
            times[k].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["this"], times["base"])]
    return {"n": n, "base_s": statistics.median(times["base"]), "this_s": statistics.median(times["this"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--base", required=True, help="git revision to compare with (e.g. a commit before a change)")
    ap.add_argument("--targets", default="10,1000", help="comma-separated N values (default 10,1000)")
    ap.add_argument("--duration", type=float, default=600.0, help="simulated seconds per run (default 600)")
    ap.add_argument("--pairs", type=int, default=6, help="timed pairs of runs per N (default 6)")
    args = ap.parse_args()
    try:
        ns = [int(x) for x in args.targets.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--targets must be integers, got {args.targets!r}")
    if not ns or min(ns) < 1 or args.pairs < 1 or not args.duration > 0:
        ap.error("need N >= 1, --pairs >= 1, --duration > 0")
    with tempfile.TemporaryDirectory(prefix="starsim-ab-") as tmp:
        _extract(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        print(f"| N | base s | this s | this/base (median of {args.pairs} pairs) | min-max |")
        print("|---|---|---|---|---|")
        for n in ns:
            r = compare(n, args.duration, args.pairs)
            print(f"| {n} | {r['base_s']:.3f} | {r['this_s']:.3f} | {r['ratio']:.3f} | "
                  f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
