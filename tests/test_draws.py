"""A spec's argument-free draws (``draw0``, what the simulator's message and link delays call)
are exactly its sampler's draws at (0, 0, 0), value for value, for every kind and seed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from starsim.distributions import Dist

pos = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False)
SPECS = st.one_of(
    pos.map(lambda v: {"kind": "constant", "value": v}),
    pos.map(lambda m: {"kind": "exponential", "mean": m}),
    st.tuples(pos, st.floats(min_value=0.0, max_value=3.0)).map(
        lambda p: {"kind": "lognormal", "mean": p[0], "cv": p[1]}),
    st.tuples(pos, pos).map(lambda p: {"kind": "uniform", "low": min(p), "high": max(p)}),
    st.lists(pos, min_size=1, max_size=5).map(lambda s: {"kind": "empirical", "samples": s}),
    st.tuples(pos, pos, st.floats(min_value=0.0, max_value=2.0)).map(
        lambda p: {"kind": "linear", "a": p[0], "e": p[1], "cv": p[2]}),
    pos,  # a bare number: a constant
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(spec=SPECS, seed=st.integers(0, 2**32 - 1))
def test_draw0_draws_what_the_sampler_draws(spec, seed):
    d = TypeAdapter(Dist).validate_python(spec)
    f = d.sampler(np.random.default_rng(seed))
    g = d.draw0(np.random.default_rng(seed))
    n = 300  # past the first blocks (32, 64, 128 values)
    assert [g() for _ in range(n)] == [f(0.0, 0.0, 0.0) for _ in range(n)]
