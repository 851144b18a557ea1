"""Closed-form model of a star: when one draft stays busy, and what each target then gets.

Assumptions (stated by ``starsim analyze``): mean times only (no variance, no bursts),
no co-location contention outside one_for_one mode, FIFO draft. Per target, one round
costs ``d`` on the draft engine and ``z = c + v`` on its own side (c: both link hops plus
parse/serialize, v: verification); per-request work (prefill, pauses, the first round's
prompt encode) is spread evenly over the request's rounds.

- Alone, a target's round cycle is ``T = d + z`` and it keeps the draft busy ``d / T``.
- With N identical targets: ``U(N) = min(1, N d / T)``; the draft saturates at
  ``N* = T / d = 1 + z / d``; beyond it each target's cycle stretches to ``N d``.
- Mixed targets: the draft cycle ``C`` solves ``sum_i d_i / max(T_i, C) = 1`` when the
  draft is overloaded; target i's cycle is ``max(T_i, C)``.
- Mean idle gap = idle time per draft task = ``(1 - U) / (draft tasks per second)``.
- ``mva_utilization`` gives the exact answer for exponential draft times (mean value
  analysis of the machine-repairman model), which shows the rounded knee real systems have.

:func:`closed_form` is vectorised with numpy over arrays of parameters (1e6 points in well
under a second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .acceptance import ByCategory
from .distributions import Dist
from .scenario import ClosedLoop, GammaArrivals, Poisson, Scenario, TargetGroup, TraceReplay
from .serving import chunk_shape, tree_shape
from .workload import load_azure_trace, prompt_categories, prompt_set


def closed_form(n, d, z, tokens_per_round=1.0, batch_times=None) -> dict[str, np.ndarray]:
    """Identical targets, closed loop, mean times. All arguments broadcast as numpy arrays.

    ``n`` targets, ``d`` draft seconds per round, ``z`` target-side seconds per round
    (network + verify + amortized prefill), ``tokens_per_round`` emitted per round.

    ``batch_times``: batched drafting, shape ``(..., K)``: a batch of k tasks takes
    ``batch_times[..., k - 1]`` (k = 1 is a plain round, ``d``). With batches of at most k
    the draft serves the n targets in ``floor(n / k)`` full batches and one of the rest a
    cycle, and a target's cycle is at least a full batch plus its side:
    ``max(floor(n / k) B(k) + B(n mod k), B(k) + z)``, at the best k <= n (the plain
    star's bound is k = 1).
    """
    n, d, z, m = (np.asarray(x, dtype=float) for x in (n, d, z, tokens_per_round))
    t_alone = d + z
    with np.errstate(divide="ignore", invalid="ignore"):
        util = np.minimum(1.0, n * d / t_alone)
        cycle = np.maximum(t_alone, n * d)
        if batch_times is not None:
            b = np.asarray(batch_times, dtype=float)
            b0 = np.concatenate([np.zeros(b.shape[:-1] + (1,)), b], axis=-1)  # B(0) = 0: no partial batch
            for k in range(2, b.shape[-1] + 1):
                bk = b[..., k - 1]
                full, rest = np.floor(n / k), n - k * np.floor(n / k)
                part = np.take_along_axis(b0, np.broadcast_to(rest, bk.shape).astype(int)[..., None], -1)[..., 0]
                busy = full * bk + part
                ck = np.where(k <= n, np.maximum(busy, bk + z), np.inf)
                util = np.where(ck < cycle, np.minimum(1.0, busy / ck), util)
                cycle = np.minimum(cycle, ck)
        n_star = t_alone / d
        tasks_per_s = n / cycle
        idle_gap = (1.0 - util) / tasks_per_s
    return {
        "cycle_s": cycle,
        "draft_utilization": util,
        "n_saturation": n_star,
        "draft_idle_gap_mean_s": idle_gap,
        "throughput_tokens_per_s": tasks_per_s * m,
        "per_target_tokens_per_s": m / cycle,
        "tpot_s": cycle / m,
    }


def mva_utilization(n, d, z) -> np.ndarray:
    """Exact draft utilization for exponential draft times (any think-time law), by MVA.

    Vectorised over arrays ``n`` (ints), ``d``, ``z``; iterates up to ``max(n)``.
    """
    n, d, z = np.broadcast_arrays(np.asarray(n, dtype=int), np.asarray(d, float), np.asarray(z, float))
    q = np.zeros(n.shape)
    x = np.zeros(n.shape)
    for k in range(1, int(n.max(initial=0)) + 1):
        r = d * (1.0 + q)
        xk = k / (r + z)
        active = k <= n
        x = np.where(active, xk, x)
        q = np.where(active, xk * r, q)
    return x * d


# --------------------------------------------------------------------------- from a scenario


@dataclass
class TargetDemand:
    """Mean per-round demands of one target (seconds), as the closed form sees them."""

    name: str
    d: float  # draft engine seconds per round (per-request encode amortized)
    z: float  # target-side seconds per round: links, parse/serialize, verify, prefill, pause
    tokens_per_round: float  # emitted tokens per round, first (prefill) token amortized
    rounds_per_request: float
    link_s: float
    verify_s: float
    overhead_s: float  # per-request work outside the decode loop (prefill, pause), per round
    decode_tokens_per_round: float  # tokens per round after the first token
    batch: float = 1.0  # sequences per step (a serving target); the per-round figures are the step's


def _mean_rounds(output: float, acc_marginal: list[float]) -> float:
    """Expected rounds to emit ``output - 1`` tokens, ``k + 1`` per round (capped at the end)."""
    need = max(0.0, output - 1.0)
    if need == 0:
        return 0.0
    pk = np.r_[1.0, acc_marginal] - np.r_[acc_marginal, 0.0]  # P(k accepted), k = 0..D
    x = np.arange(1, len(pk) + 1)  # tokens per round = k + 1
    m = float((pk * x).sum())
    if np.count_nonzero(pk > 1e-12) == 1:
        return math.ceil(need / m)
    # renewal theory (lattice): mean overshoot past the need is (E[X^2] - m) / (2m)
    return (need + (float((pk * x * x).sum()) - m) / (2 * m)) / m


def _lengths(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths the closed form averages over."""
    from .streams import Stream, rng_for  # same draws as the simulator

    w = scenario.workload
    if isinstance(w, ClosedLoop):
        pairs = prompt_set(w, rng_for(scenario.seed, Stream.WORKLOAD))
        return np.array([p for p, _ in pairs], float), np.array([o for _, o in pairs], float)
    if isinstance(w, TraceReplay):
        df = load_azure_trace(w.path).iloc[w.start_row:]
        if w.max_rows:
            df = df.iloc[: w.max_rows]
        p, o = df["prompt_tokens"].to_numpy(float), df["output_tokens"].to_numpy(float)
        if w.max_prompt_tokens:
            p = np.minimum(p, w.max_prompt_tokens)
        if w.max_output_tokens:
            o = np.minimum(o, w.max_output_tokens)
        return p, o
    return (np.array([max(1.0, w.prompt_tokens.mean())]), np.array([max(1.0, w.output_tokens.mean())]))


def mean_context(scenario: Scenario) -> float:
    """The mean context of a round over the workload's requests: each request's context grows
    linearly from its prompt + 1 to its prompt + output."""
    prompts, outputs = _lengths(scenario)
    return float(np.mean(prompts + 1 + (outputs - 1) / 2.0))


def _mean(spec: Dist, tokens=0.0, context=0.0, depth=0.0) -> float:
    return float(spec.mean(tokens, context, depth))


def serving_batch(scenario: Scenario, g: TargetGroup) -> float:
    """Sequences per step of a serving target in steady state, at most ``max_seqs`` and what KV
    holds (each request's whole length and a step's tokens: exact under ``on_kv_full: wait``,
    the no-preemption bound under ``preempt``). A closed loop: its users. An open loop: by
    Little's law, the target's share of the arrival rate times a request's time at that batch
    (its rounds, each the star's cycle), found by fixed-point iteration; at the cap when it
    overloads."""
    sv, w = g.serving, scenario.workload
    cap = float(sv.max_seqs)
    if sv.kv_tokens is not None:
        prompts, outputs = _lengths(scenario)
        per_round = scenario.draft.tree.tokens + 1 if scenario.mode != "autoregressive" else 1
        cap = min(cap, max(1, int(sv.kv_tokens // float(np.mean(prompts + outputs) + per_round))))
    if isinstance(w, ClosedLoop):
        return min(float(w.concurrency), cap)
    rate = _arrival_rate(scenario)
    if rate is None:
        return cap
    share = rate / scenario.n_targets  # a router (or the fleet queue) spreads arrivals evenly
    # a star's draft serves its targets in turn: a cycle is at least their draft times (closed_form)
    per_server = math.ceil(scenario.n_targets / scenario.draft.fabric.servers) if scenario.mode == "star" else 1
    b = 1.0
    for _ in range(100):
        dem = _serving_demand(scenario, "", g, b)
        cycle = float(closed_form(per_server, dem.d, dem.z)["cycle_s"])
        # requests in the target: the arrival share times a request's time (rounds x the cycle)
        nxt = min(cap, max(1.0, share * dem.rounds_per_request * cycle))
        if abs(nxt - b) < 1e-3 * b:
            return nxt
        b = 0.5 * (b + nxt)  # damped: a request's time grows with the batch
    return b


def _serving_demand(scenario: Scenario, name: str, g: TargetGroup, batch: int) -> TargetDemand:
    """:func:`target_demand` of a serving target priced by its ``step_time``: ``batch``
    sequences in lockstep (a closed loop's users start together, so their prefills share a
    step, chunked to the budget, and their rounds share the rest); the star's draft request
    carries all of them, drafted as one batched round."""
    dr, tree, sv, mode = scenario.draft, scenario.draft.tree, g.serving, scenario.mode
    step, b = sv.step_time.mean_fn(), float(batch)
    spec = mode != "autoregressive"
    q = tree.tokens + 1 if spec else 1
    marg = marginal(scenario, tree.shape()) if spec else []
    prompts, outputs = _lengths(scenario)
    w = scenario.workload
    pause = _mean(w.pause) if isinstance(w, ClosedLoop) and w.pause is not None else 0.0
    tot = dict(d=0.0, z=0.0, rounds=0.0, link=0.0, verify=0.0, overhead=0.0, tokens=0.0)
    for p, o in zip(prompts, outputs):
        ctx_mid = p + 1 + (o - 1) / 2.0
        # the batch's prompts, b p tokens, in steps of the budget; their attention and last
        # tokens' logits spread over those steps in proportion
        chunk = min(b * p, sv.max_batched_tokens or math.inf)
        chunks = math.ceil(b * p / chunk) if p else 0
        whole = chunk_shape(p, 0.0, True).times(b)
        prefill = sum(step(whole.times(min(chunk, b * p - k * chunk) / (b * p))) for k in range(chunks))
        r = _mean_rounds(o, marg) if spec else max(0.0, o - 1.0)
        m = (o - 1) / r if r else 1.0
        v_req = r * step(tree_shape(q, ctx_mid).times(b))
        link = d_req = 0.0
        if spec and r:
            later = m if dr.prefix_cache else ctx_mid
            d_req = _draft_batch(dr, b, p + 1, ctx_mid) + (r - 1) * _draft_batch(dr, b, later, ctx_mid)
        if mode == "star" and r:
            hidden = dr.needs_hidden_states
            head = g.payload.header_bytes
            up = g.payload.bytes_up(int(round(b * m)), hidden)
            first_up = g.payload.bytes_up(int(b * (p + 1)), hidden)
            down = b * g.payload.bytes_down(tree.tokens) - (b - 1) * head
            per_round = g.link.up.mean_time(up) + g.link.down.mean_time(down)
            per_round += _mean(dr.parse_time) + _mean(dr.serialize_time) + _mean(g.send_time) + _mean(g.receive_time)
            link = r * per_round + g.link.up.mean_time(first_up) - g.link.up.mean_time(up)
        tot["d"] += d_req
        tot["z"] += prefill + pause + link + v_req
        tot["overhead"] += prefill + pause
        tot["rounds"] += r
        tot["link"] += link
        tot["verify"] += v_req
        tot["tokens"] += b * o
    rounds = max(tot["rounds"], 1e-12)
    return TargetDemand(
        name=name, d=tot["d"] / rounds, z=tot["z"] / rounds, tokens_per_round=tot["tokens"] / rounds,
        decode_tokens_per_round=(tot["tokens"] - b * len(prompts)) / rounds, overhead_s=tot["overhead"] / rounds,
        rounds_per_request=rounds / len(prompts), link_s=tot["link"] / rounds, verify_s=tot["verify"] / rounds,
        batch=b)


def _draft_batch(dr, b: float, new: float, ctx: float) -> float:
    """One draft round for ``b`` sequences that each encode ``new`` tokens (as the
    simulator's engine prices it: a plain round for one, ``batch.time`` for more)."""
    if b <= 1:
        return dr.mean_round(new, ctx)
    depth = dr.tree.depth
    t = _mean(dr.batch.time, b, ctx, depth) + dr.encode_per_token_s * b * new
    if dr.round_time is not None and new > 1:
        t += b * max(0.0, _mean(dr.round_time, new, ctx, depth) - _mean(dr.round_time, 1, ctx, depth))
    return t


def marginal(scenario: Scenario, shape) -> list[float]:
    """The acceptance curve of a round of tree ``shape``; acceptance by category: the mix of
    the prompt set's categories over rounds (each prompt is walked alike, and a request takes
    about ``output / (1 + mean accepted)`` rounds: category ``c`` weighs the sum of that over
    its prompts)."""
    acc = scenario.acceptance
    if not isinstance(acc, ByCategory):
        return acc.marginal(shape)
    cats = prompt_categories(scenario.workload)
    outputs = _lengths(scenario)[1]
    out = {c: 0.0 for c in dict.fromkeys(cats)}
    for c, o in zip(cats, outputs):
        out[c] += o
    return acc.marginal(shape, {c: o / (1.0 + sum(acc.model(c).marginal(shape))) for c, o in out.items()})


def target_demand(scenario: Scenario, name: str, g: TargetGroup) -> TargetDemand:
    if g.serving is not None and g.serving.step_time is not None:
        return _serving_demand(scenario, name, g, serving_batch(scenario, g))
    dr = scenario.draft
    tree = dr.tree
    marg = marginal(scenario, tree.shape())
    prompts, outputs = _lengths(scenario)
    mode = scenario.mode
    w = scenario.workload
    pause = _mean(w.pause) if isinstance(w, ClosedLoop) and w.pause is not None else 0.0
    d_tot = z_tot = rounds_tot = link_tot = verify_tot = overhead_tot = 0.0
    tokens_tot = 0.0
    for p, o in zip(prompts, outputs):
        ctx_mid = p + 1 + (o - 1) / 2.0  # context grows linearly through the request
        prefill = _mean(g.prefill_time, p)
        if mode == "autoregressive":
            steps = o - 1
            dec = g.decode_time or g.verify_time
            z_tot += prefill + pause + steps * _mean(dec, 1, ctx_mid)
            overhead_tot += prefill + pause
            rounds_tot += steps
            verify_tot += steps * _mean(dec, 1, ctx_mid)
            tokens_tot += o
            continue
        r = _mean_rounds(o, marg)
        m = (o - 1) / r if r else 1.0
        # The first round encodes the prompt (+1); later ones the m tokens the last round
        # emitted with a prefix cache, the whole context without.
        later = m if dr.prefix_cache else ctx_mid
        d_req = dr.mean_round(p + 1, ctx_mid) + (r - 1) * dr.mean_round(later, ctx_mid) if r else 0.0
        v_req = r * _mean(g.verify_time, tree.tokens + 1, ctx_mid, tree.depth)
        if mode == "star":
            up_bytes = g.payload.bytes_up(int(round(m)), dr.needs_hidden_states)
            first_up = g.payload.bytes_up(int(p + 1), dr.needs_hidden_states)
            down_bytes = g.payload.bytes_down(tree.tokens)
            per_round = g.link.up.mean_time(up_bytes) + g.link.down.mean_time(down_bytes)
            per_round += _mean(dr.parse_time) + _mean(dr.serialize_time) + _mean(g.send_time) + _mean(g.receive_time)
            link = r * per_round + (g.link.up.mean_time(first_up) - g.link.up.mean_time(up_bytes) if r else 0.0)
        else:
            link = 0.0
        d_tot += d_req
        z_tot += prefill + pause + link + v_req
        overhead_tot += prefill + pause
        rounds_tot += r
        link_tot += link
        verify_tot += v_req
        tokens_tot += o
    rounds_tot = max(rounds_tot, 1e-12)
    return TargetDemand(
        name=name,
        d=d_tot / rounds_tot,
        z=z_tot / rounds_tot,
        tokens_per_round=tokens_tot / rounds_tot,
        decode_tokens_per_round=(tokens_tot - len(prompts)) / rounds_tot,
        overhead_s=overhead_tot / rounds_tot,
        rounds_per_request=rounds_tot / len(prompts),
        link_s=link_tot / rounds_tot,
        verify_s=verify_tot / rounds_tot,
    )


def _draft_cycle(d: np.ndarray, t: np.ndarray) -> float:
    """The C with ``sum d_i / max(t_i, C) = 1`` (draft overloaded), by bisection."""
    lo, hi = 0.0, float(d.sum() + t.max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if (d / np.maximum(t, mid)).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return hi


# what the closed form leaves to the simulator (reported with every analysis)
ASSUMPTIONS = (
    "mean times only: no variance, no bursts (random times queue more near N*)",
    "FIFO draft engine; one outstanding task per target",
    "no contention between co-located instances (except one_for_one, where draft and "
    "verify share the target's device)",
    "per-request work (prefill, pauses, the first round's prompt encode) spread over rounds",
    "one fixed tree per round, drafted one target at a time: batched drafting, adaptive depth, "
    "pipelined trees and draft memory limits are the simulator's",
    "several draft servers: target i on server i mod M, none failing (draft.fabric)",
)


SERVING_ASSUMPTION = ("serving targets: B sequences per step in lockstep (B: the users per target, or an open "
                      "loop's arrivals times a request's time by Little's law, up to max_seqs and what KV holds), "
                      "their prompts prefilled in steps of their own (chunked to the budget); users out of step "
                      "mix prefills into decode steps, which this does not price")


def _cycles(scenario: Scenario, d: np.ndarray, z: np.ndarray):
    """Each target's round cycle, and the draft's utilization, load, saturation point and (one
    star of identical targets) exact MVA utilization, for the scenario's mode."""
    n, t_alone = len(d), d + z
    if scenario.mode == "star":
        # M-for-N: target i on server i mod M (static pairing; what least-loaded pairing
        # makes too when targets arrive in order), each server a star of its own
        servers = scenario.draft.fabric.servers
        cycle, utils, loads = np.empty(n), [], []
        for j in range(min(servers, n)):
            on = np.arange(j, n, servers)
            lj = float((d[on] / t_alone[on]).sum())
            cycle[on] = np.maximum(t_alone[on], _draft_cycle(d[on], t_alone[on]) if lj > 1.0 else 0.0)
            utils.append(min(1.0, float((d[on] / cycle[on]).sum())))
            loads.append(lj)
        utils += [0.0] * (servers - len(utils))  # servers without targets idle
        load = float(max(loads))
        identical = np.allclose(d, d[0]) and np.allclose(z, z[0])
        util_mva = float(mva_utilization(n, d.mean(), z.mean())) if identical and servers == 1 else None
        return cycle, float(np.mean(utils)), load, n / load if load > 0 else math.inf, util_mva
    if scenario.mode == "one_for_one":
        util = float((d / t_alone).mean())  # each draft is private: no queueing, but it shares the target's device
        return t_alone, util, util, math.inf, None
    return z.copy(), None, 0.0, math.inf, None


def _arrival_rate(scenario: Scenario) -> float | None:
    """An open loop's requests per second (a trace's own, stretched by ``time_scale``); None
    for a closed loop or a trace too short to have one."""
    w = scenario.workload
    if isinstance(w, (Poisson, GammaArrivals)):
        return w.rate_per_s
    if not isinstance(w, TraceReplay):
        return None
    t = load_azure_trace(w.path)["t"].to_numpy()[w.start_row:]
    if w.max_rows:
        t = t[: w.max_rows]
    span = (t[-1] - t[0]) * w.time_scale if len(t) > 1 else 0.0
    return (len(t) - 1) / span if span > 0 else None


def analyze(scenario: Scenario) -> dict[str, Any]:
    """Closed-form predictions for a scenario, in the same keys as ``summary.json`` where
    they overlap, plus the saturation point and the per-target latencies."""
    insts = scenario.target_instances()
    demands = {}
    for _, name, g in insts:  # identical groups share one computation
        key = id(g)
        if key not in demands:
            demands[key] = target_demand(scenario, g.name or name.rsplit("-", 1)[0], g)
    per = [demands[id(g)] for _, _, g in insts]
    n = len(per)
    d = np.array([p.d for p in per])
    z = np.array([p.z for p in per])
    m = np.array([p.tokens_per_round for p in per])
    t_alone = d + z
    mode = scenario.mode
    cycle, util, load, n_star, util_mva = _cycles(scenario, d, z)

    tasks_per_s = float((1.0 / cycle).sum()) if mode != "autoregressive" else 0.0
    throughput = float((m / cycle).sum())
    offered = None
    if mode != "autoregressive":
        # Open loop: the system can do at most the closed-loop rate; it does the offered rate.
        rate = _arrival_rate(scenario)
        if rate is not None:
            offered = rate * float(np.mean(_lengths(scenario)[1]))
            if offered < throughput:
                scale = offered / throughput
                throughput, tasks_per_s = offered, tasks_per_s * scale
                util = util * scale if util is not None else None

    idle_gap = None
    if util is not None and tasks_per_s > 0:
        if mode == "one_for_one":
            idle_gap = float(((1.0 - d / cycle) * cycle).mean())
        else:
            idle_gap = max(0.0, 1.0 - util) / tasks_per_s
            idle_gap = 0.0 if idle_gap < 1e-12 else idle_gap  # saturated: no rounding residue
    # TPOT: a decode round takes the cycle minus the per-request work spread over it (weighted
    # by request rate below: the summary's TPOT is a mean over requests)
    overhead = np.array([p.overhead_s for p in per])
    batch = np.array([p.batch for p in per])
    m_dec = np.array([max(p.decode_tokens_per_round, 1e-12) for p in per]) / batch  # per sequence
    tpot = (cycle - overhead) / m_dec
    request_rate = np.array([p.batch / (c * p.rounds_per_request) if p.rounds_per_request else 0.0
                             for c, p in zip(cycle, per)])
    per_target = [
        {
            "target": i,
            "name": name,
            "draft_s": float(p.d),
            "link_s": float(p.link_s),
            "verify_s": float(p.verify_s),
            "cycle_alone_s": float(t_alone[i]),
            "cycle_s": float(cycle[i]),
            "tokens_per_s": float(m[i] / cycle[i]),
            "tpot_below_saturation_s": float((t_alone[i] - p.overhead_s) / m_dec[i]),
            "batch": float(p.batch),
            "tpot_s": float(tpot[i]),
            "rounds_per_request": float(p.rounds_per_request),
        }
        for (i, name, _), p in zip(insts, per)
    ]
    return {
        "draft_utilization": util,
        "draft_utilization_mva": util_mva,
        "draft_load": load,
        "n_saturation": n_star,
        "saturated": bool(mode == "star" and load > 1.0),
        "draft_idle_gap_mean_s": idle_gap,
        "throughput_tokens_per_s": throughput,
        "offered_tokens_per_s": offered,
        "draft_tasks_per_s": tasks_per_s if mode != "autoregressive" else None,
        "mean_accepted_tokens": float(1.0 + sum(marginal(scenario, scenario.draft.tree.shape())))
        if mode != "autoregressive" else 1.0,
        # TPOT is averaged over requests, so weight each target by its request rate
        "tpot_mean_s": float(np.average(tpot, weights=request_rate)) if request_rate.sum() > 0 else None,
        "n_targets": n,
        # the system's rate shared out: also right when an open loop's offered load caps it
        "target_tokens_per_s_mean": float(throughput / n) if n and throughput is not None else None,
        "per_target": per_target,
        "assumptions": list(ASSUMPTIONS) + ([SERVING_ASSUMPTION] if any(g.serving is not None and
                                                                       g.serving.step_time is not None
                                                                       for g in scenario.targets) else []),
    }
