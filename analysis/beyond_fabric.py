"""An M-for-N draft fabric beyond StarSD (README "Beyond the paper: M-for-N draft fabric").

Runs, through the CLI:

    starsim run scenarios/beyond_fabric.yaml --out runs/beyond/fabric-failure
    starsim run scenarios/beyond_fabric.yaml --set draft.fabric.servers=1 --set 'draft.fabric.failures=[]' \\
        --out runs/beyond/fabric-one
    starsim sweep scenarios/sweeps/fabric.yaml --out runs/sweeps/fabric
    starsim sweep scenarios/sweeps/fabric.yaml --analytic --out runs/sweeps/fabric-analytic
    starsim plot runs/sweeps/fabric --x targets.0.count --y throughput_tokens_per_s \\
        --hue draft.fabric.servers --out analysis/figures/beyond/fabric_throughput.png

and draws the failure run (draft rounds per second each server serves, and tokens/s, in 2 s
bins: ``analysis/figures/beyond/fabric_failure.png``). Simulated, ASSUMED A100-class times,
under a minute. With ``--real`` it also validates the fabric for real on this CPU (2 draft
servers, 4 target processes, server 0 stopped at 6 s; about a minute):

    starsim validate scenarios/real_cpu_fabric.yaml --out runs/beyond/real-fabric

Rerun with ``python analysis/beyond_fabric.py [--real]``.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _cli import REPO, error_table, starsim, validated  # noqa: E402  (analysis/ is on sys.path when a script runs)

RUNS = REPO / "runs" / "beyond"
SWEEP = REPO / "runs" / "sweeps" / "fabric"
FIGS = REPO / "analysis" / "figures" / "beyond"
BIN = 2.0


def rate(t: np.ndarray, weights: np.ndarray | None, edges: np.ndarray) -> np.ndarray:
    return np.histogram(t, edges, weights=weights)[0] / BIN


def real() -> None:
    out = RUNS / "real-fabric"
    m = validated("scenarios/real_cpu_fabric.yaml", out)["metrics"]
    keys = ("draft_utilization", "throughput_tokens_per_s", "tpot_mean_s", "fabric_repairs")
    print("\n" + error_table("real CPU, 2 servers, 4 targets, server 0 fails at 6 s", m, keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also validate the fabric for real on this CPU")
    args = ap.parse_args()
    FIGS.mkdir(parents=True, exist_ok=True)
    out, one = RUNS / "fabric-failure", RUNS / "fabric-one"
    starsim("run", "scenarios/beyond_fabric.yaml", "--out", str(out))
    starsim("run", "scenarios/beyond_fabric.yaml", "--set", "draft.fabric.servers=1", "--set",
            "draft.fabric.failures=[]", "--out", str(one))
    rounds = pd.read_parquet(out / "rounds.parquet")
    edges = np.arange(0.0, 120.0 + BIN, BIN)
    x = edges[:-1] + BIN / 2
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for j, color in ((0, "tab:orange"), (1, "tab:blue")):
        mine = rounds[rounds["draft"] == j]
        top.plot(x, rate(mine["t_draft_end"].to_numpy(), None, edges), color=color, label=f"draft server {j}")
    top.set_ylabel("draft rounds/s")
    base = pd.read_parquet(one / "rounds.parquet")
    bottom.plot(x, rate(rounds["t_verify_end"].to_numpy(), rounds["emitted"].to_numpy(), edges), color="tab:green",
                label="2 servers, server 0 fails at 60 s")
    bottom.plot(x, rate(base["t_verify_end"].to_numpy(), base["emitted"].to_numpy(), edges), color="tab:gray",
                label="1 server (StarSD)")
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel("time (s)")
    for ax in (top, bottom):
        ax.axvline(60, color="tab:red", lw=1, ls="--")
        ax.grid(color="#eeeeee")
        ax.legend(fontsize=8, loc="lower left")
    top.text(62, top.get_ylim()[1] * 0.75, "server 0 fails", color="tab:red", fontsize=8)
    fig.suptitle("M-for-N fabric: 16 targets, 2 draft servers, least-loaded pairing (scenarios/beyond_fabric.yaml)",
                 fontsize=10)
    fig.text(0.01, 0.01, "python analysis/beyond_fabric.py (simulated, ASSUMED A100-class times)", fontsize=7,
             color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(FIGS / "fabric_failure.png", dpi=130)
    s, s1 = (json.loads((d / "summary.json").read_text()) for d in (out, one))
    tv = rounds["t_verify_end"]
    before = rounds[(tv > 2) & (tv < 60)]["emitted"].sum() / 58
    after = rounds[tv > 62]["emitted"].sum() / 58
    print(f"failure run: {s['throughput_tokens_per_s']:.0f} tok/s over the run ({before:.0f} before the failure, "
          f"{after:.0f} after), {s['fabric_repairs']} targets moved, {s['requests_unfinished']} unfinished at the end; "
          f"one server: {s1['throughput_tokens_per_s']:.0f} tok/s")

    starsim("sweep", "scenarios/sweeps/fabric.yaml", "--out", str(SWEEP), "--quiet")
    starsim("sweep", "scenarios/sweeps/fabric.yaml", "--analytic", "--out", str(SWEEP) + "-analytic", "--quiet")
    starsim("plot", str(SWEEP), "--x", "targets.0.count", "--y", "throughput_tokens_per_s",
            "--hue", "draft.fabric.servers", "--out", str(FIGS / "fabric_throughput.png"))
    keys = ["targets.0.count", "draft.fabric.servers"]
    sim = pd.read_parquet(SWEEP / "results.parquet").set_index(keys)["throughput_tokens_per_s"]
    ana = pd.read_parquet(str(SWEEP) + "-analytic/results.parquet").set_index(keys)["throughput_tokens_per_s"]
    table = pd.DataFrame({"sim": sim, "closed form": ana}).unstack("draft.fabric.servers")
    print("\nthroughput (tok/s) over N (rows), per number of draft servers: simulated and closed form")
    print(table.round(0).to_string())
    if args.real:
        real()


if __name__ == "__main__":
    main()
