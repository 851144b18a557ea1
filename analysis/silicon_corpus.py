"""Hold starsim's serving targets against real GPU serving runs: aiconfigurator-core's silicon sample.

aiconfigurator-core (NVIDIA, Apache-2.0; ``pip install -e ".[gpu-db]"``) ships
``systems/silicon_sample.csv``: end-to-end serving runs measured on real GPUs (TTFT and TPOT
per model, GPU, serving backend and version, TP, ISL/OSL and concurrency). For every dense
model's aggregated-serving row it can price, this script

- prices the target's engine step from the same package's measured kernel tables
  (``starsim calibrate import aiconfigurator``'s step cost: the row's model, GPU, backend,
  TP and GEMM precision; the database's current version of that backend, since the rows'
  own versions are not in it);
- simulates the row as the benchmark ran it: one serving target (``mode: autoregressive``),
  ``concurrency`` users each sending fixed ISL/OSL requests back to back, joining over one
  request time (out of step, as a long benchmark's users are), ``--waves`` more requests each
  measured after that,
  ``max_seqs`` = the concurrency, a step budget of ``--budget`` tokens (chunked prefill), KV
  capacity from the GPU's memory (90% of it, less the weights; bf16 KV);
- asks aiconfigurator for its own aggregated-mode estimate of the same row;

and prints measured vs starsim vs aiconfigurator TPOT and TTFT per row, with each one's
MAPE. Rows it cannot price (MoE models, fp4/int4 weights, a model config the package does
not bundle, no recorded concurrency, weights beyond the GPUs' memory) are counted and named.

    python analysis/silicon_corpus.py [--model M] [--system S] [--backend B] [--json] [--readme]

Writes analysis/figures/silicon-corpus/silicon_corpus.{md,csv} unless filtered (--model,
--system, --backend, --max-rows) or --no-write.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import has_gpu_db, print_written, write_results  # noqa: E402

OUT = ROOT / "analysis" / "figures" / "silicon-corpus"

# The sample's dense models -> the config the package bundles for the same architecture
# (the sample names instruct and FP8 checkpoints, the package bundles their base configs)
DENSE = {
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3.1-8B",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "meta-llama/Meta-Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B": "meta-llama/Meta-Llama-3.1-70B",
    "Qwen/Qwen3-32B": "Qwen/Qwen3-32B",
    "nvidia/Qwen3-32B-NVFP4": "Qwen/Qwen3-32B",
}


def _dtype(row) -> tuple[str | None, str]:
    """The importer's dtype for a row's weights, or None and why not."""
    g = row.get("gemm_quant_mode")
    p = row.get("precision")
    g = g if isinstance(g, str) else None
    p = p if isinstance(p, str) else None
    if g in ("nvfp4", "int4_wo") or p in ("fp4", "int4"):
        return None, f"{g or p} weights: the importer prices bf16/fp16/fp8 GEMMs"
    if g in ("fp8", "fp8_block"):
        return g, g
    if p == "fp8":
        return "fp8", "fp8"
    return "bfloat16", "bfloat16 (no precision recorded: the checkpoint's own)"


def load_rows(model=None, system=None, backend=None):
    """(priced candidates, skipped: [(row id, why)], not dense: count) from the sample."""
    import pandas as pd

    from starsim.calibrate import gpu_db

    df = pd.read_csv(gpu_db.package_root() / "systems" / "silicon_sample.csv")
    df["concurrency"] = df["silicon_data_source"].str.extract(r"silicon_concurrency=(\d+)")[0].astype(float)
    df = df[df["mode"] == "agg"]
    for col, want in (("model_path", model), ("system", system), ("backend", backend)):
        if want:
            df = df[df[col].str.contains(want, case=False, regex=False)]
    dense = df[df["model_path"].isin(DENSE)]
    rows, skipped = [], []
    have = set(gpu_db.systems())
    for _, r in dense.iterrows():
        r = r.to_dict()
        dtype, why = _dtype(r)
        if dtype is None:
            skipped.append((r["id"], why))
        elif not math.isfinite(r["concurrency"]):
            skipped.append((r["id"], "no concurrency recorded (silicon_data_source lacks silicon_concurrency)"))
        elif r["system"] not in have or r["backend"] not in gpu_db.backend_versions(r["system"]):
            skipped.append((r["id"], f"no measured {r['backend']} tables for {r['system']} in the package"))
        else:
            r["dtype"], r["dtype_why"] = dtype, why
            rows.append(r)
    return rows, skipped, int(len(df) - len(dense))


class Group:
    """One (model, system, backend, TP, dtype): its step cost, KV and aiconfigurator's model."""

    def __init__(self, model: str, system: str, backend: str, tp: int, dtype: str):
        from starsim.calibrate import gpu_db, gpu_step

        self.version = gpu_db.resolve_version(system, backend, None)
        settings = gpu_db.Settings(spec=gpu_db.bundled_spec(DENSE[model], "eagle"), system=system, backend=backend,
                                   backend_version=self.version, tp=tp, dtype=dtype, roles=("target",))
        self.cost = gpu_step.import_step(settings)  # the step cost `calibrate import` writes, and its KV
        self.kv, self.kv_per_token = self.cost["kv"]
        self.model, self.system, self.backend, self.tp, self.dtype = model, system, backend, tp, dtype
        self._aic = None

    def aic(self, isl: int, osl: int, batch: int) -> tuple[float, float]:
        """aiconfigurator's own aggregated-mode (TTFT, TPOT) in seconds, as its CLI estimates a
        row (``ctx_tokens`` = ISL)."""
        from starsim.calibrate.gpu_db import _quiet

        with _quiet():
            from aiconfigurator_core.sdk.backends.factory import get_backend
            from aiconfigurator_core.sdk.config import RuntimeConfig
            from aiconfigurator_core.sdk.config_builders import build_model_config
            from aiconfigurator_core.sdk.models import get_model
            from aiconfigurator_core.sdk.models.helpers import resolve_context_fmha_by_data
            from aiconfigurator_core.sdk.perf_database import get_database_view

            if self._aic is None:
                db = get_database_view(self.system, self.backend, self.version)
                gemm = self.dtype if self.dtype.startswith("fp8") else None
                mc = build_model_config(self.tp, 1, 1, 1, 1, gemm_quant_mode=gemm)
                resolve_context_fmha_by_data(mc, DENSE[self.model], db, self.backend, is_context_role=True)
                self._aic = (get_model(DENSE[self.model], mc, self.backend), db, get_backend(self.backend))
            model, db, be = self._aic
            r = be.run_agg(model, db, RuntimeConfig(isl=isl, osl=osl, batch_size=batch), ctx_tokens=isl)
            d = r.get_result_dict()
        return float(d["ttft"]) / 1e3, float(d["tpot"]) / 1e3


