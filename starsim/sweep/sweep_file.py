"""The sweep file: a base scenario, the overrides every point shares, and the axes.

```yaml
name: n-latency-depth
base: ../scenarios/starsd_ref_n4.yaml     # relative to this file
set: {duration_s: 60}                     # on the base, for every point
grid:                                     # every combination of these
  targets.0.count: [1, 2, 4, 8]
  targets.0.link.latency_s: [0.0005, 0.005]
zip:                                      # each group's lists advance together
  - draft.tree.depth: [2, 4, 6]
    draft.tree.tokens: [8, 16, 24]
```

Points are the product of the grid's axes and the zip groups (a group counts as one axis
whose values are its rows), in file order, the last axis varying fastest. A value is
anything a scenario field takes (a number, a string, a mapping such as a profile timing
spec); relative paths in values resolve against the base scenario's folder, as ``--set``
does. Every point is validated before anything runs, so a bad field path or value stops
the sweep at once with the file, the axis and what was expected.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ScenarioError
from ..scenario import Scenario, load_scenario
from ..yaml_files import file_problems, read_mapping

MAX_POINTS = 100_000


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", description="label for the results")
    description: str = ""
    base: str = Field(description="the base scenario file, relative to the sweep file")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides on the base for every point")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field path -> values: every combination")
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of field path -> values advanced together (equal lengths)"
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"axis {k!r} has no values")
        return v

    @field_validator("zip")
    @classmethod
    def _equal_lengths(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, group in enumerate(v):
            if not group:
                raise ValueError(f"group {i} is empty")
            lengths = {k: len(vals) for k, vals in group.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"group {i}: the lists must have equal lengths, got {lengths}")
            if not next(iter(lengths.values())):
                raise ValueError(f"group {i} has no values")
        return v

    @model_validator(mode="after")
    def _each_field_once(self):
        seen: dict[str, str] = {}
        axes = [("grid", k) for k in self.grid] + [(f"zip.{i}", k) for i, g in enumerate(self.zip) for k in g]
        for where, k in axes:
            if k in seen:
                raise ValueError(f"field {k!r} is swept twice ({seen[k]} and {where})")
            seen[k] = where
        sizes = [len(v) for v in self.grid.values()] + [len(next(iter(g.values()))) for g in self.zip]
        points = math.prod(sizes)
        if points > MAX_POINTS:
            raise ValueError(f"the grid and zip groups make {points:,} points; at most {MAX_POINTS:,} in one sweep "
                             "(each point is a whole simulation)")
        return self

    @property
    def fields(self) -> list[str]:
        """The swept field paths, in file order (the results table's first columns)."""
        return list(self.grid) + [k for g in self.zip for k in g]


@dataclass
class Point:
    """One point of a sweep: its position, the values it sets, and its validated scenario."""

    index: int
    values: dict[str, Any]  # swept field path -> value
    scenario: Scenario

    @cached_property
    def id(self) -> str:
        """The resolved scenario's content digest: equal points (and reruns) share it."""
        return self.scenario.digest()[:16]


@dataclass
class Sweep:
    path: Path
    spec: SweepFile

    @property
    def base(self) -> Path:
        return (self.path.parent / self.spec.base).resolve()

    def combinations(self) -> list[dict[str, Any]]:
        """The swept values of every point, in order (no scenario is built)."""
        axes: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in self.spec.grid.items()]
        for group in self.spec.zip:
            keys = list(group)
            axes.append([dict(zip(keys, row)) for row in zip(*(group[k] for k in keys))])
        out = []
        for combo in itertools.product(*axes):
            values: dict[str, Any] = {}
            for part in combo:
                values.update(part)
            out.append(values)
        return out

    def points(self) -> list[Point]:
        """Every point with its validated scenario; the first bad one raises, naming the
        sweep file, the axis values that made it and the scenario's own problem lines."""
        pts = []
        for i, values in enumerate(self.combinations()):
            try:
                sc = load_scenario(self.base, {**self.spec.set, **values})
            except ScenarioError as e:
                where = ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or "the base"
                problems = [(f, f"{m} (point {i}: {where})") for f, m in e.problems]
                raise ScenarioError(f"{self.path} -> {e.source}", problems) from None
            pts.append(Point(i, values, sc))
        return pts


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (not yet its points: see :meth:`Sweep.points`)."""
    p = Path(path)
    source = str(path)
    data = read_mapping(p, "sweep")
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(source, file_problems(err, SweepFile)) from None
    sweep = Sweep(p, spec)
    if not sweep.base.is_file():
        raise ScenarioError(source, [("base", f"scenario file not found: {sweep.base}")])
    return sweep

