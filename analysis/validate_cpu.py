"""Sim vs real vs closed form on this CPU, N = 1..4 (README "Validate and report").

Runs, through the CLI:

    starsim validate scenarios/real_cpu_n2.yaml --sweep targets.0.count=1,2,3,4 --out runs/validate-cpu
    starsim report runs/validate-cpu/*/real runs/validate-cpu/*/sim --out analysis/figures/validate-cpu

and prints the MAPE lines the README quotes. Needs the offline pair (`starsim models
build-pair`) and about two minutes; real runs vary by a few percent from one to the next on
a shared VM. Rerun with ``python analysis/validate_cpu.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "validate-cpu"
FIGS = REPO / "analysis" / "figures" / "validate-cpu"
POINTS = (1, 2, 3, 4)


def starsim(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "starsim.cli", *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    starsim("validate", "scenarios/real_cpu_n2.yaml", "--sweep", f"targets.0.count={','.join(map(str, POINTS))}",
            "--out", str(OUT))
    runs = [str(OUT / f"targets.0.count={n}" / kind) for kind in ("real", "sim") for n in POINTS]
    starsim("report", *runs, "--out", str(FIGS), "--format", "png")
    v = json.loads((OUT / "validation.json").read_text())
    print("| N | real tok/s | sim tok/s | sim err | real util | sim util | sim err |")
    print("|---|---|---|---|---|---|---|")
    for p in v["points"]:
        m = {row["metric"]: row for row in p["metrics"]}
        t, u = m["throughput_tokens_per_s"], m["draft_utilization"]
        print(f"| {p['point'].split('=')[1]} | {t['real']:.0f} | {t['sim']:.0f} | {t['sim_err_pct']:+.0f}% "
              f"| {u['real']:.1f}% | {u['sim']:.1f}% | {u['sim_err_pct']:+.0f}% |")
    ms, ma = v["mape_sim_pct"], v["mape_analytic_pct"]
    print(f"\nMAPE, simulator: utilization {ms['draft_utilization']:.1f}%, throughput "
          f"{ms['throughput_tokens_per_s']:.1f}%; closed form: {ma['draft_utilization']:.1f}%, "
          f"{ma['throughput_tokens_per_s']:.1f}%")
    worst = {p["point"]: p["components"][0]["component"] for p in v["points"]}
    print("largest component of the round-time miss per point:", worst)


if __name__ == "__main__":
    main()