def scenario_for(row: dict, g: Group, waves: int, budget: int, queued: int = 0) -> dict:
    """The row as a starsim scenario: one serving target, the benchmark's closed concurrency.
    Its users join one request time apart in all (``stagger_s``): a long benchmark's users are
    out of step, so each request's prefill lands among the others' decode steps; the first
    request time (the ramp) is warm-up, the last one cool-down, ``waves`` requests per user between
    (about). ``queued``:
    clients beyond the engine's ``max_seqs`` (each waits for a free slot: its TTFT counts it)."""
    from starsim.scenario import StepTime
    from starsim.serving import chunk_shape, tree_shape

    c, isl, osl = int(row["concurrency"]), int(row["isl"]), int(row["osl"])
    step = StepTime(**g.cost["step_time"]).mean_fn()
    e2e = step(chunk_shape(isl, 0, True)) + (osl - 1) * step(tree_shape(1, isl + osl / 2).times(c))
    # a request budget, not a horizon (a request may take longer than the estimate: KV, prefills);
    # the ramp is warm-up, the last request time cool-down (users leaving, the batch shrinking)
    return {
        "name": str(row["id"])[:120], "seed": 0, "mode": "autoregressive",
        "warmup_s": e2e, "cooldown_s": e2e, "max_requests": (c + queued) * (waves + 2),
        "devices": {"gpu": {"type": f"{g.system} x{g.tp}"}},
        "draft": {"device": "gpu", "time": 0.0},  # unused without speculation
        "targets": [{"name": "t", "device": "gpu", "verify_time": 0.0, "serving": {
            "max_seqs": c, "max_batched_tokens": budget, "kv_capacity_tokens": max(g.kv, 1),
            "step_time": g.cost["step_time"]}}],
        "workload": {"kind": "closed", "concurrency": c + queued, "stagger_s": e2e / c, "prompts": 1,
                     "prompt_tokens": isl, "output_tokens": osl},
    }


