"""Acceptance models: how many draft tokens a target accepts in one verification round.

Semantics (read this before writing a curve):

- A **marginal** curve ``[a_1, ..., a_D]`` gives ``a_j = P(accepted >= j)``: the
  probability that the draft token at depth ``j`` of the accepted path is accepted,
  *unconditionally*. Acceptance is a prefix (position j can only be accepted if 1..j-1
  were), so a marginal curve is non-increasing. Mean accepted draft tokens per round is
  ``sum_j a_j``; each round also yields one bonus/corrected token (lossless decoding),
  so the mean tokens per round is ``1 + sum_j a_j``.
- A **conditional** curve ``[c_1, ..., c_D]`` gives ``c_j = P(accepted >= j | accepted
  >= j-1)``, the per-step rate papers often quote. It is converted once:
  ``a_j = c_1 * ... * c_j``.
- ``geometric`` with ``alpha`` is the conditional curve with every ``c_j = alpha``.

The number accepted is drawn **per round** (not averaged), with one uniform ``u``:
``k = #{j : a_j > u}``, which has exactly the marginal probabilities above. Positions
beyond the tree depth are never accepted; a curve shorter than the depth means zero
acceptance past its end.
"""

from __future__ import annotations

from bisect import bisect_left
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ScenarioError
from .yaml_files import read_yaml

Prob = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Acceptance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def marginal(self, depth: int) -> list[float]:
        """The marginal curve ``a_1..a_depth`` (zero-padded or truncated to ``depth``)."""
        raise NotImplementedError

    def mean_accepted(self, depth: int) -> float:
        """Mean accepted draft tokens per round (bonus token not included)."""
        return float(sum(self.marginal(depth)))

    def sampler(self, rng: np.random.Generator, depth: int, clock=None):
        """A closure drawing the accepted draft tokens of one round (``clock``: a function
        giving the run's time, for models that change during the run)."""
        curve = self.marginal(depth)
        if all(a in (0.0, 1.0) for a in curve):
            k = int(sum(curve))  # deterministic: skip the random draw entirely
            return lambda: k
        from .streams import draws

        draw = draws(rng, "random")
        if all(curve[j] >= curve[j + 1] for j in range(len(curve) - 1)):
            # Non-increasing (every curve a validator lets through, bar 1e-12 slack): the
            # leading run of a_j > u is all of them, so k = #{j : -a_j < -u}, found by
            # bisection in the ascending negated curve (negation is exact).
            neg = [-a for a in curve]
            return lambda: bisect_left(neg, -draw())

        def sample() -> int:
            u = draw()
            k = 0
            for a in curve:
                if a > u:
                    k += 1
                else:
                    break
            return k

        return sample


def _fit(curve: list[float], depth: int) -> list[float]:
    return [float(x) for x in curve[:depth]] + [0.0] * max(0, depth - len(curve))


class Marginal(_Acceptance):
    """``curve[j-1] = P(accepted >= j)``; must be non-increasing."""

    kind: Literal["marginal"] = "marginal"
    curve: list[Prob] = Field(min_length=1)

    @field_validator("curve")
    @classmethod
    def _non_increasing(cls, curve: list[float]) -> list[float]:
        # A field validator so the error names acceptance.curve.
        for j in range(1, len(curve)):
            if curve[j] > curve[j - 1] + 1e-12:
                raise ValueError(
                    f"a marginal curve must be non-increasing (curve[{j}]={curve[j]} > "
                    f"curve[{j - 1}]={curve[j - 1]}); did you mean kind: conditional?"
                )
        return curve

    def marginal(self, depth):
        return _fit(self.curve, depth)


class Conditional(_Acceptance):
    """``curve[j-1] = P(accepted >= j | accepted >= j-1)``."""

    kind: Literal["conditional"]
    curve: list[Prob] = Field(min_length=1)

    def marginal(self, depth):
        out, p = [], 1.0
        for c in self.curve:
            p *= c
            out.append(p)
        return _fit(out, depth)


class Geometric(_Acceptance):
    """Every conditional rate equals ``alpha``: ``a_j = alpha ** j``."""

    kind: Literal["geometric"]
    alpha: Prob

    def marginal(self, depth):
        return [self.alpha**j for j in range(1, depth + 1)]


class Measured(_Acceptance):
    """The marginal curve a real run measured: a file written by ``starsim acceptance RUN_DIR``."""

    kind: Literal["measured"]
    path: str = Field(description="acceptance curve file (relative to the scenario file)")
    _curve: list[float] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo):
        base = Path((info.context or {}).get("base_dir", "."))
        p = Path(self.path).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            data = read_yaml(p, "acceptance curve")
        except ScenarioError as e:
            raise ValueError(f"acceptance curve file {p}: {e.problems[0][1]}") from None
        try:
            curve = Marginal(curve=data["marginal"]).curve
        except ValidationError as e:
            why = "; ".join(err["msg"] for err in e.errors())
            raise ValueError(f"{p} is not an acceptance curve file: marginal: {why}") from None
        except (KeyError, TypeError) as e:
            why = " ".join(str(e).split())  # one line, whatever the YAML error printed
            raise ValueError(f"{p} is not an acceptance curve file (`marginal:` list expected): {why}") from None
        object.__setattr__(self, "path", str(p.resolve()))
        self._curve = curve
        return self

    def marginal(self, depth):
        return _fit(self._curve, depth)


Steady = Annotated[Marginal | Conditional | Geometric | Measured, Field(discriminator="kind")]


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    until_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="this phase ends at this time into the run (null: the last phase)")
    model: Steady = Field(description="the acceptance model during this phase")


class Phases(_Acceptance):
    """Acceptance that changes during the run (drift, a prompt mix that turns hard, a collapse):
    each phase's model applies until its ``until_s``; the last phase has none. The closed form
    (``starsim analyze``) uses the first phase."""

    kind: Literal["phases"]
    phases: list[Phase] = Field(min_length=1)

    @field_validator("phases")
    @classmethod
    def _ordered(cls, phases: list[Phase]) -> list[Phase]:
        ends = [p.until_s for p in phases]
        if ends[-1] is not None or any(e is None for e in ends[:-1]):
            raise ValueError("every phase but the last needs until_s, and the last must not have one")
        if any(b <= a for a, b in zip(ends[:-2], ends[1:-1])):
            raise ValueError(f"phases must end in increasing order (until_s: {ends[:-1]})")
        return phases

    def marginal(self, depth):
        return self.phases[0].model.marginal(depth)

    def sampler(self, rng: np.random.Generator, depth: int, clock=None):
        samplers = [p.model.sampler(rng, depth) for p in self.phases]
        if clock is None:
            return samplers[0]
        ends = [p.until_s for p in self.phases[:-1]]
        return lambda: samplers[bisect_left(ends, clock())]()


Acceptance = Annotated[Marginal | Conditional | Geometric | Measured | Phases, Field(discriminator="kind")]
