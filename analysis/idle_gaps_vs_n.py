"""How much the draft's idle gaps shrink from 1 to N targets (analysis/results/idle_gaps.md).

Runs the shipped reference scenarios through the CLI (``starsim run FILE --json``), prints a
markdown table and, without ``--set``, puts it in the results page; rerun with
``python analysis/idle_gaps_vs_n.py``. The times in
``starsd_ref_n*.yaml`` are ASSUMED (A100-class guesses, see the YAML files);
``--family cpu`` runs ``starsd_ref_cpu_n*.yaml`` instead, on the measured CPU profiles.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _cli import write_results  # analysis/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
FAMILIES = {
    "ref": "scenarios/starsd_ref_n{n}.yaml",
    "cpu": "scenarios/starsd_ref_cpu_n{n}.yaml",
}


def run(path: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "starsim.cli", "run", path, "--json"]
    for o in overrides:
        cmd += ["--set", o]
    # stderr passes through: a profile extrapolation warning must be seen
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--set", action="append", default=[], help="override passed to every run")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="ref", help="which scenarios (default ref)")
    args = ap.parse_args()
    files = [FAMILIES[args.family].format(n=n) for n in (1, 2, 4, 8)]
    rows = []
    base = None
    for f in files:
        s = run(f, args.set)
        base = base or s
        red = 1 - s["draft_idle_gap_mean_s"] / base["draft_idle_gap_mean_s"]
        rows.append(
            f"| {s['n_targets']} | {100 * s['draft_utilization']:.1f}% | {1e3 * s['draft_idle_gap_mean_s']:.2f} | "
            f"{1e3 * s['draft_idle_gap_p50_s']:.2f} | {1e3 * s['draft_idle_gap_p99_s']:.2f} | "
            f"{100 * s['draft_idle_ratio_mean']:.1f}% | {100 * red:.0f}% | {s['throughput_tokens_per_s']:.0f} | "
            f"{s['throughput_tokens_per_s'] / s['n_targets']:.0f} | {1e3 * s['draft_queue_wait_mean_s']:.2f} |"
        )
    table = "\n".join(["| N | draft utilization | idle gap mean ms | p50 ms | p99 ms | idle ratio | gap reduction vs "
                       "N=1 | throughput tok/s | per target tok/s | queue wait ms |",
                       "|---|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    flag = "" if args.family == "ref" else f" --family {args.family}"
    command = f"python analysis/idle_gaps_vs_n.py{flag}"
    print(f"\nscenarios: {', '.join(files)}; command: {command}")
    if not args.set:  # a what-if with overrides stays on the terminal
        write_results("idle_gaps", f"idle-gaps-{args.family}", table, command)


if __name__ == "__main__":
    main()
