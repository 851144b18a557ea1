"""What a scenario's results rest on that its user may not expect, one line each: targets
(or a draft server) sharing a device unit, an acceptance curve cut to the tree or measured
on another one, the simulator's pipelined hits, a run without rounds rows. ``check``,
``run``, ``analyze`` and ``execute`` print them; a run's summary keeps them
(``provenance.notices``)."""

from __future__ import annotations

from collections import Counter, defaultdict

from .placement import place
from .scenario import Scenario, parse_device_ref


def shared_units(scenario: Scenario) -> dict[str, list[str]]:
    """Units holding more roles than they have slots: unit -> the roles on it (draft servers
    first, then targets by instance name). A one_for_one draft on its target's unit is part
    of that target, not a second role."""
    drafts, targets = place(scenario)
    roles: dict[str, list[str]] = defaultdict(list)
    for j, unit in enumerate(drafts):
        roles[unit].append(f"draft server {j}" if len(drafts) > 1 else "the draft server")
    for (_, name, _), unit in zip(scenario.target_instances(), targets):
        roles[unit].append(name)
    return {u: r for u, r in roles.items() if len(r) > scenario.devices[parse_device_ref(u)[0]].slots}


def colocation(scenario: Scenario) -> list[str]:
    """One line per pool with shared units: how many share, an example, and how to give each
    its own unit."""
    shared, more = shared_units(scenario), own_units(scenario)
    by_pool: dict[str, list[str]] = defaultdict(list)
    for unit in shared:
        by_pool[parse_device_ref(unit)[0]].append(unit)
    out = []
    for pool, units in by_pool.items():
        dev = scenario.devices[pool]
        most = max(len(shared[u]) for u in units)
        example = units[0]
        roles = sum(len(shared[u]) for u in units)
        turns = "take turns on it" if dev.slots == 1 else f"take turns on its {dev.slots} slots"
        host = f", and the pool's units share {dev.cores} core(s)" if dev.cores is not None else ""
        own = more.get(f"devices.{pool}.count")
        out.append(
            f"devices.{pool}: {len(units)} of its {dev.count} unit(s) are shared ({roles} roles, up to {most} on one: "
            f"{example} holds {', '.join(shared[example])}); roles on one unit {turns}{host}"
            + (f"; devices.{pool}.count: {own} gives each its own" if own else "")
        )
    return out


def own_units(scenario: Scenario) -> dict[str, int]:
    """Overrides that give every role its own unit (``devices.POOL.count``), for the pools
    whose units are shared: what the closed form assumes."""
    drafts, targets = place(scenario)
    on_pool = Counter(parse_device_ref(u)[0] for u in drafts + targets)
    out = {}
    for pool in {parse_device_ref(u)[0] for u in shared_units(scenario)}:
        dev = scenario.devices[pool]
        own = -(-on_pool[pool] // dev.slots)
        if own > dev.count:
            out[f"devices.{pool}.count"] = own
    return out


def notices(scenario: Scenario) -> list[str]:
    """Every notice of the scenario (see the module docstring)."""
    out = []
    if scenario.mode != "autoregressive":
        out += scenario.acceptance.notices(scenario.draft.tree.shape())
    if scenario.mode == "star" and scenario.draft.pipeline:
        out.append("draft.pipeline: the simulator uses a pipelined tree whenever the target accepts the whole main "
                   "path of the last one (its trees are counts, not tokens); a real server also needs the target's "
                   "next token among that tree's first level, so the simulated hit rate is an upper bound")
    if not scenario.record_rounds:
        out.append("record_rounds: false: no rounds table; tokens and throughput come from the steps table, and "
                   "round and hop times, queue waits, acceptance per depth, ITL and draft KV are not measured")
    return out + colocation(scenario)
