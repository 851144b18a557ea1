"""The plan's figure: every simulated candidate's score against its TPOT p50, the frontier,
the chosen configuration and the baselines on its GPU budget."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .plan_file import PlanFile

UNITS = {"throughput_per_gpu": "output tokens/s per GPU", "throughput_per_cost": "output tokens/s per $/h"}


def frontier_figure(df: pd.DataFrame, front: pd.DataFrame, answer: dict, plan: PlanFile, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = df[df["status"] == "simulated"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ok = sim["meets"].astype(bool)
    ax.scatter(1e3 * sim.loc[~ok, "tpot_p50_s"], sim.loc[~ok, "score"], s=14, c="0.7", label="misses an objective")
    ax.scatter(1e3 * sim.loc[ok, "tpot_p50_s"], sim.loc[ok, "score"], s=14, c="C0", label="meets the objectives")
    ax.plot(1e3 * front["tpot_p50_s"], front["score"], "-", c="C0", lw=1, label="frontier (simulated)")
    c = answer.get("chosen")
    if c:
        ax.scatter([1e3 * c["tpot_p50_s"]], [c["score"]], marker="*", s=220, c="C3", zorder=5,
                   label=f"chosen: {c['targets']} x {c['target_option']}, {c['drafts']} x draft {c['draft_option']} "
                   "(its whole fleet's own run)")
        per = {"throughput_per_gpu": 1.0}.get(plan.rank)
        for j, b in enumerate(answer.get("baselines", [])):
            if per is not None and b.get("tpot_p50_s"):
                ax.scatter([1e3 * b["tpot_p50_s"]], [b["throughput_per_gpu"]], marker="X", s=80, c=f"C{j + 4}",
                           zorder=5, label=f"{b['baseline']} ({b['targets']} targets, same GPUs)")
    if plan.objectives.tpot_p50_s:
        ax.axvline(1e3 * plan.objectives.tpot_p50_s, ls="--", c="0.4", lw=1, label="TPOT p50 objective")
    ax.set_xlabel("TPOT p50 (ms)")
    ax.set_ylabel(UNITS[plan.rank])
    ax.set_title(f"starsim plan {plan.name}: {answer['candidates']:,} candidates, {answer['confirmed']:,} confirmed "
                 f"({answer['simulated_stars']} stars simulated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.text(0.01, 0.005, f"from {answer['plan']} (starsim plan); simulated with its base scenario's profiles",
             fontsize=6, color="0.4")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
