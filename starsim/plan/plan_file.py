"""The plan file: a deployment question, typed and validated like a scenario.

```yaml
name: qwen3-8b-h100
base: ../gpu/qwen3-8b-qwen3-06b-h100_sxm.yaml   # workload, acceptance, links, payload
set: {duration_s: 30}                            # on the base, for every candidate's simulation
targets:                                         # the target's GPU options (profiles)
  - {name: h100, gpu: H100 SXM, gpus: 1, set: {}}
drafts:                                          # the draft candidates (model, GPU, profile, tree)
  - {name: h100, gpu: H100 SXM, gpus: 1, set: {}}
  - {name: a100, gpu: A100 SXM, gpus: 1, set: {draft.round_time.path: ...}}
space:
  targets: [8, 16, 32]                           # target instances in the fleet
  drafts: [1, 2, 4, 8]                           # draft servers sharing them (M for N)
  grid: {draft.batch.max: [1, 4]}                # any other scenario fields, every combination
objectives: {tpot_p50_s: 0.012, tpot_p99_s: 0.02, ttft_p99_s: 1.0}
rank: throughput_per_gpu                         # or throughput_per_cost (cost_per_gpu_hour needed)
cost_per_gpu_hour: {H100 SXM: 2.5, A100 SXM: 1.4}   # what the user pays: given, never assumed
baselines: [autoregressive, one_for_one]        # ranked with the stars by `rank`
confirm: {tail_samples: 100, max_horizon: 8}     # p99s judged on >= 100 requests (window up to 8x)
```

``starsim plan --schema`` prints this file's JSON schema, every field described.

A candidate is one target option, one draft option, a fleet size, a number of drafts and a
point of the grid: the base scenario with those overrides (option ``set``, then the grid's,
then the fleet's). Every option is validated as a scenario before anything runs, so a bad
field path stops the plan at once with the plan file, the option and what was expected.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ScenarioError
from ..yaml_files import file_problems, read_mapping

MAX_CANDIDATES = 1_000_000  # the closed form takes ~1 us each; the options' scenarios dominate


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Option(_M):
    """A target GPU option or a draft candidate: a named bundle of scenario overrides."""

    name: str = Field(min_length=1, description="short label in the plan's tables and the written scenario's name")
    gpu: str = Field(min_length=1, description="GPU type label: the written scenario's device type, and the key of "
                     "cost_per_gpu_hour")
    gpus: int = Field(1, ge=0, le=4096, description="GPUs one instance uses (tensor parallel ranks): what per-GPU and "
                      "per-cost answers count; the written scenario's devices.POOL.gpus. A draft option may say 0: "
                      "its server shares a target's GPU (set draft.device to the target pool's unit, e.g. gpu[0]: "
                      "server j on unit j, taking turns with the target there)")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides on the base scenario for this option "
                                "(field path -> value, as `starsim run --set`): profiles, trees, acceptance")
    trees: list[list[int]] = Field(default_factory=list, description="drafts only: tree shapes [top_k, depth, "
                                   "tokens] to search, each a draft option of its own whose draft profile is priced "
                                   "for that tree on the fly (the option's `calibrate import aiconfigurator` profile, "
                                   "re-run with --tree); the base's acceptance must follow the tree (kind: ranked, "
                                   "or a measured file with a ranked table)")

    @field_validator("trees")
    @classmethod
    def _shapes(cls, trees: list[list[int]]) -> list[list[int]]:
        from ..scenario import Tree

        for t in trees:
            if len(t) != 3:
                raise ValueError(f"a tree is [top_k, depth, tokens], got {t}")
            why = Tree.problem(*t)
            if why:
                raise ValueError(f"tree {t}: {why}")
        if len({tuple(t) for t in trees}) != len(trees):
            raise ValueError("trees repeat")
        return trees


class Space(_M):
    """What is searched: fleet sizes, draft counts and a grid of other scenario fields."""

    targets: list[int] = Field(min_length=1, description="fleet sizes: target instances in all, each 1..4096, no "
                               "repeats (\"A-B\": a range)")
    drafts: list[int] = Field([1], min_length=1,
                              description="draft servers sharing the fleet (M for N, target i on server i mod M; "
                              "\"A-B\": a range); a count above the fleet size is skipped")
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="other scenario fields (field path -> list of values), every "
                                       "combination; not targets.0.count, draft.fabric.servers or mode (the plan "
                                       "sets them)")

    @field_validator("targets", "drafts", mode="before")
    @classmethod
    def _ranges(cls, v: Any) -> Any:
        """``"1-16"`` in a list stands for 1, 2, ..., 16."""
        if not isinstance(v, list):
            return v
        out: list[Any] = []
        for x in v:
            if isinstance(x, str) and re.fullmatch(r"\s*\d+\s*-\s*\d+\s*", x):
                a, b = (int(y) for y in x.split("-"))
                if not 1 <= a <= b <= 4096:
                    raise ValueError(f"range {x!r}: expected A-B with 1 <= A <= B <= 4096")
                out += range(a, b + 1)
            else:
                out.append(x)
        return out

    @field_validator("targets", "drafts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        if any(not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= 4096 for x in v):
            raise ValueError("each value must be an integer in 1..4096")
        if len(set(v)) != len(v):
            raise ValueError("values repeat")
        return sorted(v)

    @field_validator("grid")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"axis {k!r} has no values")
            if k in ("targets.0.count", "draft.fabric.servers", "mode"):
                raise ValueError(f"axis {k!r}: the plan sets it (space.targets, space.drafts, baselines)")
        return v


class Objectives(_M):
    """Latency objectives (seconds) a deployment must meet in its simulation: at least one."""

    tpot_p50_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="median time per output token, over the requests (seconds)")
    tpot_p99_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="99th percentile of the time per output token, over the requests "
                                     "(seconds); judged on at least confirm.tail_samples requests")
    ttft_p99_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="99th percentile time to first token (seconds); judged on at least "
                                     "confirm.tail_samples requests")
    throughput_tokens_per_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="an offered load the fleet must carry: output tokens per second "
        "at least (your request rate x the mean output tokens); a deployment below it does not meet the objectives")

    @model_validator(mode="after")
    def _some(self):
        if all(v is None for v in self.model_dump().values()):
            raise ValueError("give at least one objective: tpot_p50_s, tpot_p99_s, ttft_p99_s or "
                             "throughput_tokens_per_s")
        return self

    def items(self) -> list[tuple[str, float]]:
        """(summary key, bound) of each objective given."""
        return [(k, v) for k, v in self.model_dump().items() if v is not None]


AT_LEAST = ("throughput_tokens_per_s",)  # objectives that are floors, not ceilings


class Confirm(_M):
    """How the simulator confirms the closed form's bounds, and how long the deciding runs are."""

    batch: int = Field(8, ge=1, le=1024, description="candidates taken per step of the search, best closed-form "
                       "bound first (their distinct stars simulated in parallel)")
    max_sims: int = Field(64, ge=1, le=100_000, description="at most this many star simulations in the search "
                          "(the answer says when the cap stopped it)")
    slack: float = Field(0.05, ge=0, le=10, allow_inf_nan=False,
                         description="relative margin on the closed form's bounds: a candidate is infeasible when "
                         "its TPOT bound exceeds an objective by more, and pruned when its throughput bound, raised "
                         "by it, cannot enter the top `keep`")
    keep: int = Field(5, ge=1, le=1000, description="the search goes on until no bound left can enter the top "
                      "`keep` configurations it confirmed (classes of identical stars count once)")
    frontier: int = Field(12, ge=0, le=1000, description="points of the closed-form frontier (ranking against TPOT) "
                          "also simulated, besides the best bounds, for the figure and frontier.csv")
    tail_samples: int = Field(100, ge=1, le=1_000_000, description="the fewest requests a p99 objective "
                              "(tpot_p99_s, ttft_p99_s) may be judged on in the deciding runs: if the winner's run "
                              "has fewer, every deciding run is simulated again with a longer measured window")
    max_horizon: float = Field(8.0, ge=1, le=1000, allow_inf_nan=False, description="the deciding runs' measured "
                               "window grows to at most this many times the plan's (set.duration_s less warm-up and "
                               "cool-down); the answer says when a p99 is still short of tail_samples")