def simulate_row(data: dict) -> tuple[float | None, float | None, str | None]:
    """(TTFT s, TPOT s, error) of one row's scenario (in a worker process)."""
    from starsim.errors import StarsimError
    from starsim.scenario import validate_scenario
    from starsim.sim import simulate

    try:
        s = simulate(validate_scenario(data)).summary
    except StarsimError as e:
        return None, None, str(e).splitlines()[0][:160]
    return s["ttft_mean_s"], s["tpot_mean_s"], None


def _err(got, want) -> float | None:
    return None if got is None or not want else 100.0 * (got / want - 1.0)


def _mape(errs) -> float | None:
    e = [abs(x) for x in errs if x is not None]
    return sum(e) / len(e) if e else None


def run(args) -> dict:
    rows, skipped, not_dense = load_rows(args.model, args.system, args.backend)
    if args.max_rows:
        rows = rows[: args.max_rows]
    groups: dict[tuple, Group] = {}
    jobs = []
    for r in rows:
        key = (r["model_path"], r["system"], r["backend"], int(r["tp_size"]), r["dtype"])
        if key not in groups:
            try:
                groups[key] = Group(*key)
            except Exception as e:  # the estimator refuses the model on that system
                groups[key] = str(e).splitlines()[0][:160]
        g = groups[key]
        if isinstance(g, str):
            skipped.append((r["id"], g))
            continue
        if g.kv < int(r["isl"]) + int(r["osl"]) + 1:
            skipped.append((r["id"], f"the weights leave {max(g.kv, 0)} tokens of KV on {int(r['tp_size'])} GPU(s)"))
            continue
        jobs.append((r, g))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        sims = list(pool.map(simulate_row, [scenario_for(r, g, args.waves, args.budget, args.queued)
                                             for r, g in jobs]))
    out = []
    for (r, g), (ttft, tpot, err) in zip(jobs, sims):
        if err is None and (ttft is None or tpot is None):
            err = "no request both arrived and finished in the measured window"
        if err is not None:
            skipped.append((r["id"], err))
            continue
        aic_ttft, aic_tpot = g.aic(int(r["isl"]), int(r["osl"]), int(r["concurrency"]))
        m_ttft, m_tpot = float(r["silicon_ttft_ms"]) / 1e3, float(r["silicon_tpot_ms"]) / 1e3
        out.append({
            "id": r["id"], "model": r["model_path"], "system": r["system"], "backend": r["backend"],
            "row_version": r["backend_version"] if isinstance(r["backend_version"], str) else None,
            "db_version": g.version, "tp": int(r["tp_size"]), "dtype": r["dtype"], "isl": int(r["isl"]),
            "osl": int(r["osl"]), "concurrency": int(r["concurrency"]),
            "measured_tpot_ms": 1e3 * m_tpot, "starsim_tpot_ms": 1e3 * tpot, "aic_tpot_ms": 1e3 * aic_tpot,
            "measured_ttft_ms": 1e3 * m_ttft, "starsim_ttft_ms": 1e3 * ttft, "aic_ttft_ms": 1e3 * aic_ttft,
            "starsim_tpot_err_pct": _err(tpot, m_tpot), "aic_tpot_err_pct": _err(aic_tpot, m_tpot),
            "starsim_ttft_err_pct": _err(ttft, m_ttft), "aic_ttft_err_pct": _err(aic_ttft, m_ttft),
        })
    return {"rows": out, "skipped": skipped, "not_dense": not_dense, "groups": _group_summary(out)}


def _group_summary(rows: list[dict]) -> list[dict]:
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault((r["model"], r["system"], r["backend"], r["db_version"]), []).append(r)
    by[("all", "", "", "")] = rows
    return [{"model": k[0], "system": k[1], "backend": k[2], "db_version": k[3], "rows": len(v),
             **{f"{w}_{m}_mape_pct": _mape([x[f"{w}_{m}_err_pct"] for x in v]) for w in ("starsim", "aic")
                for m in ("tpot", "ttft")}} for k, v in by.items() if v]


def _pct(x) -> str:
    return "" if x is None else f"{x:.1f}%"


