"""AheadRng (block draws) gives exactly the values of one-at-a-time Generator calls."""

import numpy as np
import pytest

from starsim.sim.rng import FAST, AheadRng

CALLS = {
    "random": (),
    "standard_normal": (),
    "standard_exponential": (),
    "exponential": (5e-5,),
    "uniform": (0.25, 6.5),
    "normal": (0.1, 0.3),
    "lognormal": (-8.1, 0.29),
}


def _same(calls, seed=7):
    """Run ``calls`` (name, args, kwargs) on a plain Generator and on an AheadRng of the
    same seed; every value (and the stream afterwards) must be identical. Returns whether
    it was drawing ahead at the end."""
    plain, ahead = np.random.default_rng([seed, 5]), AheadRng(np.random.default_rng([seed, 5]))
    for i, (name, args, kw) in enumerate(calls):
        a, b = getattr(plain, name)(*args, **kw), getattr(ahead, name)(*args, **kw)
        assert type(a) is type(b) and np.array_equal(a, b), (i, name, args, a, b)
    drawing_ahead = ahead.drawing_ahead()
    assert plain.random() == ahead.random()
    return drawing_ahead


@pytest.mark.parametrize("name", list(FAST))
def test_one_signature(name):
    assert _same([(name, CALLS[name], {})] * 5000)


def test_cycle_of_two_then_changes():
    parse, ser = ("lognormal", (-8.2, 0.29), {}), ("lognormal", (-8.6, 0.29), {})
    assert _same([parse, ser] * 3000)
    calls = [parse, ser] * 3000 + [ser] + [parse, ser] * 1000  # the cycle breaks once
    calls += [("exponential", (2.0,), {})] * 700 + [("integers", (10,), {})] + [("exponential", (2.0,), {})] * 300
    calls += [("lognormal", (0.0, 1.0), {"size": 3}), ("random", (4,), {}), ("uniform", (0.0, 1.0), {})]
    calls += [("uniform", (1, 2), {})] * 100 + [("uniform", (np.array([1.0, 2.0]), 3.0), {})]
    _same(calls)


def test_random_mixture():
    rng = np.random.default_rng(3)
    names = list(CALLS)
    calls = []
    for _ in range(300):  # runs of regular calls broken by random others
        name = names[rng.integers(len(names))]
        calls += [(name, CALLS[name], {})] * int(rng.integers(1, 200))
        if rng.random() < 0.3:
            calls.append(("integers", (0, 100), {}))
    _same(calls)


def test_zero_scale_still_draws():
    _same([("exponential", (0.0,), {})] * 100 + [("lognormal", (0.0, 0.0), {})] * 100)


def test_other_attributes_are_the_generators():
    ahead = AheadRng(np.random.default_rng(1))
    for _ in range(50):
        ahead.random()
    assert ahead.bit_generator is ahead._rng.bit_generator
    plain = np.random.default_rng(1)
    for _ in range(50):
        plain.random()
    assert ahead.integers(1000, size=5).tolist() == plain.integers(1000, size=5).tolist()
