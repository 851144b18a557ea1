"""Timing and length specs: one form everywhere a scenario gives a time or a length.

A spec is either a bare number (a constant) or a mapping with a ``kind``:

- ``constant``: ``value``
- ``exponential``: ``mean``
- ``lognormal``: ``mean`` and ``cv`` (coefficient of variation = std/mean)
- ``uniform``: ``low``, ``high``
- ``empirical``: ``samples`` (drawn uniformly with replacement)
- ``replayed``: ``runs``, one list of times per instance (target, engine, unit), taken in order
- ``linear``: a latency model ``a + b*tokens + c*context + d*tokens*context + e*depth``
  with optional multiplicative lognormal noise ``cv`` (mean 1, so the mean is the model).

``tokens``, ``context`` and ``depth`` are whatever the caller says they are (tree tokens
for a verification, prompt tokens for a prefill, ...); the scenario reference documents
each use.
- ``profile``: a measured profile by reference (``path`` to a file written by ``starsim
  calibrate compute``, ``op`` inside it; see :mod:`starsim.profiles`), with ``scale`` (a
  what-if multiplier) and ``noise`` (draw the measured spread, lognormal, or use the fit).

Each spec compiles to a plain Python closure ``f(tokens, context, depth) -> float`` bound to
a random stream, because the simulator's hot path calls it once per round. Its random
values come from :func:`draws`: drawn ahead in blocks from the stream, one numpy call per
block, and served one by one at C speed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from .errors import StarsimError
from .streams import MAX_CV, draws, lognormal_params

Sampler = Callable[[float, float, float], float]

# -0.0 passes ge=0 but numpy refuses it as a scale (exponential(-0.0)): + 0.0 makes it 0.0
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(lambda v: v + 0.0)]
Cv = Annotated[float, Field(ge=0, le=MAX_CV, allow_inf_nan=False)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def mean(self, tokens: float = 0.0, context: float = 0.0, depth: float = 0.0) -> float:
        raise NotImplementedError

    def sampler(self, rng: np.random.Generator) -> Sampler:
        raise NotImplementedError

    def draw0(self, rng: np.random.Generator) -> Callable[[], float]:
        """The draws of ``sampler(rng)(0, 0, 0)``, as a function of no arguments: the same
        values in the same order. A kind whose draws ignore the arguments returns its block
        iterator's ``__next__`` (a C call, where the sampler is a Python frame around it)."""
        f = self.sampler(rng)
        return lambda: f(0.0, 0.0, 0.0)

    @property
    def is_constant(self) -> bool:
        """True when every draw equals the mean (for the given arguments)."""
        return False

    def for_instance(self, index: int) -> _Spec:
        """The spec instance ``index`` (a target, a draft engine, a unit of a pool) draws from:
        the same for all, bar ``replayed``."""
        return self


class Constant(_Spec):
    kind: Literal["constant"] = "constant"
    value: NonNeg

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return self.value

    def sampler(self, rng):
        v = self.value
        return lambda tokens=0.0, context=0.0, depth=0.0: v

    def draw0(self, rng):
        return itertools.repeat(self.value).__next__

    @property
    def is_constant(self):
        return True


class Exponential(_Spec):
    kind: Literal["exponential"]
    mean_: NonNeg = Field(alias="mean")

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return self.mean_

    def sampler(self, rng):
        nxt = draws(rng, "exponential", self.mean_)
        return lambda tokens=0.0, context=0.0, depth=0.0: nxt()

    def draw0(self, rng):
        return draws(rng, "exponential", self.mean_)


class LogNormal(_Spec):
    kind: Literal["lognormal"]
    mean_: float = Field(alias="mean", gt=0, allow_inf_nan=False)
    cv: Cv

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return self.mean_

    def sampler(self, rng):
        if self.cv == 0:
            v = self.mean_
            return lambda tokens=0.0, context=0.0, depth=0.0: v
        nxt = draws(rng, "lognormal", *lognormal_params(self.mean_, self.cv))
        return lambda tokens=0.0, context=0.0, depth=0.0: nxt()

    def draw0(self, rng):
        if self.cv == 0:
            return itertools.repeat(self.mean_).__next__
        return draws(rng, "lognormal", *lognormal_params(self.mean_, self.cv))


