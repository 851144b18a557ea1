"""A target's network path (``targets.*.link``) and its message sizes (``targets.*.payload``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from ..distributions import Dist
from .base import NonNeg, Pos, _Model
from .limits import MAX_BYTES_PER_TOKEN


class LinkDirection(_Model):
    latency_s: NonNeg = Field(0.0, description="one-way propagation latency")
    bandwidth_bps: Pos | None = Field(None, description="bits per second; null = unlimited")
    jitter: Dist = Field(0.0, description="extra random delay added to each message")

    def mean_time(self, nbytes: float) -> float:
        tx = 0.0 if self.bandwidth_bps is None else nbytes * 8.0 / self.bandwidth_bps
        return self.latency_s + tx + self.jitter.mean()


class Link(_Model):
    """Per-target network path. ``latency_s``/``bandwidth_bps``/``jitter`` at this level are a
    shorthand for both directions; ``up`` (target -> draft) and ``down`` override them."""

    SHORTHAND: ClassVar[tuple[str, ...]] = ("latency_s", "bandwidth_bps", "jitter")

    up: LinkDirection = Field(default_factory=LinkDirection)
    down: LinkDirection = Field(default_factory=LinkDirection)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        short = {k: data[k] for k in cls.SHORTHAND if k in data}
        if not short:
            return data
        out = {k: v for k, v in data.items() if k not in short}
        for d in ("up", "down"):
            given = out.get(d) or {}
            if isinstance(given, dict):
                out[d] = {**short, **given}
        return out


class Payload(_Model):
    """Message sizes, following the protocol: up = accepted token ids (+ hidden states),
    down = tree token ids + parent indices + tree mask."""

    header_bytes: int = Field(64, ge=0, le=MAX_BYTES_PER_TOKEN)
    token_bytes: int = Field(4, ge=0, le=MAX_BYTES_PER_TOKEN, description="bytes per token id")
    hidden_bytes_per_token: int = Field(
        0, ge=0, le=MAX_BYTES_PER_TOKEN, description="hidden state bytes per token sent up (e.g. 4096 x fp16 = 8192)"
    )
    tree_mask: bool = Field(True, description="send the tokens x tokens tree mask (1 bit each)")

    def bytes_up(self, new_tokens: int, hidden: bool) -> int:
        per = self.token_bytes + (self.hidden_bytes_per_token if hidden else 0)
        return self.header_bytes + new_tokens * per

    def bytes_down(self, tree_tokens: int) -> int:
        mask = (tree_tokens * tree_tokens + 7) // 8 if self.tree_mask else 0
        return self.header_bytes + tree_tokens * (self.token_bytes + 4) + mask
