"""Fair scheduling beyond StarSD (README "Beyond the paper: fair scheduling").

Simulates ``scenarios/beyond_fair.yaml`` (2 premium targets of weight 3 with a 12 ms/token
TPOT objective, 6 standard ones; ASSUMED A100-class times) under each draft-server policy,
past saturation (8 targets) and below it (the standard group cut to 2: 4 targets), through
the CLI:

    starsim run scenarios/beyond_fair.yaml --set draft.policy=P [--set targets.1.count=2] --out ...

and draws tokens/s per target group and the premium targets' SLO attainment per policy
(``analysis/figures/beyond/fair.png``). With ``--real`` it also validates weighted fair
queueing against FIFO on this CPU, for real (8 target processes; needs the offline pair,
about two minutes):

    starsim validate scenarios/real_cpu_wfq.yaml [--set draft.policy=fifo] --out runs/beyond/real-...

Rerun with ``python analysis/beyond_fair.py [--real]``.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _cli import REPO, starsim, validated  # noqa: E402  (analysis/ is on sys.path when a script runs)

OUT = REPO / "runs" / "beyond"
FIG = REPO / "analysis" / "figures" / "beyond" / "fair.png"
POLICIES = ("fifo", "round_robin", "wfq", "edf")
CASES = (("8 targets (past saturation, N* = 5)", []), ("4 targets (below saturation)", ["targets.1.count=2"]))


def simulate(policy: str, sets: list[str], tag: str) -> dict:
    out = OUT / f"{tag}-{policy}"
    extra = [x for s in sets for x in ("--set", s)]
    starsim("run", "scenarios/beyond_fair.yaml", "--set", f"draft.policy={policy}", *extra, "--out", str(out))
    return json.loads((out / "summary.json").read_text())


def group_rate(summary: dict, name: str) -> float:
    rates = [p["tokens_per_s"] for p in summary["per_target"] if p["name"].startswith(name + "-")]
    return sum(rates) / len(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also validate wfq and fifo for real on this CPU")
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    print("| targets | policy | premium tok/s | standard tok/s | premium SLO met | all tok/s |")
    print("|---|---|---|---|---|---|")
    for ax, (title, sets) in zip(axes, CASES):
        tag = "n8" if not sets else "n4"
        rows = {p: simulate(p, sets, tag) for p in POLICIES}
        x = range(len(POLICIES))
        prem = [group_rate(rows[p], "premium") for p in POLICIES]
        std = [group_rate(rows[p], "standard") for p in POLICIES]
        ax.bar([i - 0.2 for i in x], prem, width=0.4, label="premium target (weight 3, SLO 12 ms/token)")
        ax.bar([i + 0.2 for i in x], std, width=0.4, label="standard target (weight 1)")
        for i, p in enumerate(POLICIES):
            met = rows[p]["slo_attainment"]
            ax.annotate(f"SLO met\n{100 * met:.0f}%", (i - 0.2, prem[i]), ha="center", va="bottom", fontsize=8)
            print(f"| {tag[1:]} | {p} | {prem[i]:.0f} | {std[i]:.0f} | {100 * met:.0f}% "
                  f"| {rows[p]['throughput_tokens_per_s']:.0f} |")
        ax.set_xticks(list(x), POLICIES)
        ax.set_xlabel("draft-server policy")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", color="#eeeeee")
        ax.set_axisbelow(True)
    axes[0].set_ylabel("tokens/s per target (simulated)")
    axes[0].set_ylim(0, max(ax.get_ylim()[1] for ax in axes) * 1.15)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Fair scheduling: who gets the draft (scenarios/beyond_fair.yaml, ASSUMED A100-class times)",
                 fontsize=11)
    fig.text(0.01, 0.01, "python analysis/beyond_fair.py", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG, dpi=130)
    print(f"wrote {FIG.relative_to(REPO)}")
    if args.real:
        print("\n| real CPU, 8 targets | policy | Jain (tok/s / weight) real | sim | throughput real | sim |")
        print("|---|---|---|---|---|---|")
        for p in ("fifo", "wfq"):
            out = OUT / f"real-{p}"
            m = validated("scenarios/real_cpu_wfq.yaml", out, "--set", f"draft.policy={p}")["metrics"]
            j, t = m["target_weighted_jain"], m["throughput_tokens_per_s"]
            print(f"| | {p} | {j['real']:.3f} | {j['sim']:.3f} ({j['sim_err_pct']:+.1f}%) | {t['real']:.0f} "
                  f"| {t['sim']:.0f} ({t['sim_err_pct']:+.0f}%) |")


if __name__ == "__main__":
    main()
