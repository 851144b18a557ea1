"""Device pools (``devices:``) and the NAME / NAME[UNIT] references that place roles on them."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from ..distributions import Dist
from .base import Core, _Model
from .limits import MAX_UNITS


class Device(_Model):
    """A pool of identical accelerators. Instances placed on the same unit share it."""

    type: str = Field("generic", description="free-text label, e.g. A100-80GB or cpu")
    count: int = Field(1, ge=1, le=MAX_UNITS, description="number of identical units in the pool")
    gpus: int = Field(1, ge=1, le=4096, description="accelerators one unit holds (e.g. 8 for a tensor-parallel-8 "
                      "target): what per-GPU answers count")
    cores: int | None = Field(
        None,
        ge=1,
        description="the pool's units share this many cores: with k busy tasks on the pool, each runs at "
        "min(1, cores/k) of its speed (processor sharing; e.g. processes on one CPU host); roles placed on "
        "one unit still take turns on it (slots); null: units are independent",
    )
    torch: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda|cuda:\d+)$",
        description="what `starsim execute` runs this pool's units on: cpu, cuda (unit k on cuda:k) or "
        "cuda:K (every unit on GPU K)",
    )
    slots: int = Field(
        1,
        ge=1,
        description="tasks one unit runs at once without slowing down; co-located work "
        "beyond this queues (contention, not free parallelism)",
    )
    handover_time: Dist | None = Field(
        None,
        description="when roles take turns on a unit: the time a turn takes to pass to a role that waited for it "
        "(a real run's turn is a lock between processes on one core: the waiter is woken and scheduled after the "
        "holder lets go); null: at once",
    )
    cpus: list[Core | list[Core]] | None = Field(
        None,
        description="the CPU cores each unit's processes run on in `starsim execute` (and `calibrate --cpus`): "
        "one entry per unit, a core or a list of cores, e.g. [0] or [[0, 1]]; the roles on one unit then also "
        "take turns on it, first come first served, as the simulator has them. null: the OS places them",
    )

    @model_validator(mode="after")
    def _cpus_per_unit(self):
        if self.cpus is not None and len(self.cpus) != self.count:
            raise ValueError(f"cpus: one entry per unit ({self.count}), got {len(self.cpus)}")
        if self.cpus is not None and any(isinstance(c, list) and not c for c in self.cpus):
            raise ValueError("cpus: a unit's list of cores is empty")
        return self

    def unit_cpus(self, unit: int) -> frozenset[int] | None:
        """The cores unit ``unit`` is declared on (None: not declared)."""
        if self.cpus is None:
            return None
        c = self.cpus[unit]
        return frozenset(c if isinstance(c, list) else [c])


_DEVICE_REF = re.compile(r"^(?P<pool>[A-Za-z_][\w\-.]*)(\[(?P<unit>\d+)\])?$")


def parse_device_ref(ref: str) -> tuple[str, int | None]:
    """``"a100"`` -> ``("a100", None)`` (round-robin over units); ``"a100[2]"`` -> unit 2."""
    m = _DEVICE_REF.match(ref)
    if not m:
        raise ValueError(f"device reference {ref!r} is not NAME or NAME[UNIT]")
    unit = m.group("unit")
    return m.group("pool"), (int(unit) if unit is not None else None)
