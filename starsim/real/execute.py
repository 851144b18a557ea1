"""``starsim execute``: run a scenario for real and record it in the simulator's schema.

In star mode this process loads the draft model and runs the
:class:`~starsim.real.server.DraftServer` (communication threads plus one engine thread);
with a draft fabric (``draft.fabric.servers`` M > 1) it runs M of them, each with its own
copy of the draft on its own unit, and every target pairs with one at a time over a load
board in shared memory (:class:`~starsim.real.worker.FabricClient`); ``draft.fabric.failures``
close a server at its time, as the ``stop_draft`` drill closes every one. Every target
instance of the scenario is a process of its own (``multiprocessing`` spawn) that loads
the target model and connects over loopback TCP. In one_for_one mode each target process
also loads its own draft on its own device and serves it to itself over loopback (no
emulated link), as the simulator co-locates each draft with its target.

Workloads, as the simulator runs them: a closed loop has each target go through the prompt
set in order, under one run-wide request budget (``max_requests``); an open loop (poisson,
gamma, trace) replays the simulator's arrivals for the scenario and seed (times and lengths
of :func:`starsim.workload.arrivals`), request i arriving at its time on the run's clock,
from one shared queue that the first idle target takes from. No new request starts after
``duration_s``. Workers send their record rows back when they end; :mod:`starsim.metrics`
summarizes them exactly as it does a simulation.

Prompt text: Python standard library source the pair never trained on (the sorted
``*.py`` files after the last one of the pair's corpus), cut at the prompt lengths the
scenario's workload draws.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..draft_state import pipeline_totals
from ..errors import StarsimError
from ..metrics import summarize
from ..profile_fields import foreign_profiles
from ..records import RequestRow, interval_row
from ..result import Result
from ..rules import open_loop_arrivals, pauses_first
from ..run_meta import provenance, run_meta
from ..scenario import ClosedLoop, Scenario, parse_device_ref
from ..streams import Stream, rng_for
from ..workload import arrivals as workload_arrivals
from .models import (
    build_prompts,
    check_device,
    check_sources,
    load_model,
    resolve_dtype,
    role_source,
    source_vocab,
    tokenizer_encode,
    torch_device,
)
from .pair import pair_info
from .resources import FREE, UnitLock, check_cpus, pin
from .run_requests import InProgress, next_request
from .serving_checks import check_memory, check_serving
from .speculation import RankCounts

log = logging.getLogger("starsim.execute")


def _check(scenario: Scenario) -> None:
    if scenario.real is None:
        raise StarsimError(f"{scenario.name}: execute needs a `real:` section (real.pair: a draft/target pair "
                           "directory; build one with `starsim models build-pair`)")
    if scenario.max_requests is None and scenario.duration_s is None:
        raise StarsimError("execute needs max_requests or duration_s")
    check_serving(scenario)
    check_sources(scenario)


def _open_loop(scenario: Scenario, horizon: float) -> tuple[list[float], list[tuple[int, int]], bool]:
    """The simulator's open-loop requests for the scenario and seed (:func:`starsim.rules.open_loop_arrivals`,
    the same floats), in request-id order: arrival times and ``(prompt, output)`` lengths, up
    to the budget and ``horizon`` (inclusive, as in the simulator); and whether ``horizon`` cut
    the arrivals short."""
    times: list[float] = []
    lengths: list[tuple[int, int]] = []
    draws = workload_arrivals(scenario.workload, rng_for(scenario.seed, Stream.WORKLOAD))
    for a in open_loop_arrivals(draws, scenario.max_requests):
        if a.at > horizon:
            return times, lengths, True
        times.append(a.at)
        lengths.append((a.prompt, a.output))
    return times, lengths, False


@dataclass
class TargetJob:
    """What one target process runs (it crosses the spawn as the process's argument).

    ``arrivals``: an open loop (request i arrives at ``arrivals[i]`` with ``prompts[i]``);
    None: the closed loop over ``prompts``. ``own_draft``: one_for_one, this target's draft
    (source, dtype, tree, policy, stop_draft times), served from this process. ``qos``: the
    target's ``weight`` and ``tpot_slo_s``, told to the draft server for its policy.
    ``pause``: a closed loop's think time between this target's requests (a timing spec),
    drawn from the simulator's own stream, so both pause alike for one seed. ``fabric``: several
    draft servers (``addresses``), the shared load board (``loads``, ``alive``, ``seats``; one
    lock), the ``pairing`` name and ``repair_queue``: the target pairs with one server at a time.
    ``adaptive``: the scenario's ``draft`` and this target's group, for its adaptive-speculation
    controller (the simulator's, costing rounds with the same models)."""

    index: int
    src: dict
    device: str
    dtype: str
    unit: str
    address: str | None
    threads: int
    prompts: list
    repeat: bool
    budget: int | None
    horizon: float
    timeout_s: float
    link: Any = None
    seed: int = 0
    temperature: float = 0.0
    arrivals: list[float] | None = None
    own_draft: dict | None = None
    qos: dict = field(default_factory=dict)
    pause: Any = None
    fabric: dict | None = None
    adaptive: tuple | None = None
    cpus: frozenset[int] | None = None  # the unit's declared cores (None: the OS places the process)
    unit_lock: Any = FREE  # resources.UnitLock: the unit is shared, its roles take turns (FREE: not shared)
    # a serving target (serving_worker): its group's ``serving`` and index, the tree (top_k,
    # depth, tokens), its closed loop's users and their stagger, and whether rounds rows are kept
    serving: Any = None
    group: int = 0
    tree: tuple = (0, 0, 0)
    users: int = 1
    stagger_s: float = 0.0
    record_rounds: bool = True


@dataclass
class RunShared:
    """The run's state shared with every target process: the request budget's counter
    (``issued``), the start barrier (``ready``, ``go``, ``clock0``), the results queue and the
    requests in progress."""

    issued: Any
    ready: Any
    go: Any
    clock0: Any
    results: Any
    taken: InProgress


@dataclass(frozen=True)
class Served:
    """What a target's worker recorded: its rows, its outputs and when it lost the draft
    server (empty for a target that never ran a request)."""

    rounds: Any = ()
    requests: Any = ()
    intervals: Any = ()
    outputs: Any = ()
    fallback_at: float | None = None
    steps: Any = None  # a serving target's steps table (None: not a serving target)

    @classmethod
    def of(cls, worker) -> Served:
        """A :class:`~starsim.real.worker.TargetWorker`'s or a serving target's
        :class:`~starsim.real.serving_worker.ServingRun` (None: nothing served)."""
        if worker is None:
            return cls()
        if hasattr(worker, "rec"):  # a serving target
            rec = worker.rec
            return cls(rec.rounds, rec.requests, rec.intervals, worker.outputs, worker.fallback_at, rec.steps)
        return cls(worker.rounds, worker.requests, worker.intervals, worker.outputs, worker.fallback_at)


@dataclass(frozen=True)
class Links:
    """A target's draft connections: its tag with one star server, every connection's
    ``(server, tag)`` and its re-pairings between servers."""

    tag: int | None = None
    tags: Any = ()
    repairs: int = 0


@dataclass(frozen=True)
class OwnDraft:
    """In one_for_one, what the target's own draft server recorded: its busy intervals (rows)
    and the connections it rejected."""

    intervals: Any = ()
    rejected: Any = ()


def target_result(index: int, *, error: str | None, served: Served = Served(), links: Links = Links(),
                  own: OwnDraft = OwnDraft(), affinity=None) -> dict[str, Any]:
    """What a target process reports (or the run reports for one that died), as one flat dict:
    its ``served`` rows, its draft ``links``, its error, its ``own`` draft's rows in
    one_for_one, and the cores it ran on."""
    return {"index": index, "error": error, "tag": links.tag, "tags": list(links.tags), "repairs": links.repairs,
            "rounds": list(served.rounds), "requests": list(served.requests), "intervals": list(served.intervals),
            "fallback_at": served.fallback_at, "outputs": list(served.outputs),
            "steps": None if served.steps is None else list(served.steps),
            "draft_intervals": list(own.intervals), "rejected": list(own.rejected), "affinity": affinity}


@dataclass
class _Process:
    """A target process's pieces, as it builds them."""

    model: Any = None
    server: Any = None  # one_for_one: its own draft server
    client: Any = None
    seat: Any = None  # a fabric's client
    tag: int | None = None
    worker: Any = None
    error: str | None = None
    affinity: list[int] | None = None  # the cores it ran on


def _target_main(job: TargetJob, shared: RunShared) -> None:
    """One target process: load the model and connect, wait for the common start, then take
    requests until the budget ends or ``horizon`` seconds have passed; report its rows."""
    import torch

    p = _Process()
    try:
        # first: torch's threads, started below, inherit the cores (see resources)
        p.affinity = pin(job.cpus)
        if isinstance(job.unit_lock, UnitLock):
            job.unit_lock.bind(job.index)
        torch.set_num_threads(job.threads)
        _connect(job, p)
    except Exception as e:  # noqa: BLE001 - reported in the summary, the run goes on
        p.error = f"{type(e).__name__}: {e}"
    shared.ready.put(job.index)
    shared.go.wait()  # every process loaded and connected: the clock starts now for all
    try:
        if p.error is not None:
            raise RuntimeError(p.error)
        if job.serving is not None:
            from .serving_worker import serve_requests

            p.worker = serve_requests(job, shared, p.model, p.client, shared.taken)
        else:
            _take_requests(job, shared, p)
    except Exception as e:  # noqa: BLE001 - reported in the summary, the run goes on
        p.error = p.error or f"{type(e).__name__}: {e}"
        if p.seat is not None:
            p.seat.close()  # its place on the load board is given back
    shared.results.put(_report(job, p, shared.clock0.value))


def _connect(job: TargetJob, p: _Process) -> None:
    """Load the target (and in one_for_one its own draft server) and connect to the draft."""
    from .client import DraftClient
    from .models import load_model
    from .server import DraftServer, ServerLimits, ServerOptions
    from .speculation import Drafter
    from .worker import FabricClient

    p.model = load_model(job.src, "target", job.device, job.dtype)
    address = job.address
    if job.own_draft is not None:
        # one_for_one: the draft lives with its target (the simulator puts it on the target's
        # unit), so it shares this process's device and threads, never another target's; the
        # target waits for each tree, so the two never compute at once.
        own = job.own_draft
        draft = load_model(own["src"], "draft", job.device, own["dtype"])
        p.server = DraftServer(Drafter(draft, *own["tree"]), options=ServerOptions(policy=own["policy"]),
                               limits=ServerLimits(timeout_s=job.timeout_s), cpus=job.cpus, unit=job.unit_lock).start()
        address = p.server.address
    delays = {}
    if job.link is not None:  # the simulator's link model, one random stream per direction
        from ..placement import link_time

        delays = {"delay_up": link_time(job.link.up, rng_for(job.seed, Stream.LINK_UP, job.index), job.index),
                  "delay_down": link_time(job.link.down, rng_for(job.seed, Stream.LINK_DOWN, job.index), job.index)}
    info = {"index": job.index, **job.qos}
    fab = job.fabric
    if fab is not None:  # a connection to every server now, the pairing at each request's start
        from ..pairing import make_pairing

        pairing = make_pairing(fab["pairing"], len(fab["addresses"]), rng_for(job.seed, Stream.PAIRING, job.index),
                               loads=fab["loads"], alive=fab["alive"])
        p.seat = FabricClient(job.index, fab["addresses"], pairing, fab["loads"].get_lock(),
                              lambda a: DraftClient(a, timeout_s=job.timeout_s, info=info, **delays),
                              repair_queue=fab["repair_queue"], seats=fab["seats"])
        p.seat.connect_all()
    elif address:
        p.client = DraftClient(address, timeout_s=job.timeout_s, info=info, **delays)
        p.tag = p.client.tag


def _take_requests(job: TargetJob, shared: RunShared, p: _Process) -> None:
    """The target's requests, from the common start until the budget or the horizon ends."""
    from .models import eos_ids
    from .worker import TargetWorker, WorkerOptions

    t0 = shared.clock0.value
    deadline = t0 + job.horizon
    for at in job.own_draft["stop_at"] if p.server is not None else ():  # stop_draft drills: this target's own
        timer = threading.Timer(max(0.0, t0 + at - time.monotonic()), p.server.close)
        timer.daemon = True  # one not yet due is dropped when the process ends
        timer.start()
    controller = None
    if job.adaptive is not None:
        from ..adaptive import controller_for

        controller = controller_for(*job.adaptive)
    options = WorkerOptions(device=job.unit, eos=eos_ids(p.model, job.src), temperature=job.temperature,
                            seed=job.seed, tpot_slo_s=job.qos.get("tpot_slo_s"),
                            draft_index=job.index if p.server is not None else 0)
    p.worker = worker = TargetWorker(job.index, p.model, p.client, t0, options, fabric=p.seat, controller=controller,
                                     unit=job.unit_lock)
    arrivals, served = job.arrivals, 0
    think = job.pause.sampler(rng_for(job.seed, Stream.PAUSE, job.index)) if job.pause is not None else None
    while time.monotonic() < deadline and (taken := next_request(job, shared.issued, served)) is not None:
        rid, i = taken
        prompt, output = job.prompts[i]
        if arrivals is None:
            if pauses_first(served) and think is not None:  # as the simulator: the request is taken, then the pause
                time.sleep(think(0.0, 0.0, 0.0))
            t_arrival = time.monotonic() - t0
        else:
            # Open loop: whoever asks first gets the next request and waits for it to arrive, as
            # the simulator's longest-idle target does; one that arrived while all were busy
            # queued meanwhile (its TTFT counts from arrival).
            t_arrival = arrivals[rid]
            time.sleep(max(0.0, t0 + t_arrival - time.monotonic()))
        shared.taken.take(job.index, RequestRow(request=rid, target=job.index, prompt_tokens=len(prompt),
                                                output_tokens=output, t_arrival=t_arrival))
        worker.run_request(rid, prompt, output, t_arrival=t_arrival)
        shared.taken.clear(job.index, rid)
        served += 1
    worker.close()


def _report(job: TargetJob, p: _Process, clock0: float) -> dict[str, Any]:
    draft_rows, rejected = [], []
    if p.server is not None:
        p.server.close()
        draft_rows = [interval_row(engine=f"draft-{job.index}", device=job.unit, kind="draft", target=job.index,
                                   start=b.start - clock0, end=b.end - clock0) for b in p.server.intervals]
        rejected = p.server.rejected
    # (server, tag) of each connection to the star's draft servers, and the moves between them
    if p.seat is not None:
        links = Links(tag=p.tag, tags=p.seat.tags, repairs=p.seat.repairs)
    else:
        links = Links(tag=p.tag, tags=[(0, p.tag)] if p.tag is not None and p.server is None else [])
    return target_result(job.index, error=p.error, served=Served.of(p.worker), links=links,
                         own=OwnDraft(draft_rows, rejected), affinity=p.affinity)


def execute(scenario: Scenario) -> Result:
    """Run ``scenario`` for real (see the module docstring); returns the same Result as simulate."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _execute(scenario)
    finally:
        torch.set_num_threads(threads)  # the draft server's setting is this run's, not the caller's


@dataclass
class _Plan:
    """One real run's layout, from its scenario: units, devices, sources, requests."""

    scenario: Scenario
    instances: list
    star: bool
    own: bool
    draft_units: list[str]
    target_units: list[str]
    target_dev: list[str]
    draft_dev: list[tuple[str, str]]
    target_src: dict
    draft_src: dict | None
    use_fabric: bool
    many: bool  # several draft servers: engines are named by server, as the simulator names them
    horizon: float
    arrivals: list[float] | None
    prompts: list
    cut: bool  # the horizon cut the open loop's arrivals short
    cpus: dict[str, frozenset[int] | None]  # unit -> its declared cores (None: not declared)


def _plan(scenario: Scenario) -> _Plan:
    from ..placement import place

    _check(scenario)
    r = scenario.real
    star, own = scenario.mode == "star", scenario.mode == "one_for_one"
    draft_units, target_units = place(scenario)
    fab = scenario.draft.fabric
    many = star and len(draft_units) > 1
    target_src = role_source(r, "target")
    target_dev = [torch_device(scenario, u) for u in target_units]
    draft_dev = [(u, torch_device(scenario, u)) for u in draft_units] if star else []  # one_for_one: the targets'
    cpus = {}
    for unit, dev in sorted({*zip(target_units, target_dev), *draft_dev}):
        check_device(dev, f"devices: unit {unit}")
        pool, k = parse_device_ref(unit)
        cpus[unit] = scenario.devices[pool].unit_cpus(k)
        if cpus[unit] is not None:
            check_cpus(cpus[unit], f"devices.{pool}.cpus (unit {unit})")
    horizon = min(scenario.duration_s if scenario.duration_s is not None else math.inf, r.max_wall_s)
    arrivals, lengths, cut = None, None, False
    if not isinstance(scenario.workload, ClosedLoop):
        arrivals, lengths, cut = _open_loop(scenario, horizon)
    prompts = build_prompts(scenario, tokenizer_encode(r), source_vocab(target_src, "target"), lengths)
    check_memory(scenario, target_src, resolve_dtype(r, target_src, target_dev[0]), target_dev, prompts)
    return _Plan(scenario, scenario.target_instances(), star, own, draft_units, target_units, target_dev, draft_dev,
                 target_src, role_source(r, "draft") if star or own else None, star and (many or bool(fab.failures)),
                 many, horizon, arrivals, prompts, cut, cpus)


def _unit_locks(ctx, plan: _Plan) -> dict[str, UnitLock]:
    """A lock for each unit that more than one role uses (the star's draft servers and the
    targets; a one_for_one target's own draft counts too), with its pool's ``slots``."""
    users = Counter(plan.target_units) + Counter(plan.draft_units if plan.star else plan.target_units)
    # each target is a role of its unit's lock (bound in its process), so that its turn can be
    # given back if it dies
    return {u: UnitLock(ctx, plan.scenario.devices[parse_device_ref(u)[0]].slots, users=n, roles=len(plan.instances))
            for u, n in sorted(users.items()) if n > 1}


def _start_servers(plan: _Plan, locks: dict) -> list:
    """Star: one DraftServer per draft unit, each with its own copy of the draft."""
    from .server import DraftServer, ServerLimits, ServerOptions
    from .server_options import MAX_TARGETS
    from .speculation import Drafter

    sc, r, servers = plan.scenario, plan.scenario.real, []
    d, tree = sc.draft, sc.draft.tree
    try:
        for unit in plan.draft_units if plan.star else ():
            dev = torch_device(sc, unit)
            draft = load_model(plan.draft_src, "draft", dev, resolve_dtype(r, plan.draft_src, dev))
            options = ServerOptions(policy=d.policy, batch_max=d.batch.max, batch_window_s=d.batch.window_s,
                                    memory_bytes=d.memory_bytes, pipeline=d.pipeline)
            limits = ServerLimits(timeout_s=r.timeout_s, max_targets=max(MAX_TARGETS, len(plan.target_units)))
            servers.append(DraftServer(Drafter(draft, tree.top_k, tree.depth, tree.tokens), options=options,
                                       limits=limits, cpus=plan.cpus[unit], unit=locks.get(unit, FREE)).start())
    except BaseException:
        for srv in servers:
            srv.close()
        raise
    return servers


def _fabric_board(ctx, plan: _Plan, servers: list) -> dict | None:
    """The fabric's load board in shared memory: targets paired with each server, whether it
    still serves, and each target's server (-1: none); one lock."""
    if not plan.use_fabric:
        return None
    fab = plan.scenario.draft.fabric
    loads = ctx.Array("i", len(servers))
    alive = ctx.Array("b", [1] * len(servers), lock=loads.get_lock())
    seats = ctx.Array("i", [-1] * len(plan.instances), lock=loads.get_lock())
    return {"addresses": [srv.address for srv in servers], "loads": loads, "alive": alive, "seats": seats,
            "pairing": fab.pairing, "repair_queue": fab.repair_queue}


def _jobs(plan: _Plan, servers: list, fabric: dict | None, locks: dict) -> list[TargetJob]:
    sc, r = plan.scenario, plan.scenario.real
    tree = sc.draft.tree
    stop_at = [f.at_s for f in r.faults if f.kind == "stop_draft"]
    address = servers[0].address if servers and not plan.use_fabric else None
    jobs = []
    groups = {id(g): k for k, g in enumerate(sc.targets)}
    for i, _name, group in plan.instances:
        dev = plan.target_dev[i]
        own_draft = {"src": plan.draft_src, "dtype": resolve_dtype(r, plan.draft_src, dev),
                     "tree": (tree.top_k, tree.depth, tree.tokens), "policy": sc.draft.policy,
                     "stop_at": stop_at} if plan.own else None
        jobs.append(TargetJob(
            index=i, src=plan.target_src, device=dev, dtype=resolve_dtype(r, plan.target_src, dev),
            unit=plan.target_units[i], address=address, threads=r.threads, prompts=plan.prompts,
            repeat=getattr(sc.workload, "repeat", False), budget=sc.max_requests, horizon=plan.horizon,
            timeout_s=r.timeout_s,
            # one_for_one has no wire in the simulator: its loopback gets no emulated link
            link=group.link if r.emulate_link and plan.star else None, seed=sc.seed, temperature=r.temperature,
            arrivals=plan.arrivals, own_draft=own_draft, qos={"weight": group.weight, "tpot_slo_s": group.tpot_slo_s},
            pause=getattr(sc.workload, "pause", None), fabric=fabric,
            adaptive=(sc.draft, group) if plan.star and sc.draft.adaptive.policy != "fixed" else None,
            cpus=plan.cpus[plan.target_units[i]], unit_lock=locks.get(plan.target_units[i], FREE),
            serving=group.serving, group=groups[id(group)], tree=(tree.top_k, tree.depth, tree.tokens),
            users=getattr(sc.workload, "concurrency", 1), stagger_s=getattr(sc.workload, "stagger_s", 0.0),
            record_rounds=sc.record_rounds))
    return jobs


def _execute(scenario: Scenario) -> Result:
    """Plan the run, start the draft servers and the target processes, collect their rows, and
    summarize them as a simulation is summarized."""
    import torch

    from ..models.reference import reference_speed

    wall0 = time.perf_counter()
    plan = _plan(scenario)
    r = scenario.real
    ctx = mp.get_context("spawn")
    # Rows come back through a multiprocessing queue: pickles between this run's own
    # processes, never input from the network (that is the protocol's job).
    shared = RunShared(issued=ctx.Value("i", 0), ready=ctx.Queue(), go=ctx.Event(), clock0=ctx.Value("d", 0.0),
                       results=ctx.Queue(), taken=InProgress(ctx, len(plan.instances), _slots(scenario)))
    torch.set_num_threads(r.threads)
    locks = _unit_locks(ctx, plan)
    servers = _start_servers(plan, locks)
    fabric = _fabric_board(ctx, plan, servers)
    procs = []
    try:
        for job in _jobs(plan, servers, fabric, locks):
            p = ctx.Process(target=_target_main, name=f"starsim-target-{job.index}", args=(job, shared))
            p.start()
            procs.append(p)
        _wait_ready(shared, procs, r.max_wall_s)
        # The machine's speed on the calibration's reference kernel, before and after the run:
        # shared machines drift, and `starsim validate` sets it beside the profiles' own.
        ref_device = torch_device(scenario, plan.draft_units[0]) if plan.star else plan.target_dev[0]
        speeds = {"before": reference_speed(r.threads, ref_device)}
        clock0 = shared.clock0.value = time.monotonic()
        shared.go.set()
        board = (fabric["loads"], fabric["alive"]) if fabric is not None else None
        drills = _start_faults(r.faults, servers, procs, clock0,
                               scenario.draft.fabric.failures if plan.star else [], board)
        got = _collect(shared, procs, fabric, clock0 + r.max_wall_s + 60,
                       [locks.get(u) for u in plan.target_units])
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        t_elapsed = time.monotonic() - clock0
        speeds["after"] = reference_speed(r.threads, ref_device)
        drills.set()  # drills not yet due are dropped
        for srv in servers:
            srv.close()
    except BaseException:  # Ctrl-C or a failure here: no target left waiting, no port left open
        shared.go.set()
        for p in procs:
            if p.is_alive():
                p.kill()
        for srv in servers:
            srv.close()
        raise
    records = _records(plan, servers, got, clock0, t_elapsed, shared.issued.value)
    summary = summarize(records)
    summary["provenance"] = _provenance(plan, servers, got, speeds, ref_device, len(procs),
                                        wall_time_s=time.perf_counter() - wall0, shared_units=sorted(locks))
    summary["provenance"]["notices"] += foreign_profiles(scenario)  # its profiles, if not this machine's
    outputs = sorted((o for i in sorted(got) for o in got[i]["outputs"]), key=lambda o: o["request"])
    return Result(scenario=scenario, records=records, summary=summary, outputs=outputs)


def _slots(scenario: Scenario) -> int:
    """The requests a target may hold in progress at once: one, or a serving target's running
    batch, its queue (its users' or a free slot's) and one arrived meanwhile."""
    users = getattr(scenario.workload, "concurrency", 1)
    return max([1, *(g.serving.max_seqs + users + 1 for g in scenario.targets if g.serving is not None)])


def _wait_ready(shared: RunShared, procs: list, max_wall_s: float) -> None:
    """The run's clock starts when every target has loaded its model and connected, so
    start-up is not counted as idle draft time."""
    waiting, give_up = set(range(len(procs))), time.monotonic() + max_wall_s
    while waiting and time.monotonic() < give_up:
        try:
            waiting.discard(shared.ready.get(timeout=0.5))
        except queue.Empty:
            waiting -= {i for i in waiting if procs[i].exitcode is not None}  # died while loading


def _collect(shared: RunShared, procs: list, fabric: dict | None, end_by: float,
             units: list | None = None) -> dict[int, dict[str, Any]]:
    """Every target's report; for one killed before it reported, its turn on its unit
    (``units``: each target's UnitLock, None: not shared) is given back, its load leaves the
    board and its requests in progress are reported unfinished (a worker finishes its
    request in progress after the deadline, hence ``end_by`` past it)."""
    got: dict[int, dict[str, Any]] = {}
    while len(got) < len(procs) and time.monotonic() < end_by:
        try:
            item = shared.results.get(timeout=0.5)
            got[item["index"]] = item
        except queue.Empty:
            for i, p in enumerate(procs):  # killed before it reported: its rows are lost, the run goes on
                if i not in got and p.exitcode not in (None, 0):
                    if units is not None and units[i] is not None:
                        units[i].release(i)
                    if fabric is not None:
                        with fabric["loads"].get_lock():
                            j, fabric["seats"][i] = fabric["seats"][i], -1
                            if j >= 0:
                                fabric["loads"][j] -= 1
                    lost = shared.taken.lost(i)
                    got[i] = target_result(i, error=f"process ended with exit code {p.exitcode}",
                                           served=Served(requests=[r.row() for r in lost]))
    return got


def _records(plan: _Plan, servers: list, got: dict, clock0: float, t_elapsed: float, issued: int):
    """The run's tables: the targets' rows, the draft servers' busy and evict intervals (engine
    "draft", or "draft-J" with several servers), and open-loop requests still queued."""
    from .worker import assemble_records

    sc = plan.scenario
    # each server's tags -> targets
    tag_to_target: list[dict[int, int]] = [{} for _ in servers]
    for i, item in got.items():
        for j, tag in item["tags"]:
            tag_to_target[j][tag] = i
    engines = [f"draft-{j}" if plan.many else "draft" for j in range(len(servers))]
    draft_rows = [interval_row(engine=engines[j], device=plan.draft_units[j], kind="draft",
                               target=tag_to_target[j].get(b.tag, -1), start=b.start - clock0, end=b.end - clock0)
                  for j, srv in enumerate(servers) for b in srv.intervals]
    # tags evicted for draft memory: instant "evict" intervals, as the simulator records them
    draft_rows += [interval_row(engine=engines[j], device=plan.draft_units[j], kind="evict",
                                target=tag_to_target[j].get(ev.tag, -1), start=ev.at - clock0, end=ev.at - clock0)
                   for j, srv in enumerate(servers) for ev in srv.evictions]
    draft_rows += [row for i in sorted(got) for row in got[i]["draft_intervals"]]
    parts = [got[i] for i in sorted(got)]
    arrivals, prompts = plan.arrivals, plan.prompts
    if arrivals is not None:
        # Conservation, as in the simulator: a request that arrived but no target took before the
        # end is in the table, queued (target -1, never started).
        queued = [RequestRow(request=rid, target=-1, prompt_tokens=len(prompts[rid][0]), output_tokens=prompts[rid][1],
                             t_arrival=arrivals[rid]).row()
                  for rid in range(issued, len(arrivals)) if arrivals[rid] <= t_elapsed]
        parts.append({"rounds": [], "requests": queued, "intervals": []})
    meta = run_meta(
        sc, source="real", t_end=t_elapsed,
        draft_engines=engines if plan.star else [f"draft-{i}" for i, _, _ in plan.instances] if plan.own else [],
        targets=[(i, name, g, plan.target_units[i]) for i, name, g in plan.instances],
        draft_device=plan.draft_units[0] if plan.star else None, draft_devices=plan.draft_units,
        # pipelining and re-pairings (a failure or saturation), as the simulator counts them
        pipeline=pipeline_totals([srv.pipeline_stats for srv in servers])
        if plan.star and sc.draft.pipeline else None,
        fabric_repairs=sum(item.get("repairs", 0) for item in got.values()) if plan.use_fabric else None,
        accepted_ranks=_accepted_ranks(servers) if plan.star and sc.real.temperature == 0 else None,
    )
    records = assemble_records(parts, meta, draft_rows)
    if plan.cut:  # arrivals would have gone on: the run lasts to its horizon, as a simulation does to duration_s
        records.meta["t_end"] = max(records.meta["t_end"], plan.horizon)
    return records


def _accepted_ranks(servers: list) -> dict[str, Any]:
    """The ranks the targets took, over every draft server (greedy rounds, the whole run: the
    counts are not cut to the measurement window)."""
    total = RankCounts()
    for srv in servers:
        total.merge(srv.drafter.ranks)
    return total.as_dict()


def _provenance(plan: _Plan, servers: list, got: dict, speeds: dict, ref_device: str, n_procs: int,
                wall_time_s: float, shared_units: list[str]) -> dict[str, Any]:
    import torch

    from ..models.reference import REFERENCE

    r, star, own = plan.scenario.real, plan.star, plan.own
    return provenance(
        plan.scenario, "real",
        torch=str(torch.__version__),
        temperature=r.temperature,
        models={role: _model_provenance(r, role, src, dev) for role, src, dev in
                (("target", plan.target_src, sorted(set(plan.target_dev))),
                 ("draft", plan.draft_src,
                  sorted({d for _, d in plan.draft_dev}) if star else sorted(set(plan.target_dev)) if own else []))
                if src is not None},
        processes={"targets": n_procs, "threads_each": r.threads,
                   "draft_servers": len(servers) if star else n_procs if own else 0,
                   # the cores each role ran on (read by the role itself) and the units whose
                   # roles took turns (declared resources: starsim.real.resources)
                   "cpus": {**{f"draft-{j}": srv.affinity for j, srv in enumerate(servers)},
                            **{f"target-{i}": got[i].get("affinity") for i in sorted(got)}},
                   "shared_units": shared_units},
        failures={str(i): got[i]["error"] for i in sorted(got) if got[i]["error"]},
        fallback_at_s={str(i): got[i]["fallback_at"] for i in sorted(got) if got[i]["fallback_at"] is not None},
        rejected_connections=[line for srv in servers for line in srv.rejected]
        + [line for i in sorted(got) for line in got[i]["rejected"]],
        faults=[f.model_dump() for f in r.faults],
        reference_matmul_s={**speeds, "what": REFERENCE, "threads": r.threads, "device": ref_device},
        wall_time_s=wall_time_s,
    )


def _start_faults(faults, servers, procs, clock0: float, failures=(), board=None) -> threading.Event:
    """Carry out the scenario's fault drills (``real.faults``) and draft server failures
    (``draft.fabric.failures``) at their times; returns an event that cancels the rest.
    A failed server is marked down on the fabric's load ``board`` (loads, alive) first, so
    that its targets, finding their connection closed, pair with a live one."""
    cancel = threading.Event()
    events = sorted([(f.at_s, f) for f in faults] + [(f.at_s, f) for f in failures], key=lambda e: e[0])

    def stop(js) -> None:
        if board is not None:
            loads, alive = board
            with loads.get_lock():
                for j in js:
                    alive[j] = 0
        for j in js:
            servers[j].close()

    def run() -> None:
        for at, f in events:
            if cancel.wait(max(0.0, clock0 + at - time.monotonic())):
                return
            kind = getattr(f, "kind", "fail_server")
            if kind == "stop_draft" and servers:
                log.warning("fault drill: stopping the draft server%s at %.3f s", "s" if len(servers) > 1 else "",
                            time.monotonic() - clock0)
                stop(range(len(servers)))
            elif kind == "fail_server":
                log.warning("draft server %d fails at %.3f s", f.server, time.monotonic() - clock0)
                stop([f.server])
            elif kind == "kill_target" and procs[f.target].is_alive():
                log.warning("fault drill: killing target %d at %.3f s", f.target, time.monotonic() - clock0)
                procs[f.target].kill()

    if events:
        threading.Thread(target=run, daemon=True, name="starsim-faults").start()
    return cancel


def _model_provenance(real, role: str, src: dict, devices: list[str]) -> dict[str, Any]:
    """What ran as ``role``: its source, devices, dtype and, for the offline pair, its weights' digest."""
    out = {**src, "devices": devices, "dtype": real.dtype}
    if real.pair is not None and (real.target_model if role == "target" else real.draft_model) is None:
        out["pair"] = real.pair
        out["weights_sha256"] = (pair_info(real.pair).get("weights_sha256") or {}).get(role)
    return out