def markdown(res: dict, args) -> str:
    from starsim.calibrate import gpu_step

    lines = ["| model | GPU | backend (db) | rows | TPOT MAPE starsim | TPOT MAPE aiconfigurator | "
             "TTFT MAPE starsim | TTFT MAPE aiconfigurator |", "|---|---|---|---|---|---|---|---|"]
    for g in res["groups"]:
        lines.append(f"| {g['model']} | {g['system']} | {g['backend']} {g['db_version']} | {g['rows']} | "
                     f"{_pct(g['starsim_tpot_mape_pct'])} | {_pct(g['aic_tpot_mape_pct'])} | "
                     f"{_pct(g['starsim_ttft_mape_pct'])} | {_pct(g['aic_ttft_mape_pct'])} |")
    why: dict[str, int] = {}
    for _, w in res["skipped"]:
        why[w] = why.get(w, 0) + 1
    lines += ["", f"Rows not priced: {len(res['skipped'])} (and {res['not_dense']} aggregated rows of MoE models, "
              "not in scope):", ""]
    lines += [f"- {n} x {w}" for w, n in sorted(why.items(), key=lambda kv: -kv[1])]
    lines += ["", f"Each row: one serving target, `concurrency` users sending the row's ISL/OSL back to back, "
              f"joining over one request time (warm-up), {args.waves} more requests each measured, "
              "`max_seqs` = concurrency"
              + (f" with {args.queued} more client(s) waiting for a slot" if args.queued else "")
              + f", a {args.budget}-token step budget, KV from {gpu_step.MEMORY_FRACTION:.0%} of the "
              "GPUs' memory less the weights (bf16 KV), priced on the database's current version of the row's "
              "backend (the rows' own versions are not in the package). "
              "`python analysis/silicon_corpus.py` regenerates it."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="rows whose model_path contains this (e.g. Llama-3.1-8B)")
    ap.add_argument("--system", help="rows on this system (e.g. h100_sxm)")
    ap.add_argument("--backend", help="rows of this backend (vllm, sglang, trtllm)")
    ap.add_argument("--max-rows", type=int, default=None, help="at most this many rows (a quick look)")
    ap.add_argument("--waves", type=int, default=3, help="requests per user measured after the ramp (default 3)")
    ap.add_argument("--budget", type=int, default=8192, help="the step's token budget (default 8192)")
    ap.add_argument("--queued", type=int, default=0,
                    help="clients beyond the engine's batch, each waiting for a free slot (a what-if for TTFT; "
                    "default 0: the client's concurrency is the engine's batch)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="simulations in parallel")
    ap.add_argument("--json", action="store_true", help="print every row and group as JSON")
    ap.add_argument("--rows", action="store_true", help="print every row, not only the groups")
    ap.add_argument("--no-write", action="store_true", help="write no files")
    ap.add_argument("--readme", action="store_true", help="print the results page's table from the last written run")
    args = ap.parse_args(argv)
    if args.readme:
        return print_written(OUT / "silicon_corpus.md", "silicon_corpus.py")
    if not has_gpu_db():
        return 2
    if args.waves < 1 or args.budget < 1 or args.jobs < 1 or args.queued < 0:
        print("error: --waves, --budget and --jobs: expected numbers >= 1; --queued >= 0", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    logging.disable(logging.WARNING)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        if args.rows:
            for r in res["rows"]:
                print(f"{r['model']:34s} {r['system']:9s} {r['backend']:6s} tp{r['tp']} {r['dtype']:9s} "
                      f"{r['isl']}/{r['osl']} c{r['concurrency']:<4d} TPOT ms meas {r['measured_tpot_ms']:7.2f} "
                      f"starsim {r['starsim_tpot_ms']:7.2f} aic {r['aic_tpot_ms']:7.2f} | TTFT ms meas "
                      f"{r['measured_ttft_ms']:8.1f} starsim {r['starsim_ttft_ms']:8.1f} aic {r['aic_ttft_ms']:8.1f}")
        print(markdown(res, args))
    filtered = args.model or args.system or args.backend or args.max_rows
    if not (args.no_write or filtered):
        import csv

        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "silicon_corpus.md").write_text(markdown(res, args) + "\n")
        if (args.waves, args.budget, args.queued) == (3, 8192, 0):  # the page holds the default run
            write_results("serving", "silicon-corpus", markdown(res, args), "python analysis/silicon_corpus.py")
        with open(OUT / "silicon_corpus.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(res["rows"][0]) if res["rows"] else ["id"])
            w.writeheader()
            w.writerows(res["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
