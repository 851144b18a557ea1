"""Pipelined drafting beyond StarSD (README "Beyond the paper: pipelined drafting").

Runs, through the CLI:

    starsim sweep scenarios/sweeps/pipeline.yaml --out runs/sweeps/pipeline
    starsim plot runs/sweeps/pipeline --x targets.0.count --y throughput_tokens_per_s \\
        --hue draft.pipeline --col acceptance.alpha --out analysis/figures/beyond/pipeline_throughput.png
    starsim plot runs/sweeps/pipeline --x targets.0.count --y draft_wasted_fraction \\
        --hue acceptance.alpha --where draft.pipeline=true --out analysis/figures/beyond/pipeline_wasted.png

28 simulated points (ASSUMED A100-class times), a few seconds. With ``--real`` it also
validates pipelining on and off for real on this CPU (2 target processes, the offline pair;
about two minutes):

    starsim validate scenarios/real_cpu_n2.yaml --set draft.pipeline=P --out runs/beyond/real-pipeline-P

Rerun with ``python analysis/beyond_pipeline.py [--real]``.
"""

from __future__ import annotations

import argparse

import pandas as pd
from _cli import REPO, starsim, validated  # analysis/ is on sys.path when a script runs

OUT = REPO / "runs" / "sweeps" / "pipeline"
FIGS = REPO / "analysis" / "figures" / "beyond"


def real() -> None:
    print("\n| real CPU, 2 targets | pipeline | throughput real | sim | hits real | sim "
          "| draft time wasted real | sim |")
    print("|---|---|---|---|---|---|---|---|")
    for on in ("false", "true"):
        out = REPO / "runs" / "beyond" / f"real-pipeline-{on}"
        m = validated("scenarios/real_cpu_n2.yaml", out, "--set", f"draft.pipeline={on}")["metrics"]

        def pct(row, side):
            return "" if row[side] is None else f"{row[side]:.0f}%"

        t, h, w = m["throughput_tokens_per_s"], m["pipeline_hit_rate"], m["draft_wasted_fraction"]
        print(f"| | {on} | {t['real']:.0f} | {t['sim']:.0f} ({t['sim_err_pct']:+.0f}%) | {pct(h, 'real')} "
              f"| {pct(h, 'sim')} | {pct(w, 'real')} | {pct(w, 'sim')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also validate pipelining on and off for real on this CPU")
    args = ap.parse_args()
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
    if args.real:
        real()


if __name__ == "__main__":
    main()
