"""Sim vs real vs closed form on this CPU, N = 1..4 and 8 (analysis/results/validation.md).

Runs, through the CLI, on the declared resources of real_cpu_declared_n2.yaml (draft on
core 0, the targets taking turns on core 1; ``--scenario`` for another):

    starsim validate scenarios/real_cpu_declared_n2.yaml --sweep targets.0.count=1,2,3,4,8 --repeat 3 \
        --replay --out runs/validate-cpu
    starsim report runs/validate-cpu --out analysis/figures/validate-cpu

and prints the table the results page quotes (and puts it there): per point, the mean of three real runs beside the
simulation on the profiles and the replay of each real run on its own measured times (the
model's error alone, whatever the machine's speed that day), the MAPE, the real runs' own
run-to-run spread (on a shared VM they move by 5-12% between runs, the floor under a
profile-based prediction's error), and the draft idle gaps' distributions side by side. Needs the offline pair
(`starsim models build-pair`) and about fifteen minutes. Rerun with
``python analysis/validate_cpu.py``.

``--beyond``: instead, the policies beyond StarSD on the same declared cores, two real runs
each (about four minutes): batched drafting (real_cpu_declared_batch.yaml), the M-for-N
fabric with a failure (real_cpu_declared_fabric.yaml) and a draft memory that holds about one
context (real_cpu_declared_n2.yaml with ``--set draft.memory_bytes=200000``); the table goes
to analysis/figures/validate-cpu/beyond.md.

``--serving``: a real serving target (continuous batching, scenarios/real_cpu_serving_n1.yaml:
one target on core 1, its draft on core 0, eight users) at max_seqs = 1, 2, 4, 8, three real
runs each (about ten minutes): throughput, TPOT and draft utilization, simulated, in closed
form and measured; the table goes to analysis/results/real.md, one per ``--speed`` (validate's
scaling of the profiles to the machine's speed: ``matmul``, this script's default, ``spot``
or ``none``).
"""

from __future__ import annotations

import argparse
import json

from _cli import REPO, starsim, validated, write_results  # analysis/ is on sys.path when a script runs

from starsim.profile_fields import cpu_name

OUT = REPO / "runs" / "validate-cpu"
FIGS = REPO / "analysis" / "figures" / "validate-cpu"
POINTS = (1, 2, 3, 4, 8)
REPEAT = 3
BEYOND = (  # (what, scenario, extra validate arguments)
    ("batched drafting (up to 4), 6 targets", "scenarios/real_cpu_declared_batch.yaml", ()),
    ("fabric: 2 drafts, 4 targets, one draft fails at 6 s", "scenarios/real_cpu_declared_fabric.yaml", ()),
    ("draft memory for about one context, 2 targets", "scenarios/real_cpu_declared_n2.yaml",
     ("--set", "draft.memory_bytes=200000")),
)


def header(first: str, replay: bool = False) -> list[str]:
    more = " replay tok/s | replay err |" if replay else ""
    more_u = " replay util | replay err |" if replay else ""
    n = 7 + (4 if replay else 0)
    return [f"| {first} | real tok/s (CV) | sim tok/s | sim err |{more} real util (CV) | sim util | sim err |{more_u}",
            "|" + "---|" * n]


def row(label: str, metrics: dict, cv: dict, replay: bool = False) -> str:
    """One table row: throughput and draft utilization, real (with its CV) and simulated (from
    the profiles, and replayed on the real run's own times when ``replay``)."""
    t, u = metrics["throughput_tokens_per_s"], metrics["draft_utilization"]
    rt = f" {t['replay']:.0f} | {t['replay_err_pct']:+.1f}% |" if replay else ""
    ru = f" {u['replay']:.1f}% | {u['replay_err_pct']:+.1f}% |" if replay else ""
    return (f"| {label} | {t['real']:.0f} ({cv['throughput_tokens_per_s']:.1f}%) | {t['sim']:.0f} | "
            f"{t['sim_err_pct']:+.1f}% |{rt} {u['real']:.1f}% ({cv['draft_utilization']:.1f}%) | "
            f"{u['sim']:.1f}% | {u['sim_err_pct']:+.1f}% |{ru}")


