"""The workload (``workload:``): a closed loop over a prompt set, open-loop arrivals, or a trace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from ..distributions import Dist
from .base import NonNeg, Pos, _Model
from .limits import MAX_PROMPTS, MAX_RATE_PER_S, MAX_SEQS


def _resolve_path(v: str | None, info: ValidationInfo) -> str | None:
    """Relative paths are relative to the scenario file; the file must exist."""
    if v is None:
        return v
    base = Path((info.context or {}).get("base_dir", "."))
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise ValueError(f"file not found: {p}")
    return str(p.resolve())


class _Lengths(_Model):
    prompt_tokens: Dist = Field(128, description="prompt length in tokens")
    output_tokens: Dist = Field(256, description="tokens to generate per request")


class ClosedLoop(_Lengths):
    """Each target walks a prompt set in order, one request at a time (the reference setup)."""

    kind: Literal["closed"] = "closed"
    prompts: int = Field(80, ge=1, le=MAX_PROMPTS, description="size of the prompt set")
    concurrency: int = Field(
        1, ge=1, le=MAX_SEQS,
        description="users per target, each with one request at a time, walking the prompt set together "
        "(a serving benchmark's --max-concurrency, per target); more than 1 needs serving targets",
    )
    stagger_s: NonNeg = Field(
        0.0, description="user k of a target sends its first request k * stagger_s after the start (a benchmark's "
        "ramp-up: users out of step, as a long run's are); 0: all at once",
    )
    lengths_file: str | None = Field(
        None,
        description="CSV with columns prompt_tokens,output_tokens (one row per prompt); "
        "replaces the length distributions",
    )
    prompts_jsonl: str | None = Field(
        None,
        description="MT-Bench style JSONL (field turns[0]); prompt lengths estimated from the "
        "first turn's text; output lengths still from output_tokens",
    )
    pause: Dist | None = Field(None, description="random pause between a target's prompts (bursty)")
    repeat: bool = Field(True, description="start the prompt set again when done")

    _check_lengths = field_validator("lengths_file", "prompts_jsonl")(_resolve_path)


class Poisson(_Lengths):
    kind: Literal["poisson"]
    rate_per_s: Pos = Field(le=MAX_RATE_PER_S)
    router: Literal["first_free", "round_robin", "least_outstanding"] = Field(
        "first_free",
        description="which target an arrival goes to: first_free (one fleet queue; a target takes the next "
        "arrival when it has a free slot), round_robin, least_outstanding (fewest running + queued; the "
        "last two queue at each target and need serving targets)",
    )


class GammaArrivals(_Lengths):
    """Gamma inter-arrivals with mean 1/rate and coefficient of variation ``cv``
    (cv = 1 is Poisson; cv > 1 is bursty)."""

    kind: Literal["gamma"]
    rate_per_s: Pos = Field(le=MAX_RATE_PER_S)
    cv: Pos = 1.0
    router: Literal["first_free", "round_robin", "least_outstanding"] = Field(
        "first_free",
        description="which target an arrival goes to: first_free (one fleet queue; a target takes the next "
        "arrival when it has a free slot), round_robin, least_outstanding (fewest running + queued; the "
        "last two queue at each target and need serving targets)",
    )


class TraceReplay(_Model):
    """Replay an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""

    kind: Literal["trace"]
    path: str
    time_scale: Pos = Field(1.0, description="multiply inter-arrival times by this")
    start_row: int = Field(0, ge=0)
    max_rows: int | None = Field(None, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=1, description="clip context tokens")
    max_output_tokens: int | None = Field(None, ge=1, description="clip generated tokens")
    router: Literal["first_free", "round_robin", "least_outstanding"] = Field(
        "first_free",
        description="which target an arrival goes to: first_free (one fleet queue; a target takes the next "
        "arrival when it has a free slot), round_robin, least_outstanding (fewest running + queued; the "
        "last two queue at each target and need serving targets)",
    )

    _check_path = field_validator("path")(_resolve_path)


Workload = Annotated[
    ClosedLoop | Poisson | GammaArrivals | TraceReplay, Field(discriminator="kind")
]
WORKLOAD_KINDS = ("closed", "poisson", "gamma", "trace")
