"""How a summary metric is shown: its label, unit and the scale from its SI value. One table
for the terminal (``starsim run``), ``starsim validate`` and the HTML report, so a metric reads
the same everywhere (a ratio in % in all three)."""

from __future__ import annotations

from typing import NamedTuple


class Display(NamedTuple):
    key: str  # the summary.json key (metrics.summarize)
    label: str
    unit: str
    scale: float  # shown value = summary value * scale


DISPLAY: dict[str, Display] = {d.key: d for d in (
    Display("draft_utilization", "draft utilization", "%", 100.0),
    Display("draft_idle_gap_mean_s", "draft idle gap, mean", "ms", 1e3),
    Display("draft_idle_gap_p50_s", "draft idle gap, p50", "ms", 1e3),
    Display("draft_idle_gap_p99_s", "draft idle gap, p99", "ms", 1e3),
    Display("draft_idle_ratio_mean", "draft idle ratio (mean of windows)", "%", 100.0),
    Display("draft_task_time_mean_s", "draft task time, mean", "ms", 1e3),
    Display("draft_queue_wait_mean_s", "draft queue wait, mean", "ms", 1e3),
    Display("draft_tasks_per_s", "draft tasks per second", "/s", 1.0),
    Display("draft_kv_bytes_peak", "draft KV bytes, peak", "MB", 1e-6),
    Display("throughput_tokens_per_s", "system throughput", "tok/s", 1.0),
    Display("target_tokens_per_s_mean", "per-target throughput, mean", "tok/s", 1.0),
    Display("mean_accepted_tokens", "tokens per round (bonus incl.)", "", 1.0),
    Display("rounds", "rounds measured", "", 1.0),
    Display("requests_completed", "requests completed", "", 1.0),
    Display("requests_unfinished", "requests unfinished at the end", "", 1.0),
    Display("ttft_mean_s", "TTFT, mean", "ms", 1e3),
    Display("tpot_mean_s", "TPOT, mean", "ms", 1e3),
    Display("measured_s", "measured", "s", 1.0),
    Display("target_tokens_per_s_jain", "Jain's index of per-target tok/s", "", 1.0),
    Display("target_weighted_jain", "Jain's index of per-target tok/s / weight", "", 1.0),
    Display("slo_attainment", "TPOT objective met", "%", 100.0),
    Display("draft_evictions", "draft tags evicted (memory)", "", 1.0),
    Display("speculation_depth_mean", "tree depth per round, mean", "", 1.0),
    Display("rounds_without_speculation", "rounds without speculation", "%", 100.0),
    Display("pipeline_hit_rate", "pipelined trees kept (hits)", "%", 100.0),
    Display("draft_wasted_fraction", "draft time wasted on missed pipelined trees", "%", 100.0),
    Display("fabric_repairs", "targets moved to another draft server", "", 1.0),
    # serving targets: the summary's "serving" section (keys serving.NAME)
    Display("serving.batch_size_mean", "batch (sequences per step), mean", "", 1.0),
    Display("serving.batch_size_p99", "batch (sequences per step), p99", "", 1.0),
    Display("serving.num_requests_waiting_mean", "requests waiting per step, mean", "", 1.0),
    Display("serving.kv_cache_usage_mean", "KV cache usage, mean", "%", 100.0),
    Display("serving.num_preemptions", "preemptions (recomputed)", "", 1.0),
    Display("serving.itl_s_p50", "ITL, p50", "ms", 1e3),
    Display("serving.e2e_latency_s_mean", "E2E latency, mean", "ms", 1e3),
)}


RESIDUE = 1e-9  # below this, in SI units, a value is arithmetic residue (a saturated draft's idle ratio: ~1e-14)


def shown(v: float, scale: float = 1.0) -> float:
    """A value as every table shows it: ``v * scale``, residue as an exact 0 (not 9.975e-13 %)."""
    return 0.0 if abs(v) < RESIDUE else v * scale


def displays(*keys: str) -> list[Display]:
    return [DISPLAY[k] for k in keys]


def header(key: str) -> str:
    """``label (unit)``, e.g. a table's column header."""
    d = DISPLAY[key]
    return f"{d.label} ({d.unit})" if d.unit else d.label
