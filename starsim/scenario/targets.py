"""Target groups (``targets:``) and their serving engine (``targets.*.serving``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..distributions import Dist, Profile
from .base import _Model
from .limits import MAX_BYTES_PER_TOKEN, MAX_KV_TOKENS, MAX_SEQS, MAX_UNITS
from .link import Link, Payload
from .step_time import StepTime


class Serving(_Model):
    """A target that serves many requests at once, as vLLM's scheduler does (continuous
    batching): each engine step schedules its running sequences first (in admission order),
    then admits queued requests (first come, first served) while a slot, the step's token
    budget and KV capacity allow; all of it runs as one forward priced by ``step_time``.
    Prefill is chunked to the budget. When KV runs out mid-generation, ``on_kv_full:
    preempt`` evicts the most recently admitted sequence, which later recomputes its whole
    context (vLLM's preemption by recompute); ``wait`` reserves each request's whole length
    at admission instead, so nothing is ever preempted. Absent: one request at a time, each
    op priced by the group's prefill/verify/decode times (StarSD's target)."""

    max_seqs: int = Field(1, ge=1, le=MAX_SEQS, description="running sequences at once (vLLM max_num_seqs)")
    max_batched_tokens: int | None = Field(
        None, ge=1, le=MAX_KV_TOKENS,
        description="tokens one step may hold: prefill chunks share it with decode and verify tokens "
        "(vLLM max_num_batched_tokens; null: no limit, prompts are never chunked)",
    )
    kv_capacity_tokens: int | None = Field(
        None, ge=1, le=MAX_KV_TOKENS, description="KV cache slots, in tokens, over all sequences (null: unlimited)"
    )
    kv_capacity_bytes: int | None = Field(
        None, ge=1, description="the same in bytes (needs kv_bytes_per_token); give one or the other"
    )
    kv_bytes_per_token: int | None = Field(
        None, ge=1, le=MAX_BYTES_PER_TOKEN, description="the target model's KV bytes per token (all layers)"
    )
    on_kv_full: Literal["preempt", "wait"] = Field(
        "preempt", description="preempt: recompute the latest admitted sequence later (vLLM); wait: reserve "
        "each request's whole length at admission, never preempt",
    )
    step_time: StepTime | None = Field(
        None, description="one engine step (required when max_seqs > 1); absent: each op priced by the group's "
        "prefill_time, verify_time and decode_time, as a target without serving"
    )

    @model_validator(mode="after")
    def _kv(self):
        if self.kv_capacity_tokens is not None and self.kv_capacity_bytes is not None:
            raise ValueError("give kv_capacity_tokens or kv_capacity_bytes, not both")
        if self.kv_capacity_bytes is not None and self.kv_bytes_per_token is None:
            raise ValueError("kv_capacity_bytes needs kv_bytes_per_token (the target model's KV bytes per token)")
        if self.max_seqs > 1 and self.step_time is None:
            raise ValueError("max_seqs > 1 needs step_time, the cost of one batched engine step")
        return self

    @property
    def kv_tokens(self) -> int | None:
        """KV capacity in tokens (None: unlimited)."""
        if self.kv_capacity_bytes is not None:
            return self.kv_capacity_bytes // self.kv_bytes_per_token
        return self.kv_capacity_tokens


class TargetGroup(_Model):
    name: str | None = Field(None, description="group label; instances are NAME-0, NAME-1, ...")
    count: int = Field(1, ge=1, le=MAX_UNITS)
    device: str = Field(description="device reference; a pool's units are assigned round-robin")
    verify_time: Dist = Field(
        description="one tree verification; tokens = tree tokens + 1 (root), context = context length"
    )
    prefill_time: Dist = Field(0.0, description="prompt prefill; tokens = prompt tokens")
    decode_time: Dist | None = Field(
        None,
        description="one autoregressive step (mode autoregressive); tokens = 1, context; "
        "defaults to verify_time at tokens = 1",
    )
    link: Link = Field(default_factory=Link)
    payload: Payload = Field(default_factory=Payload)
    weight: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="share of the draft under the wfq policy (rounds in proportion to weight under saturation)",
    )
    tpot_slo_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="time-per-output-token objective of each request (s/token): the edf policy serves the "
        "target closest to missing it first; the summary reports each target's attainment",
    )
    send_time: Dist = Field(
        0.0,
        description="the target's own work per round to build and send a DRAFT_REQUEST (its CPU "
        "share of the messaging stack): on its device unit, sharing the host's cores when the pool has them",
    )
    receive_time: Dist = Field(
        0.0, description="the target's own work per round to receive and parse a DRAFT_REPLY (as send_time)"
    )
    idle_slowdown: bool | None = Field(
        None,
        description="scale each verify by the warm/cold curve (verify_idle) of the verify_time profile, "
        "from the time since this target's last verify; default: on when that profile has the curve",
    )
    serving: Serving | None = Field(
        None, description="serve many requests at once (continuous batching); absent: one request at a time"
    )

    @model_validator(mode="after")
    def _idle_curve(self):
        vt = self.verify_time
        if self.idle_slowdown and not (isinstance(vt, Profile) and "verify_idle" in vt.file.ops):
            raise ValueError("idle_slowdown needs verify_time to be a profile with a verify_idle measurement")
        return self

    @property
    def warm_cold(self):
        """The verify's idle-gap slowdown factor function, or None when off."""
        vt = self.verify_time
        if self.idle_slowdown is False or not isinstance(vt, Profile):
            return None
        from ..profiles import idle_factor

        return idle_factor(vt.file, "verify_idle")
