"""Replay: the simulator fed a real run's own measured service times and acceptance.

A profile-based prediction can miss a real run for two reasons: the model of the star is
wrong (queueing, placement, turns on a shared unit, the policy), or the profiles are wrong
today (calibrated on another day, another machine, at another speed). A replay takes the
second away. Every service time the simulator would draw from a profile or a constant is
taken instead from what the real run measured, in the order it measured them, for each
instance (kind ``replayed``): each target's verifies, prefills and decodes, its link hops
up and down, the server's parse and serialize of its messages, each draft engine's rounds
and its hand-offs from one queued task to the next, and each unit's turn handovers (from
the run's rounds and busy intervals). Each target accepts what it accepted in the real
run, round by round, so the replay runs the rounds the real run ran. What remains between
the replay and the real run is the model's own error. A closed loop's targets start when the
real ones took their first request (they connect a few ms apart, in whatever order).

The measured times already hold whatever slowed them down in the real run, such as the
server's message threads sharing the draft's core. So the replay runs them as plain delays:
the pools' ``cores`` (processor sharing) is switched off, while the units and their turns
stay as the scenario declares them. Serving targets (``max_seqs`` > 1) and batched
drafting are not replayed: their times depend on the batch, which a draw per role would
not follow; nor is pipelined drafting (which trees drafted ahead hit is not replayed).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .errors import StarsimError
from .metrics import hop_samples
from .records import Records
from .scenario import parse_device_ref

DIGITS = 7  # samples rounded to 0.1 us: far below any measured hop, and keeps the override short


def replay_refusal(scenario) -> str | None:
    """Why ``scenario`` cannot be replayed (one line), or None."""
    if any(g.serving is not None and g.serving.max_seqs > 1 for g in scenario.targets):
        return "serving targets (max_seqs > 1): a step's time depends on its batch, which a replay per role drops"
    if scenario.draft.batch.max > 1:
        return "batched drafting (draft.batch.max > 1): a round's time depends on its batch"
    if scenario.mode == "star" and scenario.draft.pipeline:  # a replay of its own run misses by 2% here
        return "pipelined drafting (draft.pipeline): a tree drafted ahead hits or misses; a replay does not follow it"
    if scenario.mode == "autoregressive":
        return "autoregressive mode has no draft to replay"
    return None


def _replayed(runs: list[np.ndarray]) -> str | None:
    """A ``replayed`` timing spec of per-instance times (None: no time at all)."""
    lists = [[float(x) for x in np.round(np.clip(np.asarray(r, float), 0.0, None), DIGITS) if np.isfinite(x)]
             for r in runs]
    if not any(lists):
        return None
    return json.dumps({"kind": "replayed", "runs": lists})


def _intervals_by(records: Records, kind: str, key: str, values: list) -> list[np.ndarray]:
    """The durations of the ``kind`` busy intervals whose ``key`` column is each of ``values``,
    each in the order they started."""
    iv = records.intervals
    iv = iv[(iv["kind"] == kind).to_numpy(bool)].sort_values("start", kind="stable")
    col, d = iv[key].to_numpy(), (iv["end"] - iv["start"]).to_numpy(float)
    return [d[col == v] for v in values]


def handovers(records: Records) -> dict[str, list[np.ndarray]]:
    """Per device pool, per unit (by its number), each measured turn handover in time order:
    how long after the unit's previous busy interval ended a role started that was waiting
    for the unit by then. A verify was waiting from its draft reply's arrival; a prefill or a
    decode from the end of its target's own previous interval there (its request before)."""
    r, iv = records.rounds, records.intervals
    unit = {t["index"]: t.get("device") for t in records.meta.get("targets", [])}
    spec = (r["draft"].to_numpy() >= 0) & np.isfinite(r["t_target_arrive"].to_numpy(float))
    # a verify's readiness: its reply's arrival (rounds and verify intervals share their start)
    arrive = dict(zip(zip(r["target"].to_numpy()[spec], r["t_verify_start"].to_numpy(float)[spec]),
                      r["t_target_arrive"].to_numpy(float)[spec]))
    out: dict[str, dict[int, np.ndarray]] = {}
    for u in sorted({d for d in unit.values() if d}):
        pool, number = parse_device_ref(u)
        on = iv[(iv["device"] == u).to_numpy(bool)].sort_values("start", kind="stable")
        tgt, start, end = on["target"].to_numpy(), on["start"].to_numpy(float), on["end"].to_numpy(float)
        last_own: dict[int, float] = {}
        ready = np.empty(len(on))
        for i, (t, s0, kind) in enumerate(zip(tgt, start, on["kind"].to_numpy())):
            ready[i] = arrive.get((t, s0), np.nan) if kind == "verify" else np.nan
            if not np.isfinite(ready[i]):
                ready[i] = last_own.get(t, 0.0)
            last_own[t] = end[i]
        prev = np.r_[-np.inf, np.maximum.accumulate(end)[:-1]] if len(end) else end
        waited = ready < prev
        out.setdefault(pool, {})[number or 0] = (start - prev)[waited]
    return {pool: [units.get(i, np.empty(0)) for i in range(max(units) + 1)] for pool, units in out.items()}


def turnarounds(records: Records, engines: int) -> list[np.ndarray]:
    """Per draft engine, in time order: how long each task started after the engine could
    have started it (after it was queued and the task before it ended): the server's hand-off
    of a task to its engine thread."""
    r = records.rounds
    keep = r["draft"].to_numpy() >= 0
    eng = r["draft"].to_numpy()[keep]
    s, e, q = (r[c].to_numpy(float)[keep] for c in ("t_draft_start", "t_draft_end", "t_enqueue"))
    out = []
    for j in range(engines):
        mine = eng == j
        order = np.argsort(s[mine], kind="stable")
        sj, ej, qj = s[mine][order], e[mine][order], q[mine][order]
        # one per task (a batch's rows share their start), queued when its first task was
        first = np.r_[True, sj[1:] != sj[:-1]] if len(sj) else np.empty(0, bool)
        sj, ej, qj = sj[first], ej[first], qj[first]
        free = np.r_[-np.inf, np.maximum.accumulate(ej)[:-1]] if len(ej) else ej
        out.append(np.maximum(sj - np.maximum(qj, free), 0.0))
    return out


