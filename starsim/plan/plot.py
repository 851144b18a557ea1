"""The plan's figure: every simulated candidate's score (composed from its stars) against its
TPOT p50, the frontier, the best star twice (composed from its stars, and its whole fleet's
own run), the baselines by the same ranking, and the recommended deployment ringed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from .plan_file import PlanFile

UNITS = {"throughput_per_gpu": "output tokens/s per GPU", "throughput_per_cost": "output tokens/s per $/h"}
WRAP = 52  # legend labels wrap here: whole, never cut


def _wrap(text: str) -> str:
    return textwrap.fill(text, WRAP, subsequent_indent="  ")


def _star_name(s: dict) -> str:
    return f"{s['targets']} x {s['target_option']} + {s['drafts']} x draft {s['draft_option']}"


def frontier_figure(df: pd.DataFrame, front: pd.DataFrame, answer: dict, plan: PlanFile, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = df[df["status"] == "simulated"]
    fig, ax = plt.subplots(figsize=(10.5, 5.0))
    ok = sim["meets"].astype(bool)
    ax.scatter(1e3 * sim.loc[~ok, "tpot_p50_s"], sim.loc[~ok, "score"], s=14, c="0.7",
               label="star candidate, misses an objective (composed from its stars)")
    ax.scatter(1e3 * sim.loc[ok, "tpot_p50_s"], sim.loc[ok, "score"], s=14, c="C0",
               label="star candidate, meets the objectives (composed from its stars)")
    ax.plot(1e3 * front["tpot_p50_s"], front["score"], "-", c="C0", lw=1, label="frontier of the composed numbers")
    s, rec = answer.get("best_star"), answer.get("recommended")
    if s:
        c = s["composed"]
        where = Path(s["scenario"]).name if s.get("scenario") else "not written"
        ax.scatter([1e3 * c["tpot_p50_s"]], [c["score"]], marker="*", s=260, facecolors="none", edgecolors="C3",
                   linewidths=1.4, zorder=6, label=_wrap(f"best star, composed from its simulated stars: "
                                                         f"{_star_name(s)}"))
        ax.scatter([1e3 * s["tpot_p50_s"]], [s["score"]], marker="*", s=220, c="C3", zorder=6,
                   label=_wrap(f"the same star, its whole fleet simulated as one scenario ({where})"))
        ax.annotate("", xy=(1e3 * s["tpot_p50_s"], s["score"]), xytext=(1e3 * c["tpot_p50_s"], c["score"]),
                    arrowprops={"arrowstyle": "->", "color": "C3", "lw": 0.8, "ls": ":"}, zorder=5)
    for j, b in enumerate(answer.get("baselines", [])):
        if b.get("tpot_p50_s") is None:
            continue
        col = f"C{(j + 4) % 10}"
        meets = b["meets"]
        ax.scatter([1e3 * b["tpot_p50_s"]], [b["score"]], marker="X", s=90, zorder=5,
                   facecolors=col if meets else "none", edgecolors=col, linewidths=1.4,
                   label=_wrap(f"{b['baseline']}: {b['targets']} x {b['target_option']}"
                               + (f" (draft {b['draft_option']} on each)" if b["draft_option"] else "")
                               + f", {b['gpus']} GPUs" + ("" if meets else ", misses an objective")))
    if rec:
        ax.scatter([1e3 * rec["tpot_p50_s"]], [rec["score"]], marker="o", s=520, facecolors="none",
                   edgecolors="k", linewidths=1.2, zorder=7)
        ax.plot([], [], "o", mfc="none", mec="k", ms=12, label=_wrap(
            f"recommended ({Path(rec['scenario']).name}): {rec['mode']}"
            + ("" if rec["meets"] else ", flagged: misses an objective in its own run")))
    if plan.objectives.tpot_p50_s:
        ax.axvline(1e3 * plan.objectives.tpot_p50_s, ls="--", c="0.4", lw=1, label="TPOT p50 objective")
    ax.margins(x=0.06, y=0.1)  # the recommended ring stays inside the axes
    ax.set_xlabel("TPOT p50 (ms)")
    ax.set_ylabel(UNITS[plan.rank])
    ax.set_title(f"starsim plan {plan.name}: {answer['candidates']:,} candidates, {answer['confirmed']:,} confirmed "
                 f"({answer['simulated_stars']} stars simulated); ranked by {plan.rank}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
              labelspacing=0.9)
    fig.text(0.01, 0.005, f"from {answer['plan']} (starsim plan); simulated with its base scenario's profiles",
             fontsize=6, color="0.4")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
