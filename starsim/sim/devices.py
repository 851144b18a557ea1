"""Device units: where each instance runs, and contention when instances share a unit."""

from __future__ import annotations

from collections import Counter

import simpy

from ..scenario import Scenario, parse_device_ref


class DeviceUnit:
    """One accelerator. ``resource`` is None when nobody competes for it (no SimPy
    request/release on the hot path); otherwise co-located work queues FIFO for a slot."""

    def __init__(self, name: str, slots: int):
        self.name = name
        self.slots = slots
        self.users = 0
        self.resource: simpy.Resource | None = None


def place(scenario: Scenario) -> tuple[str, list[str]]:
    """Unit names for the draft and for each target (in target order).

    A bare pool name hands out the pool's units round-robin (per pool, in file order);
    ``NAME[k]`` pins unit k. In one_for_one mode each target's draft sits on the target's
    unit; in autoregressive mode there is no draft (its unit is still named, unused).
    """
    next_unit: Counter = Counter()

    def assign(ref: str) -> str:
        pool, unit = parse_device_ref(ref)
        if unit is None:
            unit = next_unit[pool] % scenario.devices[pool].count
            next_unit[pool] += 1
        return f"{pool}[{unit}]"

    draft_unit = assign(scenario.draft.device) if scenario.mode == "star" else ""
    targets = [assign(g.device) for _, _, g in scenario.target_instances()]
    return draft_unit, targets


def build_units(env: simpy.Environment, scenario: Scenario, users: list[str]) -> dict[str, DeviceUnit]:
    """Create the units named in ``users`` (one entry per engine/target that runs there)."""
    units: dict[str, DeviceUnit] = {}
    for name in users:
        if name not in units:
            pool, _ = parse_device_ref(name)
            units[name] = DeviceUnit(name, scenario.devices[pool].slots)
        units[name].users += 1
    for u in units.values():
        if u.users > u.slots:
            u.resource = simpy.Resource(env, capacity=u.slots)
    return units
