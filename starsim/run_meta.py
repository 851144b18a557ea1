"""What a run says about itself, built once for both backends: the records' ``meta`` (the
clock, the measurement window, the engines and targets the tables refer to, and the feature
counters the summary reports) and the summary's common provenance."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .notices import notices
from .scenario import Scenario
from .version import __version__


def run_meta(scenario: Scenario, *, source: str, t_end: float, draft_engines: Sequence[str],
             targets: Iterable[tuple[int, str, Any, str]], draft_device: str | None,
             draft_devices: Sequence[str],
             pipeline: tuple[int, int, float] | None = None, fabric_repairs: int | None = None,
             accepted_ranks: dict[str, Any] | None = None) -> dict[str, Any]:
    """``targets``: (index, name, target group, device unit) per target instance; ``pipeline``:
    (hits, misses, wasted seconds) when pipelined drafting is on; ``fabric_repairs``: re-pairings,
    when a fabric ran; ``accepted_ranks``: the draft's ranked candidates the targets took, per
    depth (a real greedy star: ``starsim.real.speculation.RankCounts``), for ``starsim acceptance``."""
    meta: dict[str, Any] = {
        "source": source,
        "mode": scenario.mode,
        "t_end": t_end,
        "warmup_s": scenario.warmup_s,
        "cooldown_s": scenario.cooldown_s,
        "window_s": scenario.window_s,
        "draft_engines": list(draft_engines),
        "targets": [{"index": i, "name": name, "device": unit, "weight": g.weight, "tpot_slo_s": g.tpot_slo_s}
                    for i, name, g, unit in targets],
        "draft_device": draft_device,
        "draft_devices": list(draft_devices),
    }
    if pipeline is not None:
        hits, misses, wasted = pipeline
        meta["pipeline"] = {"hits": hits, "misses": misses, "wasted_s": wasted}
    if fabric_repairs is not None:
        meta["fabric_repairs"] = fabric_repairs
    if accepted_ranks is not None:
        meta["accepted_ranks"] = accepted_ranks
    if not scenario.record_rounds:  # the steps table carries the tokens (starsim.metrics.emitted_tokens)
        meta["record_rounds"] = False
    return meta


def provenance(scenario: Scenario, source: str, **extra: Any) -> dict[str, Any]:
    """The summary's provenance: what both backends record, then ``extra`` (the backend's own)."""
    return {
        "source": source,
        "starsim_version": __version__,
        "scenario": scenario.name,
        "scenario_hash": scenario.digest(),
        "seed": scenario.seed,
        "mode": scenario.mode,
        "notices": notices(scenario),  # what the numbers rest on that the user may not expect
        **extra,
    }