class PlanFile(_M):
    """A deployment question for ``starsim plan``: the base scenario, the target's GPU options,
    the draft candidates, the space searched, the latency objectives and the ranking."""

    name: str = Field("plan", min_length=1, description="the plan's label: output folder runs/plans/NAME, and the "
                      "written scenarios' names (plan-NAME-MODE-...)")
    description: str = Field("", description="free text, for people")
    base: str = Field(description="the base scenario (workload, acceptance, links, payload), relative to the plan "
                      "file; it must be mode: star")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides on the base for every candidate and "
                                "baseline (field path -> value), e.g. {duration_s: 12, warmup_s: 2}")
    targets: list[Option] = Field(min_length=1, description="the target's GPU options (each: name, gpu, gpus, set)")
    drafts: list[Option] = Field(min_length=1, description="the draft candidates (each: name, gpu, gpus, set); "
                                 "one_for_one baselines co-locate the ones whose gpu is the target's")
    space: Space = Field(description="what is searched: space.targets, space.drafts, space.grid")
    objectives: Objectives = Field(description="latency objectives every answer must meet (at least one)")
    rank: Literal["throughput_per_gpu", "throughput_per_cost"] = Field(
        "throughput_per_gpu", description="what the answer maximizes among deployments meeting the objectives, "
        "stars and baselines alike: output tokens/s per GPU, or per $/h (cost_per_gpu_hour)")
    cost_per_gpu_hour: dict[str, float] = Field(default_factory=dict,
                                                description="GPU label (an option's gpu) -> what one GPU-hour costs, "
                                                "as you pay it (given, never assumed); needed by throughput_per_cost")
    baselines: list[Literal["autoregressive", "one_for_one"]] = Field(
        ["autoregressive", "one_for_one"], description="deployments without a shared draft, simulated on the best "
        "star's GPU budget for every target option and ranked with the stars: autoregressive (no speculation), "
        "one_for_one (each target with its own draft on its GPU)")
    confirm: Confirm = Field(default_factory=Confirm, description="the search's and the deciding runs' settings")
    max_gpus: int | None = Field(None, ge=1, le=1_000_000, description="a GPU budget: no deployment (star or "
                                 "baseline) uses more GPUs (null: no budget)")
    overhead_us: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False, description="a per-forward host "
                                      "overhead (launches, scheduler, sampler) in microseconds: every option's "
                                      "`calibrate import aiconfigurator` profiles are priced again with it, as "
                                      "--overhead-us does (null: the profiles' own)")

    @model_validator(mode="after")
    def _consistent(self):
        if any(t.gpus == 0 for t in self.targets):
            raise ValueError("targets: a target option uses at least one GPU (gpus >= 1)")
        for d in self.drafts:
            if d.gpus == 0 and "draft.device" not in d.set:
                raise ValueError(f"drafts {d.name}: gpus 0 (co-located) needs set.draft.device, a target pool's unit "
                                 "(e.g. gpu[0]), where its servers share the targets' GPUs")
        if any(t.trees for t in self.targets):
            raise ValueError("targets: only draft options have trees (a target verifies whatever tree it is sent)")
        for what, opts in (("targets", self.targets), ("drafts", self.drafts)):
            names = [o.name for o in opts]
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: option names repeat: {names}")
        for k, v in self.cost_per_gpu_hour.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"cost_per_gpu_hour.{k}: expected a positive number, got {v!r}")
        if self.rank == "throughput_per_cost":
            missing = sorted({o.gpu for o in self.targets + self.drafts} - set(self.cost_per_gpu_hour))
            if missing:
                raise ValueError(f"rank throughput_per_cost: cost_per_gpu_hour has no price for {missing}")
        n = self.size()
        if n > MAX_CANDIDATES:
            raise ValueError(f"the space has {n:,} candidates; at most {MAX_CANDIDATES:,}")
        return self

    def size(self) -> int:
        """Candidates before pruning (fleet sizes with fewer targets than drafts are skipped)."""
        fleets = sum(1 for t, m in itertools.product(self.space.targets, self.space.drafts) if m <= t)
        drafts = sum(max(1, len(d.trees)) for d in self.drafts)  # a draft option with trees: one per tree
        return len(self.targets) * drafts * fleets * math.prod(len(v) for v in self.space.grid.values())

    def grid_points(self) -> list[dict[str, Any]]:
        keys = list(self.space.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.space.grid[k] for k in keys))]


def load_plan(path: str | Path) -> tuple[PlanFile, Path]:
    """The plan file and its base scenario's path; every problem named with the file and field."""
    p = Path(path)
    data = read_mapping(p, "plan")
    try:
        plan = PlanFile.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(str(p), file_problems(e, PlanFile)) from None
    base = (p.parent / plan.base).resolve()
    if not base.is_file():
        raise ScenarioError(str(p), [("base", f"no scenario file at {base}")])
    return plan, base