def drift(v: dict) -> list[str]:
    """Per point: how far the profiles (as validate scaled them) were from what the real runs
    measured, on the two times the runs are made of: the draft's round and the target's
    verify (validate's component table: means over every real run of the point, against the
    simulation's)."""
    lines = ["| N | draft round: real / profile (ms) | profile err | verify: real / profile (ms) | profile err |",
             "|---|---|---|---|---|"]
    for p in v["points"]:
        comp = {c["component"]: c for c in p["components"]}
        cells = [f"{c['real_ms']:.2f} / {c['sim_ms']:.2f} | {100 * c['diff_ms'] / c['real_ms']:+.1f}%"
                 for c in (comp["draft time"], comp["verify time"])]
        lines.append(f"| {p['point'].split('=')[1]} | " + " | ".join(cells) + " |")
    return lines


def gap_table(v: dict) -> list[str]:
    """Per point: the draft idle gaps' mean and p99 (ms), real, simulated and replayed, and each
    one's Kolmogorov-Smirnov distance to the real gaps."""
    lines = ["| N | real mean | real p99 | sim mean | sim p99 | sim KS | replay mean | replay p99 | replay KS |",
             "|" + "---|" * 9]
    for p in v["points"]:
        g = p["idle_gaps"]
        cells = [f"{g['real']['mean_ms']:.2f}", f"{g['real']['p99_ms']:.2f}"]
        for src in ("sim", "replay"):
            cells += [f"{g[src]['mean_ms']:.2f}", f"{g[src]['p99_ms']:.2f}", f"{g[src]['ks']:.3f}"]
        lines.append(f"| {p['point'].split('=')[1]} | " + " | ".join(cells) + " |")
    return lines


def beyond() -> None:
    """The BEYOND runs, two real runs each, as one table (printed, and kept in beyond.md)."""
    lines = header("run")
    for i, (what, scenario, extra) in enumerate(BEYOND):
        v = validated(scenario, OUT / f"beyond-{i}", "--repeat", "2", *extra)
        lines.append(row(what, v["metrics"], v["point"]["real_spread_pct"]))
    table = "\n".join(lines)
    FIGS.mkdir(parents=True, exist_ok=True)
    (FIGS / "beyond.md").write_text(f"# Beyond StarSD on declared cores: real vs simulated\n\n"
                                    f"`python analysis/validate_cpu.py --beyond`\n\n{table}\n")
    print(table)
    write_results("validation", "validate-cpu-beyond", table, "python analysis/validate_cpu.py --beyond")


SERVING = "scenarios/real_cpu_serving_n1.yaml"
SEQS = (1, 2, 4, 8)
# (metric, label, format): validate's values are in its display units (ms, %)
SERVING_METRICS = (("throughput_tokens_per_s", "tok/s", "{:.0f}"), ("tpot_mean_s", "TPOT ms", "{:.2f}"),
                   ("draft_utilization", "util %", "{:.1f}"))


def serving(speed: str) -> None:
    """The serving sweep (see the module docstring) with validate's ``--speed``: one table, the
    MAPE beneath it."""
    out = OUT / f"serving-speed-{speed}"
    starsim("validate", SERVING, "--sweep", f"targets.0.serving.max_seqs={','.join(map(str, SEQS))}",
            "--repeat", str(REPEAT), "--speed", speed, "--out", str(out))
    table = serving_table(out)
    print(table)
    write_results("real", f"validate-cpu-serving-speed-{speed}", table,
                  f"python analysis/validate_cpu.py --serving --speed {speed}")


