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
from typing import Any

from ..draft_state import pipeline_totals
from ..errors import StarsimError
from ..metrics import summarize
from ..records import RequestRow, interval_row
from ..result import Result
from ..run_meta import provenance, run_meta
from ..scenario import ClosedLoop, Scenario
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

log = logging.getLogger("starsim.execute")


def _check(scenario: Scenario) -> None:
    if scenario.real is None:
        raise StarsimError(f"{scenario.name}: execute needs a `real:` section (real.pair: a draft/target pair "
                           "directory; build one with `starsim models build-pair`)")
    if scenario.max_requests is None and scenario.duration_s is None:
        raise StarsimError("execute needs max_requests or duration_s")
    check_sources(scenario)


def _open_loop(scenario: Scenario, horizon: float) -> tuple[list[float], list[tuple[int, int]], bool]:
    """The simulator's open-loop requests for the scenario and seed, in request-id order:
    arrival times and ``(prompt, output)`` lengths, up to the budget and ``horizon``
    (inclusive, as in the simulator); and whether ``horizon`` cut the arrivals short."""

    times: list[float] = []
    lengths: list[tuple[int, int]] = []
    now = 0.0
    for t, p, o in workload_arrivals(scenario.workload, rng_for(scenario.seed, Stream.WORKLOAD)):
        if scenario.max_requests is not None and len(times) >= scenario.max_requests:
            break
        if t > now:  # the simulator's clock, bit for bit: SimPy's now + (t - now), never back in time
            now += t - now
        if now > horizon:
            return times, lengths, True
        times.append(now)
        lengths.append((p, o))
    return times, lengths, False


