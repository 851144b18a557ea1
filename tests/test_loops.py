"""The simulator's fast loops against its general ones, over a matrix of scenarios.

The draft engine (``run`` vs ``run_general``) and the target (``_speculate`` vs
``_speculate_shared``) each keep a fast loop for StarSD's plain round because it is the hot
path (``analysis/bench_sim.py``); ``simulate(..., general=True)`` runs the general loops
instead. Both must give the same tables, bit for bit: the general loop waits the delays
that nothing competes for in one timeout each, summed in the fast loop's order (``up +
parse``; ``serialize + down``, then the verify), so even the times' last bits agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from starsim.scenario import load_scenario
from starsim.sim import simulate

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["duration_s=10", "warmup_s=1", "cooldown_s=1"]

# every shipped scenario, short, plus variants of the plain star that the fast loops take
MATRIX: dict[str, list[str]] = {
    **{p.stem: SHORT for p in sorted((ROOT / "scenarios").glob("*.yaml"))},
    **{f"gpu/{p.stem}": SHORT for p in sorted((ROOT / "scenarios" / "gpu").glob("*.yaml"))},
    "starsd_ref_n4~edf": [*SHORT, "draft.policy=edf"],
    "starsd_ref_n4~wfq": [*SHORT, "draft.policy=wfq"],
    "starsd_ref_n4~round_robin": [*SHORT, "draft.policy=round_robin"],
    "starsd_ref_n8~seed7": [*SHORT, "seed=7"],
    "starsd_ref_n8~no_prefix_cache": [*SHORT, "draft.prefix_cache=false"],
    "starsd_ref_n2~n16": [*SHORT, "targets.0.count=16"],
}


def _scenario(case: str):
    name = case.split("~")[0]
    return load_scenario(str(ROOT / "scenarios" / f"{name}.yaml"), MATRIX[case])


def test_the_matrix_is_large_enough():
    assert len(MATRIX) >= 20
    # and most of it is plain star rounds, where the two loops really differ
    general_only = ("adaptive", "pipeline", "fabric", "batch", "autoregressive")
    plain = [c for c in MATRIX if not any(k in c for k in general_only)]
    assert len(plain) >= 20


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_fast_and_general_loops_give_the_same_tables(case):
    sc = _scenario(case)
    fast, general = simulate(sc).records, simulate(sc, general=True).records
    assert fast.rounds.shape[0] > 0 or sc.mode == "autoregressive"
    for table in ("rounds", "requests", "intervals"):
        a, b = getattr(fast, table), getattr(general, table)
        assert list(a.columns) == list(b.columns) and a.shape == b.shape, table
        for col in a.columns:
            x, y = a[col].to_numpy(), b[col].to_numpy()
            if x.dtype.kind == "f":  # the bits: NaNs where NaNs are, every time to the last bit
                assert (x.view(np.int64) == y.view(np.int64)).all(), f"{table}.{col}"
            else:
                assert (x == y).all(), f"{table}.{col}"
    assert fast.meta == general.meta
