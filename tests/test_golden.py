"""Recorded runs stay what they were: every table byte for byte, every summary number to 1e-12
(relative: a pandas reduction may add in another order in another version; the tables are the
simulator's own output and must not move at all).

A failure here means the simulator's output changed. If the change is intended, re-record
(``python tests/golden_cases.py --record [NAME ...]``) and say in the commit why the numbers moved.
"""

from __future__ import annotations

import json

import pytest
from golden_cases import CASES, fingerprint, golden_path, run


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_matches_its_golden_file(name):
    want = json.loads(golden_path(name).read_text())
    got = fingerprint(run(name))
    assert got["tables"] == want["tables"], f"{name}: a table changed"
    assert got["meta"] == want["meta"], f"{name}: the run's meta changed"
    assert _close(got["summary"], want["summary"]), f"{name}: the summary changed"


def _close(a, b, path="") -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, path) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == pytest.approx(b, rel=1e-12, abs=1e-15)
    return a == b


def test_cases_cover_every_mode_and_feature():
    from golden_cases import ROOT

    from starsim.scenario import load_scenario

    seen = set()
    for path, overrides in CASES.values():
        sc = load_scenario(str(ROOT / path), overrides)
        d = sc.draft
        seen |= {f"mode:{sc.mode}", f"policy:{d.policy}", f"workload:{sc.workload.kind}"}
        seen |= {f for f, on in (("batching", d.batch.max > 1), ("adaptive", d.adaptive.policy != "fixed"),
                                 ("pipeline", bool(d.pipeline)), ("fabric", d.fabric.servers > 1),
                                 ("memory", d.memory_bytes is not None), ("hetero", len(sc.targets) > 1)) if on}
    want = {"mode:star", "mode:one_for_one", "mode:autoregressive", "policy:fifo", "policy:round_robin",
            "policy:wfq", "policy:edf", "batching", "adaptive", "pipeline", "fabric", "memory", "hetero"}
    assert want <= seen, want - seen
    assert len(CASES) >= 12