def accepted_by_target(records: Records, n_targets: int) -> list[list[int]]:
    """Per target, the accepted draft tokens of its speculative rounds in the order it ran
    them (request by request; a request's ids grow in the order a target takes them)."""
    r = records.rounds
    spec = r[r["draft"].to_numpy() >= 0].sort_values(["target", "request", "round"], kind="stable")
    by = dict(iter(spec.groupby("target")["accepted"]))
    return [[int(k) for k in by[t]] if t in by else [] for t in range(n_targets)]


def replay_overrides(scenario, records: Records) -> tuple[list[str], dict[str, Any]]:
    """``--set`` overrides that make ``scenario`` a replay of the real run ``records`` (see
    the module docstring), and what each replayed field was fed (count and mean, seconds)."""
    why = replay_refusal(scenario)
    if why is not None:
        raise StarsimError(f"{scenario.name}: cannot replay {why}")
    sets: list[str] = []
    fed: dict[str, Any] = {}

    def put(path: str, runs: list[np.ndarray], wrap=None) -> None:
        spec = _replayed(runs)
        if spec is not None:
            sets.append(f"{path}={wrap(spec) if wrap else spec}")
            xs = np.concatenate(runs)
            fed[path] = {"n": int(len(xs)), "mean_s": float(np.mean(xs))}

    n = scenario.n_targets
    everyone = list(range(n))
    # per target, its rounds' hops in the order it ran them
    hops = [hop_samples(records, [t], whole_run=True) for t in everyone]
    engines = list(records.meta.get("draft_engines") or ["draft"])
    put("draft.round_time", _intervals_by(records, "draft", "engine", engines))
    if "draft.round_time" in fed:  # a whole measured round: no tree cost, no encode, no warm/cold curve on top
        sets += ["draft.time=null", "draft.encode_per_token_s=0", "draft.idle_slowdown=false"]
    put("draft.turnaround_time", turnarounds(records, len(engines)))
    if scenario.mode == "star":
        put("draft.parse_time", [h["parse_s"] for h in hops])
        put("draft.serialize_time", [h["serialize_s"] for h in hops])
    prefills = _intervals_by(records, "prefill", "target", everyone)
    decodes = _intervals_by(records, "decode", "target", everyone)
    first = 0
    for gi, g in enumerate(scenario.targets):
        mine = range(first, first + g.count)
        first += g.count
        only = lambda xs, mine=mine: [x if t in mine else np.empty(0) for t, x in enumerate(xs)]  # noqa: E731
        put(f"targets.{gi}.verify_time", only([h["verify_s"] for h in hops]))
        put(f"targets.{gi}.prefill_time", only(prefills))
        put(f"targets.{gi}.decode_time", only(decodes))
        if scenario.mode == "star":  # the hop as measured, the target's send and receive work in it
            # the target's own time from a round's end to its next send rides on the way up
            up = [h["link_up_s"] + np.nan_to_num(h["after_round_s"]) for h in hops]
            for way, runs in (("up", up), ("down", [h["link_down_s"] for h in hops])):
                put(f"targets.{gi}.link.{way}", only(runs), wrap=lambda spec: f"{{latency_s: 0, jitter: {spec}}}")
            sets += [f"targets.{gi}.send_time=0", f"targets.{gi}.receive_time=0"]
    sets += [f"devices.{name}.cores=null" for name, d in scenario.devices.items() if d.cores is not None]
    for pool, runs in handovers(records).items():
        put(f"devices.{pool}.handover_time", runs)
    accepted = accepted_by_target(records, scenario.n_targets)
    if all(accepted):  # every target speculated: each replays its own rounds' acceptance
        sets.append("acceptance=" + json.dumps({"kind": "replayed", "accepted": accepted}))
        fed["acceptance"] = {"rounds": [len(a) for a in accepted],
                             "mean_accepted": float(np.mean([k for a in accepted for k in a]))}
    return sets, fed


def first_starts(records: Records, n_targets: int) -> list[float]:
    """Per target, when it took its first request (0 for one that took none): the real run's
    targets connect a few ms apart, in whatever order, and a closed loop's phase follows."""
    q = records.requests
    q = q[q["target"].to_numpy() >= 0]
    first = q.groupby("target")["t_arrival"].min().to_dict()
    return [max(0.0, float(first.get(t, 0.0))) for t in range(n_targets)]


def replay(path, sets: list[str], records: Records):
    """Simulate the scenario at ``path`` (with ``sets``) as a replay of ``records``: a Result
    whose source is ``replay``, its provenance naming what each field was fed (``fields``)
    and the scenario it replays (``scenario``)."""
    from .scenario import ClosedLoop, load_scenario
    from .sim import simulate

    sc = load_scenario(path, sets)
    extra, fed = replay_overrides(sc, records)
    # a closed loop's targets start as the real ones did; an open loop's take arrivals as they come
    starts = first_starts(records, sc.n_targets) if isinstance(sc.workload, ClosedLoop) else None
    res = simulate(load_scenario(path, [*sets, *extra]), source="replay", starts=starts)
    # what each field was fed, when each target started, and the scenario as it was before (a
    # report groups the replay with it)
    res.summary["provenance"]["replay"] = {"fields": fed, "starts": starts, "scenario": sc.to_dict()}
    return res
