"""How many targets one draft feeds as the link slows and the tree deepens (README "Sweep
many scenarios").

Runs, through the CLI:

    starsim sweep scenarios/sweeps/n_latency_depth.yaml --out runs/sweeps/n-latency-depth
    starsim plot runs/sweeps/n-latency-depth --x targets.0.count --y draft_utilization \\
        --hue targets.0.link.latency_s --col draft.tree.depth --out analysis/figures/sweep/utilization.png
    starsim plot runs/sweeps/n-latency-depth --x targets.0.count --y throughput_tokens_per_s \\
        --hue targets.0.link.latency_s --where draft.tree.depth=5 --out analysis/figures/sweep/throughput.png

112 simulated points (the StarSD reference, ASSUMED A100-class times), about ten seconds on
two cores; a rerun reuses the points already there. Rerun with
``python analysis/sweep_n_latency_depth.py``.
"""

from __future__ import annotations

import pandas as pd
from _cli import REPO, no_options, starsim  # analysis/ is on sys.path when a script runs

OUT = REPO / "runs" / "sweeps" / "n-latency-depth"
FIGS = REPO / "analysis" / "figures" / "sweep"


def main() -> None:
    no_options(__doc__)
    starsim("sweep", "scenarios/sweeps/n_latency_depth.yaml", "--out", str(OUT), "--quiet")
    base = ["plot", str(OUT), "--x", "targets.0.count", "--hue", "targets.0.link.latency_s"]
    starsim(*base, "--y", "draft_utilization", "--col", "draft.tree.depth", "--out", str(FIGS / "utilization.png"))
    starsim(*base, "--y", "throughput_tokens_per_s", "--where", "draft.tree.depth=5",
            "--out", str(FIGS / "throughput.png"))
    t = pd.read_parquet(OUT / "results.parquet")
    # the smallest N that keeps the draft >= 90% busy, per latency and depth
    busy = t[t["draft_utilization"] >= 0.9].groupby(["targets.0.link.latency_s", "draft.tree.depth"])
    first = busy["targets.0.count"].min().unstack()
    print(f"{len(t)} points. Smallest N with the draft >= 90% busy (rows: one-way latency s; columns: depth):")
    print(first.to_string())


if __name__ == "__main__":
    main()
