"""Batched drafting beyond StarSD (README "Beyond the paper: batched drafting").

Runs, through the CLI:

    starsim sweep scenarios/sweeps/batching.yaml --out runs/sweeps/batching
    starsim plot runs/sweeps/batching --x targets.0.count --y throughput_tokens_per_s \\
        --hue draft.batch.max --out analysis/figures/beyond/batching_throughput.png
    starsim plot runs/sweeps/batching --x targets.0.count --y tpot_mean_s \\
        --hue draft.batch.max --out analysis/figures/beyond/batching_tpot.png

28 simulated points (the StarSD reference, ASSUMED A100-class times and an ASSUMED batched
cost), a few seconds. Rerun with ``python analysis/beyond_batching.py``.
"""

from __future__ import annotations

import pandas as pd
from _cli import REPO, starsim  # analysis/ is on sys.path when a script runs

OUT = REPO / "runs" / "sweeps" / "batching"
FIGS = REPO / "analysis" / "figures" / "beyond"


def main() -> None:
    starsim("sweep", "scenarios/sweeps/batching.yaml", "--out", str(OUT), "--quiet")
    for y, name in (("throughput_tokens_per_s", "batching_throughput.png"), ("tpot_mean_s", "batching_tpot.png")):
        starsim("plot", str(OUT), "--x", "targets.0.count", "--y", y, "--hue", "draft.batch.max",
                "--out", str(FIGS / name))
    t = pd.read_parquet(OUT / "results.parquet")
    wide = t.pivot_table(index="targets.0.count", columns="draft.batch.max", values="throughput_tokens_per_s")
    print("throughput (tok/s), rows: N, columns: batch.max")
    print(wide.round(0).to_string())


if __name__ == "__main__":
    main()
