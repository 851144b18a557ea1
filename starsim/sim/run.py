"""Build the SimPy model of a scenario, run it, and return its records and summary."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import simpy

from ..acceptance import ByCategory
from ..adaptive import controller_for
from ..analytic import analyze
from ..draft_state import pipeline_totals
from ..errors import StarsimError
from ..metrics import summarize
from ..placement import link_time, place
from ..profiles import ProfileUsage
from ..records import Recorder, RequestRow
from ..result import Result
from ..rules import open_loop_arrivals
from ..run_meta import provenance, run_meta
from ..scenario import ClosedLoop, Scenario
from ..streams import Stream, rng_for
from ..workload import arrivals, prompt_categories, prompt_set
from .devices import build_units
from .draft import DraftEngine
from .fabric import Fabric
from .loops import general_loop_reason, is_zero
from .serving import ServingTarget
from .target import Hops, Requests, Speculation, Target, Wiring, _zero


def _arrival_process(env: simpy.Environment, store: simpy.Store, source, budget: int | None, n_targets: int,
                     route=None):
    """Open-loop arrivals into the fleet's queue (``store``), or each to a target by ``route``
    (a router: ``route(item)``; None marks the end)."""
    put = store.put if route is None else route
    for a in open_loop_arrivals(source, budget):
        if a.wait:
            yield env.timeout(a.wait)
        put((a.request, a.at, a.prompt, a.output))
    if route is not None:
        route(None)
        return
    for _ in range(n_targets):  # one "no more work" marker per target
        store.put(None)


def _after(env: simpy.Environment, delay: float, life):
    """``life`` (a target's process), started ``delay`` seconds into the run."""
    yield env.timeout(delay)
    return (yield from life)


def _router(policy: str, targets: list[ServingTarget]):
    """``route(item)``: sends an arrival to a serving target (round_robin: in turn;
    least_outstanding: the fewest running and queued, the lowest index on a tie); None: the
    end, to every target."""
    turn = [0]

    def route(item) -> None:
        if item is None:
            for t in targets:
                t.receive(None)
            return
        if policy == "round_robin":
            i = turn[0] % len(targets)
            turn[0] += 1
        else:
            i = min(range(len(targets)), key=lambda j: targets[j].sched.outstanding)
        targets[i].receive(item)
    return route


def simulate(scenario: Scenario, *, general: bool = False, source: str = "sim",
             starts: Sequence[float] | None = None) -> Result:
    """Run the discrete-event simulation of ``scenario``; deterministic for a given seed.

    ``general``: run every draft engine and target on its general loop, even where the
    scenario needs none of what only it does (the fast loops are an optimisation, and
    tests/test_loops.py checks that both give the same tables). ``source``: what the run's
    records call their origin (``replay``: a simulation fed a real run's times). ``starts``:
    per target (by index), the time its first request may start, instead of 0 (a replay
    starts each target of a closed loop when the real run's did; serving targets start at 0)."""
    check_work(scenario)
    with _gc_paused():
        return _simulate(scenario, general, origin=source, starts=starts)


# About 20 minutes of simulation at the ~80,000 rounds per second measured here (4 targets);
# far beyond any scenario shipped (the largest holds about 50,000).
MAX_ROUNDS = 100_000_000


def check_work(scenario: Scenario) -> float:
    """The rounds a run's horizon will hold, by the closed form's rate (what the simulator
    does on average), refused beyond MAX_ROUNDS before any work: rounds that take (nearly)
    no time would otherwise fill a short horizon without end. A run without duration_s ends
    with its requests, so its work is bounded by their tokens instead (0 returned)."""
    if scenario.duration_s is None:
        return 0.0
    with np.errstate(all="ignore"):  # times of 0 s: an infinite rate, refused below
        a = analyze(scenario)
    rate = a["draft_tasks_per_s"] if a["draft_tasks_per_s"] is not None else a["throughput_tokens_per_s"]
    if a["draft_tasks_per_s"] is not None:  # a serving target's step holds a round per sequence
        rate *= max(p.get("batch", 1.0) for p in a["per_target"]) if a["per_target"] else 1.0
    rounds = rate * scenario.duration_s
    if not rounds <= MAX_ROUNDS:  # also NaN: times that sum to 0
        raise StarsimError(
            f"{scenario.name}: duration_s {scenario.duration_s:g} s would hold about {rounds:.3g} rounds "
            f"({rate:.3g} per second by the closed form); at most {MAX_ROUNDS:,}: shorten duration_s, or check "
            f"the times (a round of {1 / rate if rate else math.inf:.3g} s)")
    return rounds


@contextmanager
def _gc_paused():
    # A run allocates events and row tuples by the hundred thousand and frees them by
    # reference counting; the cyclic collector would only rescan the growing record lists
    # (~10% of the time), so it is paused for the run and restored as it was.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Model:
    """What every piece of one simulation is built from (see _simulate)."""

    env: simpy.Environment
    scenario: Scenario
    rec: Recorder
    usage: ProfileUsage  # which measured profiles the run used, and where it left their range
    units: dict
    general: bool


def _simulate(scenario: Scenario, general: bool = False, origin: str = "sim",
              starts: Sequence[float] | None = None) -> Result:
    """Build the model (units, engines, requests, targets), run it, and summarize its tables."""
    wall0 = time.perf_counter()
    env = simpy.Environment()
    rec = Recorder()
    mode = scenario.mode
    instances = scenario.target_instances()
    draft_units, target_units = place(scenario)
    draft_unit = draft_units[0] if draft_units else ""
    users = list(draft_units)
    for tu in target_units:
        users += [tu, tu] if mode == "one_for_one" else [tu]
    units = build_units(env, scenario, users)
    engine_units = draft_units if mode == "star" else target_units if mode == "one_for_one" else []
    general = general or general_loop_reason(scenario, [units[u] for u in engine_units]) is not None
    m = _Model(env, scenario, rec, ProfileUsage(), units, general)
    usage, draft = m.usage, scenario.draft

    engines, fabric = _engines(m, draft_units, target_units)
    lives = [e.life for e in engines]  # every process's generator (see the end of the run)
    requests, store, source = _requests(m)
    targets = [_target(m, i, name, group, tu, engines, requests, fabric)
               for (i, name, group), tu in zip(instances, target_units)]
    if any(isinstance(t, ServingTarget) for t in targets):
        rec.steps = []
    if source is not None:
        router = scenario.workload.router  # not first_free: every target serves (a load-time check)
        route = None if router == "first_free" else _router(router, targets)
        arrival = _arrival_process(env, store, source, scenario.max_requests, len(targets), route)
        lives.append(arrival)
        env.process(arrival)
    procs = []
    for i, t in enumerate(targets):  # a target's first process is its life: the run ends when all have ended
        if isinstance(t, ServingTarget):
            gens = t.processes(getattr(scenario.workload, "stagger_s", 0.0))
        else:
            gens = [_after(env, starts[i], t.run()) if starts and i < len(starts) and starts[i] > 0 else t.run()]
        lives += gens
        ps = [env.process(g) for g in gens]
        procs.append(ps[0])
    done = env.all_of(procs)
    stop = done if scenario.duration_s is None else env.any_of([done, env.timeout(scenario.duration_s)])
    env.run(until=stop)
    t_end = env.now
    # Processes still waiting hold their targets (and the record rows) in a reference cycle
    # with the environment; closing their generators breaks it, so the rows are freed when
    # this function returns instead of by a cyclic collection over all of them.
    for life in lives:
        life.close()

    _unfinished(rec, targets, store)

    meta = run_meta(
        scenario, source=origin, t_end=t_end, draft_engines=[e.name for e in engines],
        targets=[(i, name, g, tu) for (i, name, g), tu in zip(instances, target_units)],
        draft_device=draft_unit, draft_devices=draft_units,
        pipeline=pipeline_totals([e.pipeline_stats for e in engines]) if draft.pipeline and mode == "star" else None,
        fabric_repairs=fabric.repairs if fabric is not None else None,
    )
    records = rec.finish(meta, release=True)
    summary = summarize(records)
    summary["provenance"] = provenance(scenario, origin, events_simulated=_events(env),
                                       wall_time_s=time.perf_counter() - wall0)
    if usage.entries:
        summary["provenance"]["profiles"] = usage.report()
    return Result(scenario=scenario, records=records, summary=summary)


def _engines(m: _Model, draft_units: list[str], target_units: list[str]) -> tuple[list[DraftEngine], Fabric | None]:
    """The draft engines (star: one per draft unit, with a fabric when there are several or
    they fail; one_for_one: one per target, on its unit; autoregressive: none)."""
    sc, draft, seed = m.scenario, m.scenario.draft, m.scenario.seed
    general = m.general
    if sc.mode == "star":
        weights = {i: g.weight for i, _, g in sc.target_instances()}
        fab = draft.fabric
        many = fab.servers > 1
        engines = [
            DraftEngine(m.env, j, f"draft-{j}" if many else "draft", m.units[u], draft, rng_for(seed, Stream.DRAFT, j),
                        m.rec, m.usage, weights, general=general)
            for j, u in enumerate(draft_units)
        ]
        fabric = Fabric(m.env, engines, fab, rng_for(seed, Stream.FABRIC)) if many or fab.failures else None
        return engines, fabric
    if sc.mode == "one_for_one":
        return [DraftEngine(m.env, i, f"draft-{i}", m.units[tu], draft, rng_for(seed, Stream.DRAFT, i), m.rec, m.usage,
                            general=general)
                for i, tu in enumerate(target_units)], None
    return [], None


def _requests(m: _Model):
    """Where targets take requests from: the closed loop's prompt set, or an open loop's queue
    and its arrivals (``(time, prompt, output)``, for the arrival process)."""
    sc, w = m.scenario, m.scenario.workload
    if isinstance(w, ClosedLoop):
        cats = prompt_categories(w) if isinstance(sc.acceptance, ByCategory) else None
        return (Requests(m.env, sc.max_requests, prompt_set(w, rng_for(sc.seed, Stream.WORKLOAD)), w.repeat,
                         categories=cats), None, None)
    store = simpy.Store(m.env)
    return Requests(m.env, sc.max_requests, store=store), store, arrivals(w, rng_for(sc.seed, Stream.WORKLOAD))


def _target(m: _Model, i: int, name: str, group, unit: str, engines: list[DraftEngine], requests: Requests,
            fabric: Fabric | None) -> Target:
    """Target instance ``i``, with its own random streams."""
    sc, draft, seed = m.scenario, m.scenario.draft, m.scenario.seed
    star, w = sc.mode == "star", sc.workload
    pause = None
    if isinstance(w, ClosedLoop) and w.pause is not None:
        f = w.pause.sampler(rng_for(seed, Stream.PAUSE, i))
        pause = lambda f=f: f(0.0, 0.0, 0.0)  # noqa: E731
    comm_rng = rng_for(seed, Stream.COMM, i)
    serving = {}
    if group.serving is not None:
        gi = next(k for k, g in enumerate(sc.targets) if g is group)
        serving = {"serving": group.serving, "users": w.concurrency if isinstance(w, ClosedLoop) else 0,
                   "where": f"targets.{gi}.serving", "record_rounds": sc.record_rounds}
    spec = Speculation(acceptance=sc.acceptance, tree=draft.tree, hidden=draft.needs_hidden_states, fabric=fabric,
                       controller=controller_for(draft, group) if star and draft.adaptive.policy != "fixed" else None,
                       pipeline=star and draft.pipeline)
    # one_for_one: the draft is in-process on the target's device: no wire, no parsing
    hops = Hops(up=link_time(group.link.up, rng_for(seed, Stream.LINK_UP, i), i) if star else _zero,
                down=link_time(group.link.down, rng_for(seed, Stream.LINK_DOWN, i), i) if star else _zero,
                parse=draft.parse_time.for_instance(i).draw0(comm_rng) if star else _zero,
                serialize=draft.serialize_time.for_instance(i).draw0(comm_rng) if star else _zero,
                send=group.send_time.for_instance(i).draw0(comm_rng) if star and not is_zero(group.send_time) else None,
                receive=group.receive_time.for_instance(i).draw0(comm_rng)
                if star and not is_zero(group.receive_time) else None)
    return (ServingTarget if serving else Target)(
        Wiring(m.env, m.rec, requests, m.usage, m.general), i, name, group, m.units[unit],
        engines[0] if star else (engines[i] if engines else None), rng_for(seed, Stream.TARGET, i),
        spec=spec, hops=hops, pause=pause, **serving)


def _unfinished(rec: Recorder, targets: list[Target], store: simpy.Store | None) -> None:
    """Conservation: every request that was issued is in the table, finished or not (a target's
    request in progress; an open loop's arrivals still queued, target -1)."""
    for t in targets:
        if isinstance(t, ServingTarget):
            rec.requests.extend(t.unfinished())
        elif t.current is not None:
            rec.requests.append(t.current.row())
    for item in store.items if store is not None else ():
        if item is not None:
            rid, arrival, prompt, output = item
            rec.requests.append(RequestRow(request=rid, target=-1, prompt_tokens=prompt, output_tokens=output,
                                           t_arrival=arrival).row())


def _events(env: simpy.Environment) -> int | None:
    # SimPy numbers scheduled events with an itertools.count (``_eid``); peek at it.
    eid = getattr(env, "_eid", None)
    return int(next(eid)) if eid is not None else None