class Uniform(_Spec):
    kind: Literal["uniform"]
    low: NonNeg
    high: NonNeg

    @model_validator(mode="after")
    def _check(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return 0.5 * (self.low + self.high)

    def sampler(self, rng):
        nxt = draws(rng, "uniform", self.low, self.high)
        return lambda tokens=0.0, context=0.0, depth=0.0: nxt()


class Empirical(_Spec):
    kind: Literal["empirical"]
    samples: list[NonNeg] = Field(min_length=1)

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return float(np.mean(self.samples))

    def sampler(self, rng):
        arr = list(self.samples)
        nxt = draws(rng, "integers", len(arr))
        return lambda tokens=0.0, context=0.0, depth=0.0: arr[nxt()]


class Replayed(_Spec):
    """Times measured in a run, in the order they ran, one list per instance of the field:
    per target (its index in the run) for a target's times and the server's work for it, per
    engine for the draft's, per unit for a pool's. Instance ``i`` takes ``runs[i]`` one
    after the other, and again from its start past its end; an instance whose list is empty
    or beyond the lists draws from all of them pooled, as ``empirical`` does. What ``starsim
    validate`` feeds a replay (:mod:`starsim.replay`)."""

    kind: Literal["replayed"]
    runs: list[list[NonNeg]] = Field(min_length=1)

    @model_validator(mode="after")
    def _some_times(self):
        if not any(self.runs):
            raise ValueError("every list in runs is empty: give at least one time")
        return self

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return float(np.mean([x for r in self.runs for x in r]))

    def for_instance(self, index: int) -> _Spec:
        if index < len(self.runs) and self.runs[index]:
            return Replayed(kind="replayed", runs=[self.runs[index]])
        return self

    def draw0(self, rng):
        if len(self.runs) == 1:
            return itertools.cycle(self.runs[0]).__next__
        pooled = [x for r in self.runs for x in r]
        nxt = draws(rng, "integers", len(pooled))
        return lambda: pooled[nxt()]

    def sampler(self, rng):
        nxt = self.draw0(rng)
        return lambda tokens=0.0, context=0.0, depth=0.0: nxt()


class Linear(_Spec):
    """Latency model ``a + b*tokens + c*context + d*tokens*context + e*depth`` (seconds)."""

    kind: Literal["linear"]
    a: NonNeg = 0.0
    b: NonNeg = 0.0
    c: NonNeg = 0.0
    d: NonNeg = 0.0
    e: NonNeg = 0.0
    cv: Cv = Field(0.0, description="multiplicative lognormal noise, mean 1")

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        return self.a + self.b * tokens + self.c * context + self.d * tokens * context + self.e * depth

    def sampler(self, rng):
        a, b, c, d, e = self.a, self.b, self.c, self.d, self.e
        if self.cv == 0:
            return lambda tokens=0.0, context=0.0, depth=0.0: (
                a + b * tokens + c * context + d * tokens * context + e * depth
            )
        nxt = draws(rng, "lognormal", *lognormal_params(1.0, self.cv))
        return lambda tokens=0.0, context=0.0, depth=0.0: (
            a + b * tokens + c * context + d * tokens * context + e * depth
        ) * nxt()

    @property
    def is_constant(self):
        return self.cv == 0


class Profile(_Spec):
    """A latency model measured on real hardware: the fit of one op of a profile file."""

    kind: Literal["profile"]
    path: str = Field(description="profile file (relative to the scenario file)")
    op: str = Field(description="operation in the profile, e.g. verify, prefill, draft_round")
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="multiply every time (what-if)")
    noise: bool = Field(True, description="draw the measured spread (lognormal cv from p10/p90)")
    _file: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo):
        from .errors import ScenarioError
        from .profiles import read_profile

        base = Path((info.context or {}).get("base_dir", "."))
        p = Path(self.path).expanduser()
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise ValueError(f"profile file not found: {p}")
        cache = (info.context or {}).get("profiles")  # the caller's, for many scenarios on one profile
        key = prof = None
        if cache is not None:
            st = p.stat()
            key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
            prof = cache.get(key)
        if prof is None:
            try:
                prof = read_profile(p)
            except ScenarioError as e:
                raise ValueError(f"bad profile file: {'; '.join(e.lines())}") from None
            if cache is not None:
                cache[key] = prof
        if self.op not in prof.ops:
            raise ValueError(f"op {self.op!r} is not in profile {p} (it has: {', '.join(prof.ops) or 'none'})")
        if prof.ops[self.op].fit is None:
            raise ValueError(f"op {self.op!r} in profile {p} has no fitted model")
        object.__setattr__(self, "path", str(p.resolve()))
        self._file = prof
        return self

    @property
    def file(self):
        return self._file

    def mean(self, tokens=0.0, context=0.0, depth=0.0):
        op = self._file.ops[self.op]
        if op.takes_batch:  # as op_sampler has it
            return self.scale * op.predict(batch=tokens, context=context)
        return self.scale * op.predict(tokens=tokens, context=context, batch=1)

    def sampler(self, rng, usage=None):
        from .profiles import op_sampler

        return op_sampler(self.path, self.op, self._file, rng, scale=self.scale, noise=self.noise, usage=usage)

    @property
    def is_constant(self):
        return not self.noise or self._file.ops[self.op].noise_cv == 0


def timing_sampler(spec: _Spec, rng: np.random.Generator, usage=None) -> Sampler:
    """``spec.sampler(rng)``; a profile also reports out-of-range calls to ``usage``."""
    if isinstance(spec, Profile):
        return spec.sampler(rng, usage)
    return spec.sampler(rng)


def _number_is_constant(v: Any) -> Any:
    # A bare number is the everyday way to write a fixed time or length.
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"kind": "constant", "value": v}
    return v


Dist = Annotated[
    Constant | Exponential | LogNormal | Uniform | Empirical | Replayed | Linear | Profile,
    Field(discriminator="kind"),
    BeforeValidator(_number_is_constant),
]
"""The timing/length spec type used by every scenario field that takes one."""

DIST_KINDS = ("constant", "exponential", "lognormal", "uniform", "empirical", "linear", "profile")


MAX_LENGTH = 10_000_000  # tokens in one prompt or output


def length_sampler(spec: _Spec, rng: np.random.Generator, minimum: int = 1) -> Callable[[], int]:
    """A sampler of token counts: draws are rounded and clipped to ``minimum``."""
    f = spec.sampler(rng)

    def draw() -> int:
        x = f(0.0, 0.0, 0.0)
        if not x <= MAX_LENGTH:  # NaN too: a length past any context is a mistake in the spec
            raise StarsimError(f"the workload drew a length of {x:.3g} tokens; a request's prompt or output is at "
                               f"most {MAX_LENGTH:,} tokens (check prompt_tokens / output_tokens)")
        return max(minimum, int(round(x)))

    return draw
