"""Batched drafting beyond StarSD (analysis/results/beyond.md, "Batched drafting").

Runs, through the CLI:

    starsim sweep scenarios/sweeps/batching.yaml --out runs/sweeps/batching
    starsim plot runs/sweeps/batching --x targets.0.count --y throughput_tokens_per_s \\
        --hue draft.batch.max --out analysis/figures/beyond/batching_throughput.png
    starsim plot runs/sweeps/batching --x targets.0.count --y tpot_mean_s \\
        --hue draft.batch.max --out analysis/figures/beyond/batching_tpot.png

28 simulated points (the StarSD reference, ASSUMED A100-class times and an ASSUMED batched
cost), a few seconds. With ``--real`` it also runs batched drafting for real on this CPU
and compares it with the simulator, batched against one at a time (6 target processes and
a draft server, the offline pair; needs it built; about two minutes):

    starsim validate scenarios/real_cpu_batch.yaml --repeat 2 --set draft.batch.max=B --out runs/beyond/real-batch-B

for B = 4 and 1, and writes the table to ``analysis/figures/beyond/batching_real.md`` and the results page.
Rerun with ``python analysis/beyond_batching.py [--real]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from _cli import REPO, starsim, validated, write_results  # analysis/ is on sys.path when a script runs

OUT = REPO / "runs" / "sweeps" / "batching"
FIGS = REPO / "analysis" / "figures" / "beyond"
REAL_OUT = REPO / "runs" / "beyond"
REAL_TABLE = FIGS / "batching_real.md"
REAL_SCENARIO = "scenarios/real_cpu_batch.yaml"
REPEAT = 2


def rounds_per_batch(run: Path) -> float | None:
    """Draft rounds per busy interval of the draft (1: one task at a time)."""
    iv = pd.read_parquet(run / "intervals.parquet", columns=["kind"])
    n = int((iv["kind"] == "draft").sum())
    return len(pd.read_parquet(run / "rounds.parquet", columns=["round"])) / n if n else None


def real_point(bmax: int) -> dict:
    out = REAL_OUT / f"real-batch-{bmax}"
    got = validated(REAL_SCENARIO, out, "--repeat", str(REPEAT), "--set", f"draft.batch.max={bmax}")
    p, m = got["point"], got["metrics"]
    runs = sorted(d for d in (out / "base").iterdir() if d.is_dir())
    real = [rounds_per_batch(d) for d in runs if d.name.startswith("real")]
    sim = [rounds_per_batch(d) for d in runs if d.name.startswith("sim")]
    return {"m": m, "spread": p.get("real_spread_pct") or {}, "speed": p.get("speed_ratio") or {},
            "batch_real": sum(real) / len(real) if real else None, "batch_sim": sum(sim) / len(sim) if sim else None}


def real_table() -> str:
    pts = {b: real_point(b) for b in (4, 1)}

    def cell(p, key, fmt, scale=1.0):
        r = p["m"][key]
        cv = p["spread"].get(key)
        spread = f" (CV {cv:.1f}%)" if cv is not None else ""
        return (f"{r['real'] * scale:{fmt}}{spread} | {r['sim'] * scale:{fmt}} | {r['sim_err_pct']:+.1f}%")

    lines = [
        f"Real vs simulated, `{REAL_SCENARIO}` (6 targets, fifo), `starsim validate --repeat {REPEAT}`: "
        "the real numbers are the mean of the runs (their spread in brackets).",
        "",
        "| draft.batch.max | tok/s real | sim | err | draft util % real | sim | err | TPOT ms real | sim | err "
        "| rounds per batch real | sim |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, p in pts.items():
        br, bs = p["batch_real"], p["batch_sim"]
        lines.append(f"| {b} | {cell(p, 'throughput_tokens_per_s', '.0f')} | {cell(p, 'draft_utilization', '.1f')} "
                     f"| {cell(p, 'tpot_mean_s', '.1f')} | {br:.2f} | {bs:.2f} |")
    r4, r1 = (pts[b]["m"]["throughput_tokens_per_s"] for b in (4, 1))
    lines += ["", f"Batching's gain: real {r4['real'] / r1['real']:.2f}x, simulated {r4['sim'] / r1['sim']:.2f}x.",
              "", "Speed ratios used (profile op re-timed now / at calibration, `--speed spot`): "
              + "; ".join(f"max {b}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(p["speed"].items())
                                                      if k.startswith("draft"))
                          for b, p in pts.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also run batched drafting for real on this CPU")
    args = ap.parse_args()
    starsim("sweep", "scenarios/sweeps/batching.yaml", "--out", str(OUT), "--quiet")
    for y, name in (("throughput_tokens_per_s", "batching_throughput.png"), ("tpot_mean_s", "batching_tpot.png")):
        starsim("plot", str(OUT), "--x", "targets.0.count", "--y", y, "--hue", "draft.batch.max",
                "--out", str(FIGS / name))
    t = pd.read_parquet(OUT / "results.parquet")
    wide = t.pivot_table(index="targets.0.count", columns="draft.batch.max", values="throughput_tokens_per_s")
    print("throughput (tok/s), rows: N, columns: batch.max")
    print(wide.round(0).to_string())
    if args.real:
        table = real_table()
        REAL_TABLE.parent.mkdir(parents=True, exist_ok=True)
        REAL_TABLE.write_text(f"# Batched drafting, real (`python analysis/beyond_batching.py --real`)\n\n{table}")
        print()
        print(table, end="")
        print(f"wrote {REAL_TABLE.relative_to(REPO)}")
        write_results("beyond", "batching-real", table, "python analysis/beyond_batching.py --real")


if __name__ == "__main__":
    main()
