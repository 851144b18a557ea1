"""Draft memory beyond StarSD (README "Beyond the paper: draft memory").

Runs, through the CLI:

    starsim sweep scenarios/sweeps/memory.yaml --out runs/sweeps/memory
    starsim run scenarios/beyond_memory.yaml --out runs/beyond/memory
    starsim report runs/beyond/memory --out analysis/figures/beyond/memory_report --format png

and draws throughput and evictions per round over the memory capacity, one line per N
(``analysis/figures/beyond/memory.png``); the report's figure 7 is the memory over time of
the 256 MB run. Simulated, ASSUMED A100-class times, under a minute. With ``--real`` it also
validates a draft memory of 200 kB (about one of two targets' contexts) for real on this CPU
(about a minute):

    starsim validate scenarios/real_cpu_n2.yaml --set draft.memory_bytes=200000 --out runs/beyond/real-memory

Rerun with ``python analysis/beyond_memory.py [--real]``.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _cli import REPO, error_table, starsim, validated  # noqa: E402  (analysis/ is on sys.path when a script runs)

SWEEP = REPO / "runs" / "sweeps" / "memory"
RUN = REPO / "runs" / "beyond" / "memory"
FIGS = REPO / "analysis" / "figures" / "beyond"


def real() -> None:
    m = validated("scenarios/real_cpu_n2.yaml", REPO / "runs" / "beyond" / "real-memory",
                  "--set", "draft.memory_bytes=200000")["metrics"]
    keys = ("draft_evictions", "draft_utilization", "throughput_tokens_per_s", "tpot_mean_s")
    print("\n" + error_table("real CPU, 2 targets, 200 kB of draft KV memory", m, keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also validate a draft memory limit for real on this CPU")
    args = ap.parse_args()
    starsim("sweep", "scenarios/sweeps/memory.yaml", "--out", str(SWEEP), "--quiet")
    starsim("run", "scenarios/beyond_memory.yaml", "--out", str(RUN))
    starsim("report", str(RUN), "--out", str(FIGS / "memory_report"), "--format", "png")
    t = pd.read_parquet(SWEEP / "results.parquet")
    cap = t["draft.memory_bytes"]
    t["capacity"] = np.where(cap.isna(), "unlimited", (cap / 2**20).round().astype("Int64").astype(str) + " MB")
    order = ["unlimited"] + [f"{int(b / 2**20)} MB" for b in sorted(cap.dropna().unique(), reverse=True)]
    t["evictions_per_round"] = t["draft_evictions"] / t["rounds"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, g in t.groupby("targets.0.count"):
        g = g.set_index("capacity").loc[order]
        left.plot(order, g["throughput_tokens_per_s"], marker="o", label=f"{n} targets")
        right.plot(order, g["evictions_per_round"], marker="o", label=f"{n} targets")
    left.set_ylabel("throughput (tokens/s)")
    right.set_ylabel("evictions per round")
    for ax in (left, right):
        ax.set_xlabel("draft KV memory for the targets' caches")
        ax.grid(color="#eeeeee")
        ax.legend(fontsize=8)
    fig.suptitle("Draft memory: LRU eviction and re-encoding (scenarios/sweeps/memory.yaml, ASSUMED A100-class times)",
                 fontsize=10)
    fig.text(0.01, 0.01, "python analysis/beyond_memory.py", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(FIGS / "memory.png", dpi=130)
    wide = t.pivot_table(index="capacity", columns="targets.0.count",
                         values=["throughput_tokens_per_s", "evictions_per_round", "draft_kv_bytes_peak"]).loc[order]
    print("over the draft's memory capacity (rows) and N (columns)")
    print(wide.round(2).to_string())
    print(f"wrote {(FIGS / 'memory.png').relative_to(REPO)} and the report in "
          f"{(FIGS / 'memory_report').relative_to(REPO)}")
    if args.real:
        real()


if __name__ == "__main__":
    main()
