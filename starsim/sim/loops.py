"""Which loops run a simulation: StarSD's fast ones (``DraftEngine.run``, ``Target._speculate``)
or the general ones (``run_general``, ``_speculate_shared``), decided in one place.

The fast loops cover StarSD's star: one engine per draft unit drafting one tree at a time,
targets whose round is pure delay around their verify. Anything else runs every engine and
target on the general loops; tests/test_loops.py holds the two to the same tables wherever
both can run, so the choice changes speed only.
"""

from __future__ import annotations

from ..scenario import Scenario
from .devices import DeviceUnit


def general_loop_reason(scenario: Scenario, draft_units: list[DeviceUnit]) -> str | None:
    """Why ``scenario`` (its draft engines on ``draft_units``) needs the general loops; None:
    the fast loops run it. Every feature the fast loops do not model is named here."""
    d, star = scenario.draft, scenario.mode == "star"
    speculates = scenario.mode != "autoregressive"
    checks = (
        (speculates and d.batch.max > 1, "batched drafting (draft.batch.max > 1)"),
        (star and d.pipeline, "pipelined drafting (draft.pipeline)"),
        (star and d.adaptive.policy != "fixed", "adaptive speculation (draft.adaptive)"),
        (star and (d.fabric.servers > 1 or bool(d.fabric.failures)), "a draft fabric (draft.fabric)"),
        (speculates and any(g.serving is not None and g.serving.max_seqs > 1 for g in scenario.targets),
         "serving targets' batched draft requests"),
        (star and any(not is_zero(g.send_time) or not is_zero(g.receive_time) for g in scenario.targets),
         "targets' own message work (send_time, receive_time)"),
        (speculates and any(u.host is not None for u in draft_units), "a draft on shared host cores (devices.*.cores)"),
        (speculates and any(g.warm_cold is not None for g in scenario.targets), "warm/cold verifies (verify_idle)"),
    )
    return next((why for needed, why in checks if needed), None)


def is_zero(spec) -> bool:
    """A timing spec that is the constant 0 (a field left at its default)."""
    return getattr(spec, "kind", None) == "constant" and spec.value == 0