def _target_main(index: int, src: dict, device: str, dtype: str, unit: str, address: str | None, threads: int,
                 prompts, repeat: bool, budget, issued, horizon: float, ready, go, clock0, timeout_s: float,
                 results, link=None, seed: int = 0, temperature: float = 0.0, arrivals: list[float] | None = None,
                 own_draft: dict | None = None, qos: dict | None = None, pause=None,
                 fabric: dict | None = None, adaptive: tuple | None = None, taken=None) -> None:
    """One target process: load the model and connect, wait for the common start, then take
    requests until the budget ends or ``horizon`` seconds have passed.

    ``arrivals``: an open loop (request i arrives at ``arrivals[i]`` with ``prompts[i]``);
    None: the closed loop over ``prompts``. ``own_draft``: one_for_one, this target's draft
    (source, dtype, tree, policy, stop_draft times), served from this process. ``qos``: the
    target's ``weight`` and ``tpot_slo_s``, told to the draft server for its policy.
    ``pause``: a closed loop's think time between this target's requests (a timing spec),
    drawn from the simulator's own stream, so both pause alike for one seed. ``fabric``: several
    draft servers (``addresses``), the shared load board (``loads``, ``alive``; one lock), the
    ``pairing`` name and ``repair_queue``: the target pairs with one server at a time.
    ``adaptive``: the scenario's ``draft`` and this target's group, for its adaptive-speculation
    controller (the simulator's, costing rounds with the same models). ``taken``: a shared row
    per target, ``(request id, prompt tokens, output tokens, arrival)`` of the request in
    progress (id -1: none), so that a killed target's request is still in the requests table."""
    import torch

    from .models import eos_ids, load_model
    from .server import DraftClient, DraftServer
    from .speculation import Drafter
    from .worker import FabricClient, TargetWorker

    torch.set_num_threads(threads)
    error, worker, tag, client, model, server, seat = None, None, None, None, None, None, None
    try:
        model = load_model(src, "target", device, dtype)
        if own_draft is not None:
            # one_for_one: the draft lives with its target (the simulator puts it on the target's
            # unit), so it shares this process's device and threads, never another target's; the
            # target waits for each tree, so the two never compute at once.
            draft = load_model(own_draft["src"], "draft", device, own_draft["dtype"])
            server = DraftServer(Drafter(draft, *own_draft["tree"]), policy=own_draft["policy"],
                                 timeout_s=timeout_s).start()
            address = server.address
        delays = {}
        if link is not None:  # the simulator's link model, one random stream per direction
            from ..placement import link_time

            delays = {"delay_up": link_time(link.up, rng_for(seed, Stream.LINK_UP, index)),
                      "delay_down": link_time(link.down, rng_for(seed, Stream.LINK_DOWN, index))}
        qos = qos or {}
        info = {"index": index, **qos}
        if fabric is not None:  # a connection to every server now, the pairing at each request's start
            from ..pairing import make_pairing

            pairing = make_pairing(fabric["pairing"], len(fabric["addresses"]), rng_for(seed, Stream.PAIRING, index),
                                   loads=fabric["loads"], alive=fabric["alive"])
            seat = FabricClient(index, fabric["addresses"], pairing, fabric["loads"].get_lock(),
                                lambda a: DraftClient(a, timeout_s=timeout_s, info=info, **delays),
                                repair_queue=fabric["repair_queue"], seats=fabric["seats"])
            seat.connect_all()
        else:
            client = DraftClient(address, timeout_s=timeout_s, info=info, **delays) if address else None
            tag = client.tag if client else None
    except Exception as e:  # noqa: BLE001 - reported in the summary, the run goes on
        error = f"{type(e).__name__}: {e}"
    ready.put(index)
    go.wait()  # every process loaded and connected: the clock starts now for all
    try:
        if error is not None:
            raise RuntimeError(error)
        t0 = clock0.value
        deadline = t0 + horizon
        for at in own_draft["stop_at"] if server is not None else ():  # stop_draft drills: this target's own
            timer = threading.Timer(max(0.0, t0 + at - time.monotonic()), server.close)
            timer.daemon = True  # one not yet due is dropped when the process ends
            timer.start()
        controller = None
        if adaptive is not None:
            from ..adaptive import controller_for

            controller = controller_for(*adaptive)
        worker = TargetWorker(index, model, client, t0, device=unit, eos=eos_ids(model, src),
                              temperature=temperature, seed=seed, tpot_slo_s=qos.get("tpot_slo_s"), fabric=seat,
                              controller=controller, draft_index=index if server is not None else 0)
        served, limit = 0, budget if arrivals is None else len(arrivals)  # arrivals: within the budget
        think = None
        if pause is not None:

            think = pause.sampler(rng_for(seed, Stream.PAUSE, index))
        while time.monotonic() < deadline and (arrivals is not None or repeat or served < len(prompts)):
            with issued.get_lock():
                if limit is not None and issued.value >= limit:
                    break
                rid = issued.value
                issued.value += 1
            if arrivals is None:
                prompt, output = prompts[served % len(prompts)]
                if served and think is not None:  # as the simulator: the request is taken, then the pause
                    time.sleep(think(0.0, 0.0, 0.0))
                t_arrival = time.monotonic() - t0
            else:
                # Open loop: whoever asks first gets the next request and waits for it to arrive, as
                # the simulator's longest-idle target does; one that arrived while all were busy
                # queued meanwhile (its TTFT counts from arrival).
                prompt, output = prompts[rid]
                t_arrival = arrivals[rid]
                time.sleep(max(0.0, t0 + t_arrival - time.monotonic()))
            if taken is not None:
                taken[4 * index: 4 * index + 4] = [rid, len(prompt), output, t_arrival]
            worker.run_request(rid, prompt, output, t_arrival=t_arrival)
            if taken is not None:
                taken[4 * index] = -1
            served += 1
        worker.close()
    except Exception as e:  # noqa: BLE001 - reported in the summary, the run goes on
        error = error or f"{type(e).__name__}: {e}"
        if seat is not None:
            seat.close()  # its place on the load board is given back
    draft_rows, rejected = [], []
    if server is not None:
        server.close()
        draft_rows = [interval_row(engine=f"draft-{index}", device=unit, kind="draft", target=index,
                                   start=b.start - clock0.value, end=b.end - clock0.value) for b in server.intervals]
        rejected = list(server.rejected)
    rounds = worker.rounds if worker else []
    results.put({
        "index": index, "tag": tag, "error": error,
        # (server, tag) of each connection to the star's draft servers, and the moves between them
        "tags": seat.tags if seat is not None else [(0, tag)] if tag is not None and server is None else [],
        "repairs": seat.repairs if seat is not None else 0,
        "rounds": rounds, "requests": worker.requests if worker else [],
        "intervals": worker.intervals if worker else [],
        "fallback_at": worker.fallback_at if worker else None,
        "outputs": worker.outputs if worker else [],
        "draft_intervals": draft_rows, "rejected": rejected,
    })


