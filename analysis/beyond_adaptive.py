"""Adaptive speculation beyond StarSD (README "Beyond the paper: adaptive speculation").

Runs, through the CLI:

    starsim run scenarios/beyond_adaptive.yaml --set draft.adaptive.policy=P --out runs/beyond/adaptive-P
    starsim sweep scenarios/sweeps/adaptive.yaml --out runs/sweeps/adaptive
    starsim plot runs/sweeps/adaptive --x targets.0.count --y throughput_tokens_per_s \\
        --hue draft.adaptive.policy --col acceptance.alpha --out analysis/figures/beyond/adaptive_load.png

and draws the collapse run (tokens/s and mean tree depth in 2 s bins, fixed against goodput:
``analysis/figures/beyond/adaptive_collapse.png``). Simulated, ASSUMED A100-class times, about
half a minute. With ``--real`` it also validates fixed trees against the goodput controller for
real on this CPU (2 target processes, the offline pair; about two minutes):

    starsim validate scenarios/real_cpu_n2.yaml [--set draft.adaptive.policy=goodput] --out runs/beyond/real-...

Rerun with ``python analysis/beyond_adaptive.py [--real]``.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _cli import REPO, starsim, validated  # noqa: E402  (analysis/ is on sys.path when a script runs)

RUNS = REPO / "runs" / "beyond"
SWEEP = REPO / "runs" / "sweeps" / "adaptive"
FIGS = REPO / "analysis" / "figures" / "beyond"
BIN = 2.0


def binned(rounds: pd.DataFrame, t_end: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    edges = np.arange(0.0, t_end + BIN, BIN)
    b = np.digitize(rounds["t_verify_end"], edges) - 1
    tokens = np.bincount(b, weights=rounds["emitted"], minlength=len(edges))[: len(edges) - 1] / BIN
    n = np.bincount(b, minlength=len(edges))[: len(edges) - 1]
    depth = np.bincount(b, weights=rounds["depth"], minlength=len(edges))[: len(edges) - 1] / np.maximum(n, 1)
    return edges[:-1] + BIN / 2, tokens, depth


def real() -> None:
    print("\n| real CPU, 2 targets | policy | throughput real | sim | mean depth real | sim | "
          "rounds without speculation real | sim |")
    print("|---|---|---|---|---|---|---|---|")
    for policy in ("fixed", "goodput"):
        out = RUNS / f"real-{policy}"
        m = validated("scenarios/real_cpu_n2.yaml", out, "--set", f"draft.adaptive.policy={policy}")["metrics"]
        t, d, z = m["throughput_tokens_per_s"], m["speculation_depth_mean"], m["rounds_without_speculation"]
        print(f"| | {policy} | {t['real']:.0f} | {t['sim']:.0f} ({t['sim_err_pct']:+.0f}%) | {d['real']:.2f} "
              f"| {d['sim']:.2f} | {z['real']:.0f}% | {z['sim']:.0f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also validate fixed vs goodput for real on this CPU")
    args = ap.parse_args()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(2, 1))
    print("| policy | tok/s, 0-40 s | 40-80 s (collapsed) | 80-120 s | mean depth | rounds without speculation |")
    print("|---|---|---|---|---|---|")
    for policy, color in (("fixed", "tab:gray"), ("goodput", "tab:blue")):
        out = RUNS / f"adaptive-{policy}"
        starsim("run", "scenarios/beyond_adaptive.yaml", "--set", f"draft.adaptive.policy={policy}", "--out", str(out))
        rounds = pd.read_parquet(out / "rounds.parquet")
        x, tok, depth = binned(rounds, 120.0)
        label = "fixed tree (StarSD)" if policy == "fixed" else "adaptive (goodput)"
        top.plot(x, tok, color=color, label=label)
        bottom.plot(x, depth, color=color, label=label)
        phase = pd.cut(rounds["t_verify_end"], [2, 40, 80, 120])
        rate = rounds.groupby(phase, observed=True)["emitted"].sum() / np.array([38, 40, 40])
        s = pd.read_json(out / "summary.json", typ="series")
        print(f"| {policy} | {rate.iloc[0]:.0f} | {rate.iloc[1]:.0f} | {rate.iloc[2]:.0f} | "
              f"{s['speculation_depth_mean']:.2f} | {100 * (s['rounds_without_speculation'] or 0):.0f}% |")
    for ax in (top, bottom):
        ax.axvspan(40, 80, color="#f4e3e3", zorder=0)
        ax.grid(color="#eeeeee")
    top.text(60, top.get_ylim()[1] * 0.95, "acceptance collapses\n(alpha 0.8 -> 0.05)", ha="center", va="top",
             fontsize=8)
    top.set_ylabel(f"tokens/s ({BIN:.0f} s bins)")
    bottom.set_ylabel("mean tree depth")
    bottom.set_xlabel("time (s)")
    top.legend(fontsize=8, loc="lower left")
    fig.suptitle("Adaptive speculation: 4 targets, acceptance collapses for 40 s (scenarios/beyond_adaptive.yaml)",
                 fontsize=10)
    fig.text(0.01, 0.01, "python analysis/beyond_adaptive.py (simulated, ASSUMED A100-class times)", fontsize=7,
             color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    FIGS.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGS / "adaptive_collapse.png", dpi=130)

    starsim("sweep", "scenarios/sweeps/adaptive.yaml", "--out", str(SWEEP), "--quiet")
    starsim("plot", str(SWEEP), "--x", "targets.0.count", "--y", "throughput_tokens_per_s",
            "--hue", "draft.adaptive.policy", "--col", "acceptance.alpha", "--out", str(FIGS / "adaptive_load.png"))
    t = pd.read_parquet(SWEEP / "results.parquet")
    wide = t.pivot_table(index="targets.0.count", columns=["acceptance.alpha", "draft.adaptive.policy"],
                         values=["throughput_tokens_per_s", "speculation_depth_mean"])
    print("\nthroughput (tok/s) and mean depth over N (rows), per alpha and policy")
    print(wide.round(2).to_string())
    print(f"wrote {FIGS.relative_to(REPO)}/adaptive_collapse.png, adaptive_load.png")
    if args.real:
        real()


if __name__ == "__main__":
    main()
