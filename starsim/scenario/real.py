"""The real backend's section (``real:``): which models ``starsim execute`` runs, how, and its fault drills."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .base import NonNeg, Pos, _Model


class StopDraft(_Model):
    """Fault drill: the draft server goes away ``at_s`` seconds into the run."""

    kind: Literal["stop_draft"]
    at_s: NonNeg = Field(description="seconds after the run's start")


class KillTarget(_Model):
    """Fault drill: target instance ``target`` is killed (SIGKILL) ``at_s`` seconds into the run."""

    kind: Literal["kill_target"]
    target: int = Field(ge=0, description="the target instance's index (0-based, in file order)")
    at_s: NonNeg = Field(description="seconds after the run's start")


Fault = Annotated[StopDraft | KillTarget, Field(discriminator="kind")]


def _resolve_dir(v: str | None, info: ValidationInfo) -> str | None:
    """Relative to the scenario file; checked by the real backend when it runs (a pair may be built later)."""
    if v is None:
        return v
    base = Path((info.context or {}).get("base_dir", "."))
    p = Path(v).expanduser()
    return str((p if p.is_absolute() else base / p).resolve())


class PretrainedModel(_Model):
    """A local Hugging Face model (weights on disk; no download)."""

    kind: Literal["pretrained"]
    path: str = Field(description="model directory (config.json and weights), relative to the scenario file")
    gguf_file: str | None = Field(None, description="a GGUF file in that directory to load instead (needs `gguf`)")

    _check_path = field_validator("path")(_resolve_dir)


class SpecModel(_Model):
    """A calibration spec's network with random weights: real timing at any scale, no weights needed
    (acceptance is whatever such a pair measures, near zero)."""

    kind: Literal["spec"]
    spec: str = Field(description="a model spec name (models/specs, as `starsim calibrate compute --spec`) or file")
    seed: int = Field(0, ge=0, description="weight initialisation seed")

    @field_validator("spec")
    @classmethod
    def _spec_file(cls, v: str, info: ValidationInfo) -> str:
        return _resolve_dir(v, info) if v.endswith((".yaml", ".yml")) else v  # a file, relative to the scenario


ModelSource = Annotated[PretrainedModel | SpecModel, Field(discriminator="kind")]


class Real(_Model):
    """The real backend's side of a scenario: which models run, and how."""

    pair: str | None = Field(
        None,
        description="directory of a draft/target pair (target/, draft/, tokenizer.json), e.g. one built by "
        "`starsim models build-pair`; relative to the scenario file",
    )
    target_model: ModelSource | None = Field(None, description="the target, when not from `pair`")
    draft_model: ModelSource | None = Field(
        None, description="the draft, when not from `pair` (a spec's draft may be an EAGLE head)"
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="weights and activations; auto: float32 on a CPU, on a GPU the spec's dtype or the "
        "pretrained model's own",
    )
    threads: int = Field(1, ge=1, description="torch threads of each process (the draft server and every target)")
    temperature: NonNeg = Field(
        0.0,
        description="0: greedy decoding (outputs equal the target's own greedy ones); > 0: speculative "
        "sampling at this temperature (outputs distributed as the target's own sampling)",
    )
    timeout_s: Pos = Field(60.0, description="how long a target waits for a draft before it gives up on the server")
    max_wall_s: Pos = Field(600.0, description="stop the run after this much wall time, finished or not")
    emulate_link: bool = Field(
        True,
        description="impose each target's link (latency, bandwidth, jitter; both directions) on its messages, "
        "on top of the real path's own time",
    )
    faults: list[Fault] = Field(
        default_factory=list,
        description="fault drills: stop the draft server (targets go on autoregressively) or kill a target "
        "process, at a time into the run",
    )

    _check_pair = field_validator("pair")(_resolve_dir)

    @model_validator(mode="after")
    def _one_source(self):
        if self.pair is None and self.target_model is None:
            raise ValueError("give real.pair, or real.target_model (and real.draft_model for speculation)")
        return self
