"""What every part of the schema shares: the base model and its number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .limits import MAX_CPU

# -0.0 passes ge=0 but numpy refuses it as a scale (exponential(-0.0)): + 0.0 makes it 0.0
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(lambda v: v + 0.0)]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# a CPU core number, as devices.POOL.cpus lists them
Core = Annotated[int, Field(ge=0, le=MAX_CPU)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)
