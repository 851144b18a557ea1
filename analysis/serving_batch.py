"""Does a shared draft pay at serving batch sizes? Each shipped GPU pair, its targets serving.

Each pair's scenario (``scenarios/gpu/SLUG.yaml``: 4 targets, one draft GPU) runs with its
targets serving ``B`` requests at once (continuous batching, ``workload.concurrency: B``
users per target joining out of step), B = 1, 8, 32, 64: the target's step priced by its
``.step.yaml`` (``starsim calibrate import aiconfigurator``), the draft's batched round by its
profile's ``draft_batched_fused`` op (the running sequences drafted in one forward per level),
KV from the GPU's memory. ``starsim run --baselines`` simulates the same file as a star,
decoding alone (``autoregressive``) and with a private draft per target (``one_for_one``);
the table is tokens/s per GPU and TPOT of each, and which wins.

    python analysis/serving_batch.py [--batches 1,8,32,64] [--readme]

Writes analysis/figures/serving-batch/serving_batch.{md,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "analysis" / "figures" / "serving-batch"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import print_written, write_results  # noqa: E402
from gpu_pairs import MAX_BATCHED_TOKENS, PAIRS, serving_stagger_s  # noqa: E402


def serving_set(pair, batch: int) -> list[str]:
    """The ``--set`` overrides that make the pair's targets serve ``batch`` requests at once."""
    serving = {"max_seqs": batch, "max_batched_tokens": MAX_BATCHED_TOKENS,
               "kv_capacity_tokens": pair.kv_capacity(ROOT), "step_time": {"path": str(ROOT / pair.step_file())}}
    draft = ROOT / pair.profile("draft")
    return [f"targets.0.serving={json.dumps(serving)}", f"workload.concurrency={batch}",
            f"workload.stagger_s={serving_stagger_s(batch):g}",
            f"draft.batch.time={json.dumps({'kind': 'profile', 'path': str(draft), 'op': 'draft_batched_fused'})}",
            "duration_s=60", "warmup_s=15", "cooldown_s=5"]


def run_pair(pair, batch: int) -> dict:
    scenario = ROOT / "scenarios" / "gpu" / f"{pair.slug}.yaml"
    args = [sys.executable, "-m", "starsim.cli", "run", str(scenario), "--baselines", "--json"]
    for s in serving_set(pair, batch):
        args += ["--set", s]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"serving_batch.py: {pair.slug} at batch {batch}: starsim run failed "
                         f"({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})")
    opts = {o["mode"]: o for o in json.loads(r.stdout)["alternatives"]["options"]}
    best = max(opts.values(), key=lambda o: o["throughput_per_gpu"])
    return {"pair": pair.label, "batch": batch, **{f"{m}_tok_s_per_gpu": round(o["throughput_per_gpu"], 1)
                                                   for m, o in opts.items()},
            **{f"{m}_tpot_ms": round(1e3 * o["tpot_mean_s"], 2) for m, o in opts.items() if o["tpot_mean_s"]},
            "best": best["mode"], "star_vs_best_other": round(opts["star"]["throughput_per_gpu"] / max(
                o["throughput_per_gpu"] for m, o in opts.items() if m != "star"), 3)}


def markdown(rows: list[dict]) -> str:
    lines = ["| pair | batch | star tok/s/GPU (TPOT ms) | autoregressive | one_for_one | best | star / best other |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = {m: f"{r.get(f'{m}_tok_s_per_gpu', '-')} ({r.get(f'{m}_tpot_ms', '-')})"
                for m in ("star", "autoregressive", "one_for_one")}
        lines.append(f"| {r['pair']} | {r['batch']} | {cell['star']} | {cell['autoregressive']} | "
                     f"{cell['one_for_one']} | {r['best']} | {r['star_vs_best_other']:.2f}x |")
    lines += ["", "4 targets per star (one draft GPU), each serving `batch` requests; simulated, same seed for "
              "every mode. `python analysis/serving_batch.py` regenerates it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32,64", help="requests per target (default 1,8,32,64)")
    ap.add_argument("--readme", action="store_true", help="print the results page's table from the last written run")
    args = ap.parse_args(argv)
    if args.readme:
        return print_written(OUT / "serving_batch.md", "serving_batch.py")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print(f"error: --batches: expected e.g. 1,8,32,64, got {args.batches!r}", file=sys.stderr)
        return 2
    if not batches or min(batches) < 1:
        print("error: --batches: each at least 1", file=sys.stderr)
        return 2
    missing = [p for p in PAIRS if not (ROOT / p.step_file()).is_file()]
    if missing:
        print(f"error: no step-cost file for {missing[0].label}: python analysis/import_gpu_profiles.py writes them",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    rows = [run_pair(p, b) for p in PAIRS for b in batches]
    md = markdown(rows)
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving_batch.md").write_text(md + "\n")
    if args.batches == "1,8,32,64":  # the page holds the default batches
        write_results("serving", "serving-batch", md, "python analysis/serving_batch.py")
    with open(OUT / "serving_batch.csv", "w", newline="") as f:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("pair", "batch"), k))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
