"""Pipelined drafting beyond StarSD (README "Beyond the paper: pipelined drafting").

Runs, through the CLI:

    starsim sweep scenarios/sweeps/pipeline.yaml --out runs/sweeps/pipeline
    starsim plot runs/sweeps/pipeline --x targets.0.count --y throughput_tokens_per_s \\
        --hue draft.pipeline --col acceptance.alpha --out analysis/figures/beyond/pipeline_throughput.png
    starsim plot runs/sweeps/pipeline --x targets.0.count --y draft_wasted_fraction \\
        --hue acceptance.alpha --where draft.pipeline=true --out analysis/figures/beyond/pipeline_wasted.png

28 simulated points (ASSUMED A100-class times), a few seconds. Rerun with
``python analysis/beyond_pipeline.py``.
"""

from __future__ import annotations

import pandas as pd
from _cli import REPO, starsim  # analysis/ is on sys.path when a script runs

OUT = REPO / "runs" / "sweeps" / "pipeline"
FIGS = REPO / "analysis" / "figures" / "beyond"


def main() -> None:
    starsim("sweep", "scenarios/sweeps/pipeline.yaml", "--out", str(OUT), "--quiet")
    starsim("plot", str(OUT), "--x", "targets.0.count", "--y", "throughput_tokens_per_s", "--hue", "draft.pipeline",
            "--col", "acceptance.alpha", "--out", str(FIGS / "pipeline_throughput.png"))
    starsim("plot", str(OUT), "--x", "targets.0.count", "--y", "draft_wasted_fraction", "--hue", "acceptance.alpha",
            "--where", "draft.pipeline=true", "--out", str(FIGS / "pipeline_wasted.png"))
    t = pd.read_parquet(OUT / "results.parquet")
    wide = t.pivot_table(index="targets.0.count", columns=["acceptance.alpha", "draft.pipeline"],
                         values="throughput_tokens_per_s")
    print("throughput (tok/s) over N (rows), per alpha and pipelining")
    print(wide.round(0).to_string())
    on = t[t["draft.pipeline"]]
    print("\npipelined: hit rate and wasted share of the draft's busy time")
    print(on.pivot_table(index="targets.0.count", columns="acceptance.alpha",
                         values=["pipeline_hit_rate", "draft_wasted_fraction"]).round(3).to_string())


if __name__ == "__main__":
    main()