def serving_table(out) -> str:
    """The serving sweep's table from its validation.json in ``out``."""
    v = json.loads((out / "validation.json").read_text())
    cols = " | ".join(f"real {u} (CV) | sim | err | closed form" for _, u, _ in SERVING_METRICS)
    lines = [f"| max_seqs | {cols} |", "|---" * (1 + 4 * len(SERVING_METRICS)) + "|"]
    for p in v["points"]:
        got = {r["metric"]: r for r in p["metrics"]}
        cells = []
        for key, _, fmt in SERVING_METRICS:
            r, cv = got[key], p["real_spread_pct"].get(key, float("nan"))
            f = (lambda x, fmt=fmt: "-" if x is None else fmt.format(x))
            cells.append(f"{f(r['real'])} ({cv:.1f}%) | {f(r['sim'])} | {r['sim_err_pct']:+.1f}% | {f(r['analytic'])}")
        lines.append(f"| {p['point'].split('=')[1]} | {' | '.join(cells)} |")
    ms, ma, rs = v["mape_sim_pct"], v["mape_analytic_pct"], v["real_spread_pct"]
    lines += ["", "MAPE, simulator: " + ", ".join(f"{u} {ms[k]:.1f}%" for k, u, _ in SERVING_METRICS)
              + "; closed form: " + ", ".join(f"{u} {ma[k]:.1f}%" for k, u, _ in SERVING_METRICS)
              + "; real runs' run-to-run CV: " + ", ".join(f"{u} {rs[k]:.1f}%" for k, u, _ in SERVING_METRICS)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="scenarios/real_cpu_declared_n2.yaml",
                    help="the real scenario (default: scenarios/real_cpu_declared_n2.yaml)")
    ap.add_argument("--beyond", action="store_true",
                    help="the batched, fabric and memory-limited runs instead of the N sweep")
    ap.add_argument("--serving", action="store_true",
                    help="a real serving target at max_seqs 1, 2, 4, 8 instead of the N sweep")
    ap.add_argument("--speed", choices=("spot", "none", "matmul"), default="matmul",
                    help="--serving: how validate scales the profiles to this machine's speed (default matmul, the "
                    "closest of the three in one sweep each on this VM: analysis/results/real.md)")
    ap.add_argument("--table-only", action="store_true",
                    help="no runs: the tables and figures again from the last sweep in runs/validate-cpu")
    args = ap.parse_args()
    if args.beyond:
        beyond()
        return
    if args.serving:
        serving(args.speed)
        return
    if not args.table_only:
        starsim("validate", args.scenario, "--sweep", f"targets.0.count={','.join(map(str, POINTS))}",
                "--repeat", str(REPEAT), "--replay", "--out", str(OUT))
    starsim("report", str(OUT), "--out", str(FIGS), "--format", "png")  # each point: real, replay, sim
    (FIGS / "validation.md").write_text((OUT / "validation.md").read_text())  # the whole table, every metric
    v = json.loads((OUT / "validation.json").read_text())
    lines = [f"Measured on {cpu_name()}.", ""] + header("N", replay=True)
    for p in v["points"]:
        lines.append(row(p["point"].split("=")[1], {r["metric"]: r for r in p["metrics"]}, p["real_spread_pct"],
                         replay=True))
    ms, mr, ma, rs = v["mape_sim_pct"], v["mape_replay_pct"], v["mape_analytic_pct"], v["real_spread_pct"]
    lines += ["", f"MAPE, utilization and throughput: replay (the model alone) {mr['draft_utilization']:.1f}%, "
              f"{mr['throughput_tokens_per_s']:.1f}%; simulator on the profiles {ms['draft_utilization']:.1f}%, "
              f"{ms['throughput_tokens_per_s']:.1f}%; closed form {ma['draft_utilization']:.1f}%, "
              f"{ma['throughput_tokens_per_s']:.1f}%; real runs' run-to-run CV: {rs['draft_utilization']:.1f}%, "
              f"{rs['throughput_tokens_per_s']:.1f}%. Idle-gap mean: replay {mr['draft_idle_gap_mean_s']:.1f}%, "
              f"simulator {ms['draft_idle_gap_mean_s']:.1f}%.", "",
              "Draft idle gaps (ms; all runs of a point pooled) and their distance to the real ones:", ""]
    lines += gap_table(v)
    lines += ["", "The profiles against these runs (what the simulator on the profiles carries beside the model's "
              "own error):", ""] + drift(v)
    print("\n".join(lines))
    if args.scenario == "scenarios/real_cpu_declared_n2.yaml":  # the page's table is the declared run's
        write_results("validation", "validate-cpu", "\n".join(lines), "python analysis/validate_cpu.py")
    worst = {p["point"]: p["components"][0]["component"] for p in v["points"]}
    print("largest component of the round-time miss per point:", worst)


if __name__ == "__main__":
    main()