def execute(scenario: Scenario) -> Result:
    """Run ``scenario`` for real (see the module docstring); returns the same Result as simulate."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _execute(scenario)
    finally:
        torch.set_num_threads(threads)  # the draft server's setting is this run's, not the caller's


def _execute(scenario: Scenario) -> Result:
    import torch

    from ..placement import place
    from .server import DraftServer
    from .speculation import Drafter
    from .worker import assemble_records

    _check(scenario)
    r = scenario.real
    wall0 = time.perf_counter()
    instances = scenario.target_instances()
    star, own = scenario.mode == "star", scenario.mode == "one_for_one"
    draft_units, target_units = place(scenario)
    draft_unit = draft_units[0] if draft_units else ""
    fab = scenario.draft.fabric
    many = star and len(draft_units) > 1  # the engines are named by server then, as the simulator names them
    use_fabric = star and (many or bool(fab.failures))
    target_src = role_source(r, "target")
    target_dev = [torch_device(scenario, u) for u in target_units]
    draft_dev = [(u, torch_device(scenario, u)) for u in draft_units] if star else []  # one_for_one: the targets'
    for unit, dev in sorted({*zip(target_units, target_dev), *draft_dev}):
        check_device(dev, f"devices: unit {unit}")
    horizon = min(scenario.duration_s if scenario.duration_s is not None else math.inf, r.max_wall_s)
    arrivals, lengths, cut = None, None, False
    if not isinstance(scenario.workload, ClosedLoop):
        arrivals, lengths, cut = _open_loop(scenario, horizon)
    prompts = build_prompts(scenario, tokenizer_encode(r), source_vocab(target_src, "target"), lengths)
    tree = scenario.draft.tree
    ctx = mp.get_context("spawn")
    # Rows come back through a multiprocessing queue: pickles between this run's own
    # processes, never input from the network (that is the protocol's job).
    results = ctx.Queue()
    issued = ctx.Value("i", 0)
    taken = ctx.Array("d", [-1.0, 0.0, 0.0, 0.0] * len(instances))  # see _target_main
    servers: list = []  # star: one DraftServer per draft unit, each with its own copy of the draft
    torch.set_num_threads(r.threads)
    draft_src = role_source(r, "draft") if star or own else None
    try:
        for unit in draft_units if star else ():
            dev = torch_device(scenario, unit)
            draft = load_model(draft_src, "draft", dev, resolve_dtype(r, draft_src, dev))
            servers.append(DraftServer(Drafter(draft, tree.top_k, tree.depth, tree.tokens),
                                       policy=scenario.draft.policy, timeout_s=r.timeout_s,
                                       batch_max=scenario.draft.batch.max,
                                       batch_window_s=scenario.draft.batch.window_s,
                                       memory_bytes=scenario.draft.memory_bytes,
                                       pipeline=scenario.draft.pipeline).start())
    except BaseException:
        for s in servers:
            s.close()
        raise
    server = servers[0] if servers else None
    board, fabric = None, None
    if use_fabric:
        # the load board: targets paired with each server, and whether it still serves; one lock
        loads = ctx.Array("i", len(servers))
        alive = ctx.Array("b", [1] * len(servers), lock=loads.get_lock())
        board = (loads, alive)
        seats = ctx.Array("i", [-1] * len(instances), lock=loads.get_lock())  # target -> its server (-1: none)
        fabric = {"addresses": [s.address for s in servers], "loads": loads, "alive": alive, "seats": seats,
                  "pairing": fab.pairing, "repair_queue": fab.repair_queue}
    ready, go = ctx.Queue(), ctx.Event()
    shared_clock0 = ctx.Value("d", 0.0)
    procs = []
    try:
        stop_at = [f.at_s for f in r.faults if f.kind == "stop_draft"]
        for i, _name, group in instances:
            own_draft = {"src": draft_src, "dtype": resolve_dtype(r, draft_src, target_dev[i]),
                         "tree": (tree.top_k, tree.depth, tree.tokens), "policy": scenario.draft.policy,
                         "stop_at": stop_at} if own else None
            p = ctx.Process(target=_target_main, name=f"starsim-target-{i}", args=(
                i, target_src, target_dev[i], resolve_dtype(r, target_src, target_dev[i]), target_units[i],
                server.address if server and not use_fabric else None, r.threads, prompts,
                getattr(scenario.workload, "repeat", False),
                scenario.max_requests, issued, horizon, ready, go, shared_clock0, r.timeout_s, results,
                # one_for_one has no wire in the simulator: its loopback gets no emulated link
                group.link if r.emulate_link and star else None, scenario.seed, r.temperature, arrivals, own_draft,
                {"weight": group.weight, "tpot_slo_s": group.tpot_slo_s},
                getattr(scenario.workload, "pause", None), fabric,
                (scenario.draft, group) if star and scenario.draft.adaptive.policy != "fixed" else None, taken))
            p.start()
            procs.append(p)
        # The run's clock starts when every target has loaded its model and connected, so
        # start-up is not counted as idle draft time.
        waiting, give_up = set(range(len(procs))), time.monotonic() + r.max_wall_s
        while waiting and time.monotonic() < give_up:
            try:
                waiting.discard(ready.get(timeout=0.5))
            except queue.Empty:
                waiting -= {i for i in waiting if procs[i].exitcode is not None}  # died while loading
        # The machine's speed on the calibration's reference kernel, before and after the run:
        # shared machines drift, and `starsim validate` sets it beside the profiles' own.
        from ..models.reference import REFERENCE, reference_speed

        ref_device = torch_device(scenario, draft_unit) if star else target_dev[0]
        speed_before = reference_speed(r.threads, ref_device)
        clock0 = shared_clock0.value = time.monotonic()
        go.set()
        drills = _start_faults(r.faults, servers, procs, clock0, fab.failures if star else [], board)
        got: dict[int, dict[str, Any]] = {}
        end_by = clock0 + r.max_wall_s + 60  # a worker finishes its request in progress after the deadline
        while len(got) < len(procs) and time.monotonic() < end_by:
            try:
                item = results.get(timeout=0.5)
                got[item["index"]] = item
            except queue.Empty:
                for i, p in enumerate(procs):  # killed before it reported: its rows are lost, the run goes on
                    if i not in got and p.exitcode not in (None, 0):
                        if fabric is not None:  # its load on the board goes with it
                            with fabric["loads"].get_lock():
                                j, fabric["seats"][i] = fabric["seats"][i], -1
                                if j >= 0:
                                    fabric["loads"][j] -= 1
                        # conservation: the request it had taken is in the table, unfinished
                        rid, prompt_len, output, arrival = taken[4 * i: 4 * i + 4]
                        lost = [RequestRow(request=int(rid), target=i, prompt_tokens=int(prompt_len),
                                           output_tokens=int(output), t_arrival=arrival).row()] if rid >= 0 else []
                        got[i] = {"index": i, "tag": None, "tags": [], "repairs": 0,
                                  "error": f"process ended with exit code {p.exitcode}",
                                  "rounds": [], "requests": lost, "intervals": [], "fallback_at": None, "outputs": [],
                                  "draft_intervals": [], "rejected": []}
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        t_elapsed = time.monotonic() - clock0
        speed_after = reference_speed(r.threads, ref_device)
        drills.set()  # drills not yet due are dropped
        for s in servers:
            s.close()
    except BaseException:  # Ctrl-C or a failure here: no target left waiting, no port left open
        go.set()
        for p in procs:
            if p.is_alive():
                p.kill()
        for s in servers:
            s.close()
        raise

    # each server's tags -> targets; its busy intervals as engine "draft" (one server) or "draft-J"
    tag_to_target: list[dict[int, int]] = [{} for _ in servers]
    for i, item in got.items():
        for j, tag in item["tags"]:
            tag_to_target[j][tag] = i
    engines = [f"draft-{j}" if many else "draft" for j in range(len(servers))]
    draft_rows = [interval_row(engine=engines[j], device=draft_units[j], kind="draft",
                               target=tag_to_target[j].get(b.tag, -1), start=b.start - clock0, end=b.end - clock0)
                  for j, srv in enumerate(servers) for b in srv.intervals]
    # tags evicted for draft memory: instant "evict" intervals, as the simulator records them
    draft_rows += [interval_row(engine=engines[j], device=draft_units[j], kind="evict",
                                target=tag_to_target[j].get(ev.tag, -1), start=ev.at - clock0, end=ev.at - clock0)
                   for j, srv in enumerate(servers) for ev in srv.evictions]
    draft_rows += [row for i in sorted(got) for row in got[i]["draft_intervals"]]
    parts = [got[i] for i in sorted(got)]
    if arrivals is not None:
        # Conservation, as in the simulator: a request that arrived but no target took before the
        # end is in the table, queued (target -1, never started).
        queued = [RequestRow(request=rid, target=-1, prompt_tokens=len(prompts[rid][0]), output_tokens=prompts[rid][1],
                             t_arrival=arrivals[rid]).row()
                  for rid in range(issued.value, len(arrivals)) if arrivals[rid] <= t_elapsed]
        parts.append({"rounds": [], "requests": queued, "intervals": []})
    meta = run_meta(
        scenario, source="real", t_end=t_elapsed,
        draft_engines=engines if star else [f"draft-{i}" for i, _, _ in instances] if own else [],
        targets=[(i, name, g, target_units[i]) for i, name, g in instances],
        draft_device=draft_unit if star else None, draft_devices=draft_units,
        # pipelining and re-pairings (a failure or saturation), as the simulator counts them
        pipeline=pipeline_totals([s.pipeline_stats for s in servers]) if star and scenario.draft.pipeline else None,
        fabric_repairs=sum(item.get("repairs", 0) for item in got.values()) if use_fabric else None,
    )
    records = assemble_records(parts, meta, draft_rows)
    if cut:  # arrivals would have gone on: the run lasts to its horizon, as a simulation does to duration_s
        records.meta["t_end"] = max(records.meta["t_end"], horizon)
    summary = summarize(records)
    summary["provenance"] = provenance(
        scenario, "real",
        torch=str(torch.__version__),
        temperature=r.temperature,
        models={role: _model_provenance(r, role, src, dev) for role, src, dev in
                (("target", target_src, sorted(set(target_dev))),
                 ("draft", draft_src,
                  sorted({d for _, d in draft_dev}) if star else sorted(set(target_dev)) if own else []))
                if src is not None},
        processes={"targets": len(procs), "threads_each": r.threads,
                   "draft_servers": len(servers) if star else len(procs) if own else 0},
        failures={str(i): got[i]["error"] for i in sorted(got) if got[i]["error"]},
        fallback_at_s={str(i): got[i]["fallback_at"] for i in sorted(got) if got[i]["fallback_at"] is not None},
        rejected_connections=[line for s in servers for line in s.rejected]
        + [line for i in sorted(got) for line in got[i]["rejected"]],
        faults=[f.model_dump() for f in r.faults],
        reference_matmul_s={"before": speed_before, "after": speed_after, "what": REFERENCE,
                            "threads": r.threads, "device": ref_device},
        wall_time_s=time.perf_counter() - wall0,
    )
    outputs = sorted((o for i in sorted(got) for o in got[i]["outputs"]), key=lambda o: o["request"])
    return Result(scenario=scenario, records=records, summary=summary, outputs=outputs)


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
