"""Golden runs: shipped scenarios whose simulated tables and summaries are recorded, so that a
refactor that should change nothing can prove it (``tests/test_golden.py``).

Each case is a shipped scenario with overrides (shorter runs, a policy), covering every mode
and feature: the three modes, the four policies, batching, adaptive speculation, pipelining,
the fabric with a failure, draft memory, bursty pauses, open loop, trace replay, measured CPU
profiles with noise, imported GPU profiles, heterogeneous targets.

A fingerprint holds the summary (less the machine- and path-dependent provenance), the run's
meta, and per table its columns, dtypes, row count and the SHA-256 of every column's raw bytes
(float64 bits, not their text: the same numbers hash the same under any pandas).

    python tests/golden_cases.py --record     # after an intended change; say why in the commit
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"

# name -> (scenario, overrides)
CASES: dict[str, tuple[str, list[str]]] = {
    "const_star": ("scenarios/const_star.yaml", ["duration_s=20"]),
    "ref_n4_fifo": ("scenarios/starsd_ref_n4.yaml", ["duration_s=40"]),
    "ref_n8_round_robin": ("scenarios/starsd_ref_n8.yaml", ["duration_s=30", "draft.policy=round_robin"]),
    "fair_wfq": ("scenarios/beyond_fair.yaml", ["duration_s=30", "draft.policy=wfq"]),
    "fair_edf": ("scenarios/beyond_fair.yaml", ["duration_s=30", "draft.policy=edf"]),
    "bursty": ("scenarios/starsd_ref_bursty.yaml", ["duration_s=40"]),
    "open_poisson": ("scenarios/starsd_open_poisson.yaml", ["duration_s=40"]),
    "trace_azure": ("scenarios/starsd_trace_azure.yaml", ["duration_s=40"]),
    "mtbench_lengths": ("scenarios/starsd_ref_mtbench_lengths.yaml", ["duration_s=30"]),
    "hetero": ("scenarios/starsd_hetero.yaml", ["duration_s=40"]),
    "one_for_one": ("scenarios/baseline_one_for_one_n4.yaml", ["duration_s=30"]),
    "autoregressive": ("scenarios/baseline_autoregressive_n4.yaml", ["duration_s=30"]),
    "batching": ("scenarios/real_cpu_batch.yaml", []),
    "adaptive": ("scenarios/beyond_adaptive.yaml", []),
    "pipeline": ("scenarios/beyond_pipeline.yaml", []),
    "fabric_failure": ("scenarios/beyond_fabric.yaml", []),
    "memory": ("scenarios/beyond_memory.yaml", []),
    "cpu_profiles": ("scenarios/starsd_ref_cpu_n2.yaml", ["duration_s=40"]),
    "gpu_profiles": ("scenarios/gpu/vicuna7b-eagle-a100_sxm.yaml", ["duration_s=20"]),
    # serving targets (continuous batching): the star at batch with a closed concurrency, an
    # open loop through a router, chunked prefill, KV-full preemption, the fabric, no draft
    "serving_star": ("scenarios/serving_const.yaml", ["duration_s=12"]),
    "serving_router": ("scenarios/serving_const.yaml", [
        "duration_s=12", "workload={kind: poisson, rate_per_s: 30, router: least_outstanding, prompt_tokens: "
        "{kind: uniform, low: 64, high: 512}, output_tokens: {kind: uniform, low: 64, high: 512}}"]),
    "serving_chunked": ("scenarios/serving_const.yaml", ["duration_s=12", "targets.0.serving.max_batched_tokens=256"]),
    "serving_preempt": ("scenarios/serving_const.yaml", ["duration_s=12", "targets.0.serving.kv_capacity_tokens=6000"]),
    "serving_fabric": ("scenarios/serving_const.yaml", [
        "duration_s=12", "draft.fabric={servers: 2, pairing: least_loaded, failures: [{server: 0, at_s: 6}]}"]),
    "serving_autoregressive": ("scenarios/serving_const.yaml", ["duration_s=12", "mode=autoregressive"]),
    # pipelined drafting at batch, with preemptions (a preempted sequence's pipelined tree is dropped)
    "serving_pipeline": ("scenarios/serving_const.yaml", ["duration_s=12", "draft.pipeline=true",
                                                          "targets.0.serving.kv_capacity_tokens=6000"]),
}

# provenance fields that do not depend on the machine, the checkout's path or the clock
KEEP_PROVENANCE = ("source", "scenario", "seed", "mode", "events_simulated")


def run(name: str):
    from starsim.scenario import load_scenario
    from starsim.sim import simulate

    path, overrides = CASES[name]
    return simulate(load_scenario(str(ROOT / path), overrides))


def _column_digest(values: np.ndarray) -> str:
    if values.dtype.kind in "biuf":
        raw = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"))).tobytes()
    else:  # strings: their text, NUL-separated (missing values as a marker no name uses)
        raw = "\x00".join("\x01NA" if v is None or v != v else str(v) for v in values.tolist()).encode()
    return hashlib.sha256(raw).hexdigest()


def _table(df) -> dict:
    return {
        "rows": int(len(df)),
        "columns": {c: {"dtype": str(df[c].dtype), "sha256": _column_digest(df[c].to_numpy())} for c in df.columns},
    }


def fingerprint(result) -> dict:
    """What a golden file holds for one run (see the module docstring)."""
    summary = {k: v for k, v in result.summary.items() if k != "provenance"}
    summary["provenance"] = {k: result.summary["provenance"].get(k) for k in KEEP_PROVENANCE}
    rec = result.records
    fp = {
        "summary": summary,
        "meta": rec.meta,
        "tables": {"rounds": _table(rec.rounds), "requests": _table(rec.requests), "intervals": _table(rec.intervals)},
    }
    if rec.steps is not None:  # serving targets only: other cases' files keep their keys
        fp["tables"]["steps"] = _table(rec.steps)
    # through JSON, as the file is: tuples become lists, numpy scalars numbers
    return json.loads(json.dumps(fp, sort_keys=True, default=_plain, allow_nan=False))


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON: {type(o).__name__}")


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def record(names=None) -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name in names or CASES:
        golden_path(name).write_text(json.dumps(fingerprint(run(name)), indent=1, sort_keys=True) + "\n")
        print(golden_path(name).relative_to(ROOT))


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        print(__doc__)
        sys.exit(2)
    record(sys.argv[2:] or None)
