"""Field-by-field fuzzing of shipped scenarios (issue 16): each mutated scenario either
validates and runs to completion with finite metrics in their ranges, or is refused with
problems that name a field; never another exception, never a hang.

Seeded (``derandomize``) and bounded for CI. A longer run is one command:
``STARSIM_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_scenarios.py``.
"""

from __future__ import annotations

import copy
import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsim import simulate, validate_scenario
from starsim.errors import ScenarioError, StarsimError
from starsim.sim.run import check_work

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SHIPPED = ["starsd_ref_n4.yaml", "beyond_fair.yaml", "beyond_adaptive.yaml", "beyond_memory.yaml",
           "beyond_pipeline.yaml", "starsd_open_poisson.yaml", "starsd_hetero.yaml", "baseline_one_for_one_n4.yaml",
           "serving_const.yaml", "starsd_ref_mtbench_categories.yaml"]
EXAMPLES = int(os.environ.get("STARSIM_FUZZ_EXAMPLES", "300"))
HORIZON_S = 3.0  # a valid mutant is run on a short simulated horizon: the check is that it runs and stays sane
WALL_S = 60  # no mutant may take longer to validate and run
MAX_FUZZ_ROUNDS = 1_000_000  # a valid mutant with more rounds than this in 3 s is not run (~15 s or more)


def _base(name: str) -> dict:
    return yaml.safe_load((SCENARIOS / name).read_text())


BASES = {name: _base(name) for name in SHIPPED}


def _paths(node, prefix=()) -> list[tuple]:
    """Every path to a value in a scenario mapping (containers included)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


STRANGE = [None, True, 0, -1, 1, 2**63, -(2**63), 10**30, 0.0, -0.0, 1e-300, 1e300, math.nan, math.inf, -math.inf,
           "", "x", "1e9", "nan", [], [0], [math.nan], {}, {"kind": "nope"}, {"kind": "constant", "value": -1}]


def mutate(draw, data) -> tuple[str, str]:
    """Change ``data`` in place at one drawn field: its value replaced by a strange one, the
    key deleted, or an unknown key added beside it; (field path, how). The other fuzz tests
    (tests/test_fuzz_files.py) mutate their files with it too."""
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "extra_key"]))
    if how == "delete":
        del parent[path[-1]]
    elif how == "extra_key" and isinstance(parent, dict):
        parent["unknown_field_" + draw(st.text("abc", min_size=1, max_size=3))] = 1
    else:
        parent[path[-1]] = draw(st.sampled_from(STRANGE) | st.floats() | st.integers())
    return ".".join(map(str, path)), how


@st.composite
def mutants(draw):
    name = draw(st.sampled_from(SHIPPED))
    data = copy.deepcopy(BASES[name])
    path, how = mutate(draw, data)
    return name, path, how, data


@contextmanager
def _wall(seconds: int):
    def fail(*_):
        raise TimeoutError(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _sane(summary: dict) -> None:
    for key in ("draft_utilization", "draft_idle_ratio_mean"):
        v = summary.get(key)
        assert v is None or (math.isfinite(v) and -1e-9 <= v <= 1 + 1e-9), (key, v)
    for key in ("throughput_tokens_per_s", "mean_accepted_tokens", "draft_idle_gap_mean_s", "ttft_mean_s",
                "tpot_mean_s", "draft_task_time_mean_s"):
        v = summary.get(key)
        assert v is None or (isinstance(v, float) and math.isnan(v)) or (math.isfinite(v) and v >= 0), (key, v)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutants())
def test_a_mutated_scenario_runs_sanely_or_names_a_field(case):
    name, path, how, data = case
    with _wall(WALL_S):
        try:
            sc = validate_scenario(data, source=name, base_dir=SCENARIOS)
        except ScenarioError as e:
            assert e.problems and all(isinstance(f, str) and m and "\n" not in m for f, m in e.problems), e.problems
            return
        short = {"duration_s": min(sc.duration_s or HORIZON_S, HORIZON_S), "warmup_s": 0.0, "cooldown_s": 0.0}
        try:
            sc = validate_scenario({**data, **short}, source=name, base_dir=SCENARIOS)
        except ScenarioError:
            return  # e.g. a window_s longer than the short horizon: valid as written, not at 3 s
        try:
            if check_work(sc) > MAX_FUZZ_ROUNDS:
                return  # bounded (check_work refuses beyond MAX_ROUNDS) but too long to run here
            res = simulate(sc)
        except StarsimError as e:  # a user error found while running must still be one clear message
            assert str(e).strip() and "\n" not in str(e) and "Traceback" not in str(e), e
            return
        _sane(res.summary)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_fuzzed_base_is_valid_as_shipped(name):
    validate_scenario(BASES[name], source=name, base_dir=SCENARIOS)
