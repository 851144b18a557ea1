"""The whole scenario (the top of the schema) and its cross-field checks."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from ..acceptance import Acceptance, ByCategory, Marginal
from .base import NonNeg, Pos, _Model
from .devices import Device, parse_device_ref
from .digest import _portable
from .draft import SERVER_ONLY, Draft
from .limits import MAX_DURATION_S, MAX_UNITS, MAX_WINDOWS, MIN_WINDOW_S
from .real import KillTarget, Real
from .targets import TargetGroup
from .workload import ClosedLoop, TraceReplay, Workload

MODES = ("star", "one_for_one", "autoregressive")


def _constant(spec) -> float | None:
    """The value of a length spec that is a constant (None: it varies)."""
    return spec.value if getattr(spec, "kind", None) == "constant" else None


def _serving_problems(sc: Scenario) -> list[tuple[str, str]]:
    """Serving targets' cross-field checks: a step budget that holds one sequence's tree, KV
    that holds one request, the draft's batched cost, the features not modelled at batch, and
    the workloads (concurrency, routers) that need every target to serve."""
    out: list[tuple[str, str]] = []
    d, w = sc.draft, sc.workload
    spec = sc.mode != "autoregressive"
    per_round = d.tree.tokens + 1 if spec else 1
    lengths = None
    if isinstance(w, ClosedLoop) and w.lengths_file is None and w.prompts_jsonl is None:
        p, o = _constant(w.prompt_tokens), _constant(w.output_tokens)
        lengths = (p, o) if p is not None and o is not None else None
    batched = False
    for i, g in enumerate(sc.targets):
        sv = g.serving
        if sv is None:
            continue
        path = f"targets.{i}.serving"
        batched |= sv.max_seqs > 1
        if sv.max_batched_tokens is not None and sv.max_batched_tokens < per_round:
            out.append((f"{path}.max_batched_tokens", f"{sv.max_batched_tokens} is below one sequence's step "
                        f"({per_round} tokens: {'the tree and its root' if spec else 'one decode token'})"))
        cap = sv.kv_tokens
        if cap is not None and lengths is not None and cap < sum(lengths) + per_round:
            field = "kv_capacity_bytes" if sv.kv_capacity_bytes is not None else "kv_capacity_tokens"
            out.append((f"{path}.{field}", f"{cap} tokens of KV cannot hold one request ({int(lengths[0])} prompt + "
                        f"{int(lengths[1])} output + {per_round} for a step's tokens)"))
    if batched and sc.mode != "autoregressive" and d.batch.time is None:
        out.append(("draft.batch.time", "targets with serving.max_seqs > 1 send one draft request for all their "
                    "sequences: the draft needs batch.time, the cost of a batched round"))
    serving = [g.serving is not None for g in sc.targets]
    if any(serving) and sc.mode == "star":
        if d.adaptive.policy != "fixed":
            out.append(("draft.adaptive.policy", "not modelled with serving targets yet (targets.*.serving)"))
    if not all(serving):
        if not sc.record_rounds:
            out.append(("record_rounds", "false needs every target group to serve (targets.*.serving): the steps "
                        "table carries the tokens"))
        if isinstance(w, ClosedLoop) and w.concurrency > 1:
            out.append(("workload.concurrency", "more than one request at a time per target needs every target "
                        "group to serve (targets.*.serving)"))
        if getattr(w, "router", "first_free") != "first_free":
            out.append(("workload.router", f"{w.router} queues requests at each target: every target group "
                        "must serve (targets.*.serving)"))
    return out


class Scenario(_Model):
    name: str = Field("scenario", description="a label used in outputs")
    description: str = ""
    seed: int = Field(0, ge=0, description="one seed drives every random stream")
    mode: Literal["star", "one_for_one", "autoregressive"] = Field(
        "star",
        description="star: one draft serves all targets (StarSD); one_for_one: each target "
        "has its own draft co-located on its device; autoregressive: no speculation",
    )
    duration_s: Pos | None = Field(None, description="simulated time horizon")
    max_requests: int | None = Field(None, ge=1, description="stop after this many requests")
    warmup_s: NonNeg = Field(0.0, description="records before this time are excluded from statistics")
    cooldown_s: NonNeg = Field(0.0, description="records in the last cooldown_s are excluded")
    window_s: Pos = Field(0.2, description="idle-ratio window")
    record_rounds: bool = Field(
        True, description="one rounds row per sequence per step; false (every target group must serve): none, for "
        "fleets too large to keep them; the steps table then carries the tokens, and the summary's per-round "
        "numbers (round and hop times, queue waits, acceptance per depth, ITL, draft KV) are absent",
    )
    devices: dict[str, Device] = Field(min_length=1)
    draft: Draft
    targets: list[TargetGroup] = Field(min_length=1)
    acceptance: Acceptance = Field(default_factory=lambda: Marginal(curve=[0.8, 0.6, 0.45, 0.3, 0.2]))
    workload: Workload = Field(default_factory=ClosedLoop)
    real: Real | None = Field(
        None, description="what `starsim execute` runs for real (models, threads); the simulator ignores it"
    )

    @model_validator(mode="after")
    def _cross_checks(self):
        problems: list[tuple[str, str]] = []
        if self.duration_s is None and self.max_requests is None:
            w = self.workload
            finite = (isinstance(w, ClosedLoop) and not w.repeat) or isinstance(w, TraceReplay)
            if not finite:
                problems.append(("duration_s", "give duration_s and/or max_requests (the run must end)"))
        if self.duration_s is not None and self.duration_s > MAX_DURATION_S:
            problems.append(("duration_s", f"at most {MAX_DURATION_S:g} s (11.6 simulated days; a longer run's rows "
                                           f"would not fit in memory), got {self.duration_s:g}"))
        elif self.duration_s is not None and self.duration_s / self.window_s > MAX_WINDOWS:
            problems.append(("window_s", f"duration_s / window_s is {self.duration_s / self.window_s:.3g} idle-ratio "
                                         f"windows; at most {MAX_WINDOWS:g} (a longer window_s)"))
        if self.window_s < MIN_WINDOW_S:
            problems.append(("window_s", f"at least {MIN_WINDOW_S:g} s, got {self.window_s:g}"))
        total = sum(g.count for g in self.targets)
        if total > MAX_UNITS:
            problems.append(("targets", f"{total} targets in all; at most {MAX_UNITS:,}"))
        if self.duration_s is not None and self.warmup_s + self.cooldown_s >= self.duration_s:
            problems.append(
                ("warmup_s", f"warmup_s + cooldown_s ({self.warmup_s + self.cooldown_s}) must be "
                 f"< duration_s ({self.duration_s})")
            )
        refs = [("draft.device", self.draft.device)]
        refs += [(f"targets.{i}.device", g.device) for i, g in enumerate(self.targets)]
        for path, ref in refs:
            try:
                pool, unit = parse_device_ref(ref)
            except ValueError as e:
                problems.append((path, str(e)))
                continue
            if pool not in self.devices:
                known = ", ".join(sorted(self.devices))
                problems.append((path, f"device {pool!r} is not defined in devices (defined: {known})"))
            elif unit is not None and unit >= self.devices[pool].count:
                problems.append(
                    (path, f"unit {unit} out of range: device {pool!r} has count {self.devices[pool].count}")
                )
        if self.mode != "star":  # the draft server's features: there is no shared server otherwise
            d = self.draft
            for path, on in zip(SERVER_ONLY, (d.fabric.servers > 1, bool(d.fabric.failures),
                                              d.adaptive.policy != "fixed", d.pipeline, d.batch.max > 1)):
                if on:
                    problems.append((path, f"needs mode: star (the draft server's feature; mode is {self.mode})"))
        n = sum(g.count for g in self.targets)
        for i, fault in enumerate(self.real.faults if self.real else []):
            if isinstance(fault, KillTarget) and fault.target >= n:
                problems.append((f"real.faults.{i}.target", f"target {fault.target} out of range: the scenario "
                                 f"has {n} target instances (0..{n - 1})"))
        problems += _serving_problems(self)
        if isinstance(self.acceptance, ByCategory):
            w = self.workload
            if not (isinstance(w, ClosedLoop) and (w.prompts_jsonl or w.lengths_file)):
                problems.append(("acceptance", "kind: by_category needs the categories of a closed loop's prompts: "
                                 "workload.prompts_jsonl (records with a category, as MT-Bench's) or "
                                 "workload.lengths_file (a category column)"))
            if self.draft.adaptive.policy != "fixed":
                problems.append(("draft.adaptive.policy", "not modelled with acceptance kind: by_category yet"))
        names = [g.name for g in self.targets if g.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(("targets", f"duplicate group names: {', '.join(dup)}"))
        if problems:
            # Raised as ValueError so pydantic reports it like any other field error.
            raise ValueError("; ".join(f"@{p}@ {m}" for p, m in problems))
        return self

    # ------------------------------------------------------------------ helpers

    @property
    def n_targets(self) -> int:
        return sum(g.count for g in self.targets)

    def target_instances(self) -> list[tuple[int, str, TargetGroup]]:
        """``(index, instance name, group)`` for every target, in a fixed order."""
        out = []
        for gi, g in enumerate(self.targets):
            base = g.name or f"t{gi}"
            for k in range(g.count):
                out.append((len(out), f"{base}-{k}", g))
        return out

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def digest(self) -> str:
        """SHA-256 of the resolved scenario (canonical JSON); identifies a run's inputs.

        Files the scenario names (profiles, traces, acceptance curves) count by their content,
        not their resolved path, so the same inputs hash alike in any clone; a directory (a
        model pair) by its name and the content of its description file; a path not there by
        its name."""
        blob = json.dumps(_portable(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
