"""Every number of a run, derived once from the three record tables.

Definitions (seconds; fractions in 0..1), all over the measurement window
``[warmup_s, t_end - cooldown_s]``:

- **utilization**: time-weighted busy fraction of the draft engine(s), from the union of
  busy intervals clipped to the window (averaged over engines in one_for_one mode);
- **idle gap**: for consecutive draft tasks of one engine, start of the next minus end of
  the previous (zero when back to back; the StarSD authors' definition), for gaps that
  start and end inside the window;
- **idle ratio** of a window of ``window_s``: idle / (idle + busy) inside it; the summary
  gives the mean over the full windows;
- **throughput**: tokens emitted inside the window (round tokens at verify end, the
  prefill's first token at first-token time) per second of window;
- **TTFT / TPOT**: over requests that arrive and finish inside the window;
- **queue wait**: draft start minus enqueue, for rounds whose draft starts in the window.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .records import Records


def _f(x: Any) -> float | None:
    """JSON-safe float: NaN/inf -> None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(a) -> float | None:
    a = np.asarray(a, dtype=float)
    return _f(a.mean()) if a.size else None


def cv(a) -> float | None:
    """Coefficient of variation (std / mean): how steady a time is, whatever its scale."""
    a = np.asarray(a, dtype=float)
    return float(a.std() / a.mean()) if a.size and a.mean() > 0 else None


def _pct(a, q: float) -> float | None:
    a = np.asarray(a, dtype=float)
    return _f(np.percentile(a, q)) if a.size else None


def merge_intervals(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals as sorted, disjoint ``(starts, ends)``."""
    if len(start) == 0:
        return np.asarray(start, float), np.asarray(end, float)
    order = np.argsort(start, kind="stable")
    s, e = np.asarray(start, float)[order], np.asarray(end, float)[order]
    run_max = np.maximum.accumulate(e)
    new = np.ones(len(s), bool)
    new[1:] = s[1:] > run_max[:-1]
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, len(s) - 1]
    return s[first], run_max[last]


def busy_curve(start: np.ndarray, end: np.ndarray):
    """``B(t)``: busy time in ``[0, t]`` for the union of the intervals (vectorised in t)."""
    s, e = merge_intervals(start, end)
    if len(s) == 0:
        return lambda t: np.zeros_like(np.asarray(t, float))
    lengths = e - s
    before = np.r_[0.0, np.cumsum(lengths)[:-1]]
    xp = np.column_stack([s, e]).ravel()
    fp = np.column_stack([before, before + lengths]).ravel()
    return lambda t: np.interp(t, xp, fp)


def idle_gaps(start: np.ndarray, end: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Gaps between consecutive tasks of one engine, inside ``[t0, t1]``."""
    if len(start) < 2:
        return np.empty(0)
    order = np.argsort(start, kind="stable")
    s, e = np.asarray(start, float)[order], np.asarray(end, float)[order]
    prev_end = np.maximum.accumulate(e)[:-1]
    nxt = s[1:]
    gaps = np.maximum(0.0, nxt - prev_end)
    keep = (prev_end >= t0) & (nxt <= t1)
    return gaps[keep]


def window_bounds(meta: dict) -> tuple[float, float]:
    t_end = float(meta["t_end"])
    t0 = float(meta.get("warmup_s", 0.0))
    t1 = t_end - float(meta.get("cooldown_s", 0.0))
    if t1 <= t0:  # run shorter than its warm-up: measure everything rather than nothing
        t0, t1 = 0.0, t_end
    return t0, t1


def engine_stats(iv: pd.DataFrame, t0: float, t1: float, window_s: float) -> dict[str, Any]:
    """Utilization, idle gaps and idle ratios of one engine's busy intervals."""
    return _engine_stats(iv["start"].to_numpy(float), iv["end"].to_numpy(float), t0, t1, window_s)


def _engine_stats(s: np.ndarray, e: np.ndarray, t0: float, t1: float, window_s: float) -> dict[str, Any]:
    B = busy_curve(s, e)
    span = t1 - t0
    busy = float(B(t1) - B(t0)) if span > 0 else 0.0
    n_win = int(math.floor(span / window_s + 1e-9)) if span > 0 else 0
    edges = t0 + window_s * np.arange(n_win + 1)
    ratios = 1.0 - np.diff(B(edges)) / window_s if n_win else np.empty(0)
    return {
        "busy_s": busy,
        "utilization": busy / span if span > 0 else float("nan"),
        "gaps": idle_gaps(s, e, t0, t1),
        "idle_ratios": np.clip(ratios, 0.0, 1.0),
        "window_edges": edges,
    }


def rows_by(keys: pd.Series | np.ndarray, values: list) -> list[np.ndarray]:
    """For each of ``values``, the positions of the rows whose key equals it, in table
    order: one stable sort of the keys instead of one boolean filter per value (a run has
    up to hundreds of targets). Selecting with them gives what ``df[df[key] == v]`` gives."""
    if not pd.api.types.is_numeric_dtype(keys.dtype):  # strings (engine names): sort their codes
        codes, uniques = pd.factorize(keys)
        index = {u: i for i, u in enumerate(uniques)}
        keys, values = codes, [index.get(v, -2) for v in values]  # -2: matches no row
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    lo = np.searchsorted(ordered, values, side="left")
    hi = np.searchsorted(ordered, values, side="right")
    return [order[a:b] for a, b in zip(lo, hi)]


def _draft_intervals(intervals: pd.DataFrame):
    """``(engine, start, end)`` of the draft tasks, in table order: only the columns used,
    not a filtered copy of the whole table."""
    is_draft = (intervals["kind"] == "draft").to_numpy(bool)
    engine = intervals["engine"].array[is_draft]
    return engine, intervals["start"].to_numpy(float)[is_draft], intervals["end"].to_numpy(float)[is_draft]


def _engine_intervals(engine, start: np.ndarray, end: np.ndarray, engines: list[str]) -> list[tuple]:
    """Each engine's (start, end) arrays, in table order."""
    return [(start[rows], end[rows]) for rows in rows_by(engine, engines)]


def draft_engine_stats(records: Records, drafts: tuple | None = None) -> list[dict[str, Any]]:
    """Per draft engine (``meta["draft_engines"]`` order), in the measurement window: busy
    time, utilization, idle gaps, idle ratio per window (:func:`engine_stats`). ``drafts``:
    the draft intervals (:func:`_draft_intervals`), when the caller has them already."""
    meta = records.meta
    t0, t1 = window_bounds(meta)
    engines = meta.get("draft_engines", [])
    drafts = drafts if drafts is not None else _draft_intervals(records.intervals)
    return [_engine_stats(s, e, t0, t1, float(meta["window_s"])) for s, e in _engine_intervals(*drafts, engines)]


def idle_gaps_all(records: Records) -> np.ndarray:
    """Every draft idle gap in the window, over all draft engines (the summary's idle gaps)."""
    gaps = [st["gaps"] for st in draft_engine_stats(records)]
    return np.concatenate(gaps) if gaps else np.empty(0)


def draft_task_times(records: Records, drafts: tuple | None = None) -> np.ndarray:
    """Busy time of each draft task that starts in the window (the summary's draft_task_time_*)."""
    t0, t1 = window_bounds(records.meta)
    _, start, end = drafts if drafts is not None else _draft_intervals(records.intervals)
    keep = (start >= t0) & (start < t1)
    return end[keep] - start[keep]


def round_times(records: Records) -> np.ndarray:
    """Send-to-verified time of each speculative round that ends in the window (round_time_*)."""
    t0, t1 = window_bounds(records.meta)
    r = records.rounds
    ve, send, draft = (r[c].to_numpy() for c in ("t_verify_end", "t_send", "draft"))
    keep = (ve >= t0) & (ve <= t1) & (draft >= 0)
    return (ve[keep] - send[keep]).astype(float)


def jain_index(rates) -> float | None:
    """Jain's fairness index of per-target rates: 1 when all are equal, 1/N when one gets all."""
    x = np.asarray([v for v in rates if v is not None], dtype=float)
    if x.size == 0 or not np.any(x > 0):
        return None
    return float(x.sum() ** 2 / (x.size * (x**2).sum()))


def idle_ratio_series(records: Records) -> pd.DataFrame:
    """Idle ratio per window and per draft engine: columns engine, t_start, idle_ratio."""
    engines = records.meta.get("draft_engines", [])
    frames = [pd.DataFrame({"engine": eng, "t_start": st["window_edges"][:-1], "idle_ratio": st["idle_ratios"]})
              for eng, st in zip(engines, draft_engine_stats(records))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["engine", "t_start", "idle_ratio"])


def draft_kv_series(records: Records) -> tuple[np.ndarray, np.ndarray]:
    """The draft KV bytes held over all tags (of every draft server) over time: ``(times,
    bytes held just after each change)``. A tag holds its round's ``draft_kv_bytes`` from the
    round's draft start (its cache grows to the context then) until its next round, the end of
    its request (the state is freed) or an eviction for memory (``evict`` intervals)."""
    rounds, requests, iv = records.rounds, records.requests, records.intervals
    spec = (rounds["draft"] >= 0).to_numpy()
    if not spec.any() or not rounds["draft_kv_bytes"].any():
        return np.empty(0), np.empty(0, dtype=np.int64)
    r = rounds.loc[spec, ["draft", "target", "request", "round", "t_draft_start", "draft_kv_bytes"]]
    n = int(r["target"].max()) + 1
    # ``order`` breaks ties in time: a request's end and evictions first (a tag's state is
    # gone before another tag grows: an eviction is made room for the round starting then)
    parts = [pd.DataFrame({"t": r["t_draft_start"].to_numpy(float), "key": (r["draft"] * n + r["target"]).to_numpy(),
                           "value": r["draft_kv_bytes"].to_numpy(np.int64), "order": 2})]
    last = r.loc[r.groupby("request")["round"].idxmax()]  # each request's last round, by request
    fin = requests.set_index("request")["t_finish"].reindex(last["request"]).to_numpy(float)
    ok = np.isfinite(fin)
    parts.append(pd.DataFrame({"t": fin[ok], "key": (last["draft"] * n + last["target"]).to_numpy()[ok], "value": 0,
                               "order": 0}))
    ev = iv[iv["kind"] == "evict"]
    if len(ev):
        index = {name: j for j, name in enumerate(records.meta.get("draft_engines", []))}
        server = ev["engine"].map(index).fillna(0).to_numpy(np.int64)
        parts.append(pd.DataFrame({"t": ev["start"].to_numpy(float), "key": server * n + ev["target"].to_numpy(),
                                   "value": 0, "order": 1}))
    e = pd.concat(parts, ignore_index=True).sort_values(["t", "order"], kind="stable")
    delta = e["value"] - e.groupby("key")["value"].shift(fill_value=0)
    t, held = e["t"].to_numpy(), np.cumsum(delta.to_numpy(np.int64))
    last = np.r_[t[1:] != t[:-1], True]  # what is held once every change at an instant is made
    return t[last], held[last]


def kv_bytes_peak(records: Records) -> int:
    """Peak over time of the draft KV bytes held over all tags (see :func:`draft_kv_series`)."""
    held = draft_kv_series(records)[1]
    return int(held.max()) if len(held) else 0


def _sort_by(key: np.ndarray, then: np.ndarray) -> np.ndarray:
    """``np.lexsort((then, key))``: by ``key``, ties by ``then`` (``then`` has no NaN). A
    stable sort by ``key`` alone is the same order when ``then`` already ascends within
    every tie, the usual case: rows come about in time order, and this sort is cheaper."""
    order = np.argsort(key, kind="stable")
    k, t = key[order], then[order]
    tie = ~(k[1:] > k[:-1])  # equal keys, or NaNs (sorted last, equal to each other)
    if (t[1:][tie] >= t[:-1][tie]).all():
        return order
    return np.lexsort((then, key))


def emitted_tokens(records: Records, rw: dict, t0: float, t1: float) -> dict[str, np.ndarray]:
    """The output tokens of the rounds that end in the window, a row per round (``rw``: the
    rounds' columns there) or, in a run that kept no rounds (``record_rounds: false``), per
    serving step: ``target``, ``emitted``, ``rounds`` (each row's), ``trees`` (speculative
    rounds) and ``accepted`` (their draft tokens accepted)."""
    if records.meta.get("record_rounds", True) or records.steps is None:
        spec = rw["draft"] >= 0
        return {"target": rw["target"], "emitted": rw["emitted"], "rounds": np.ones(len(spec), np.int64),
                "trees": spec.astype(np.int64), "accepted": np.where(spec, rw["accepted"], 0)}
    st = records.steps
    t_end = st["t_end"].to_numpy()
    return _rows(st, (t_end >= t0) & (t_end <= t1), ("target", "emitted", "rounds", "trees", "accepted"))


def _per_target(targets: list[dict], rw: dict, counted: dict, waits: dict, req: dict, span: float,
                star: bool) -> list[dict]:
    """The per-target part of the summary (rw: columns of the rounds in the window, counted:
    their tokens (:func:`emitted_tokens`), waits: of the rounds whose draft starts in it, req:
    of the requests, with masks ``first_in`` and ``done``); each target's rows in table order."""
    idx = [t["index"] for t in targets]
    emitted, rounds = counted["emitted"], counted["rounds"]
    cycle = rw["t_verify_end"] - (rw["t_send"] if star else rw["t_verify_start"])
    wait = waits["t_draft_start"] - waits["t_enqueue"]
    out = []
    by_round = rows_by(rw["target"], idx)
    by_count = by_round if counted["target"] is rw["target"] else rows_by(counted["target"], idx)
    by_target = zip(by_count, by_round, rows_by(waits["target"], idx), rows_by(req["target"], idx))
    for t, (ci, ri, wi, qi) in zip(targets, by_target):
        fi = int(req["first_in"][qi].sum())
        tp = req["tpot"][qi]
        tp = tp[~np.isnan(tp)]
        slo = t.get("tpot_slo_s")
        out.append(
            {
                "target": t["index"],
                "name": t["name"],
                "device": t["device"],
                "weight": t.get("weight", 1.0),
                "tokens_per_s": _f((emitted[ci].sum() + fi) / span) if span > 0 else None,
                "cycle_mean_s": _mean(cycle[ri]),
                "queue_wait_mean_s": _mean(wait[wi]),
                "rounds": int(rounds[ci].sum()),
                "requests_completed": int(req["done"][qi].sum()),
                "tpot_mean_s": _mean(tp),
                "tpot_slo_s": slo,
                # the share of its measured requests whose TPOT met the objective
                "slo_attainment": _f(float(np.mean(tp <= slo))) if slo is not None and tp.size else None,
                "slo_requests": int(tp.size) if slo is not None else 0,
            }
        )
    return out


def slo_attainment(per_target: list[dict]) -> float | None:
    """Over every measured request of the targets that have a TPOT objective: the share that met it."""
    met = sum(p["slo_attainment"] * p["slo_requests"] for p in per_target if p.get("slo_attainment") is not None)
    n = sum(p["slo_requests"] for p in per_target if p.get("slo_attainment") is not None)
    return _f(met / n) if n else None


def acceptance_marginal(accepted: np.ndarray, depth: np.ndarray) -> list[float]:
    """Per-position marginal acceptance ``a_j = P(accepted >= j)``, j = 1..max depth, over
    speculative rounds (the curve an ``acceptance: {kind: marginal}`` spec takes)."""
    if len(accepted) == 0:
        return []
    return [float(np.mean(accepted >= j)) for j in range(1, int(depth.max()) + 1)]


def _rows(table: pd.DataFrame, mask: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns ``names`` of the rows of ``mask``: what ``table[mask]`` holds, for the few
    columns used (a filtered copy of the 22-column rounds table costs more)."""
    return {n: table[n].to_numpy()[mask] for n in names}


HOPS: tuple[tuple[str, str, str], ...] = (
    ("link_up_s", "t_send", "t_draft_arrive"),
    ("parse_s", "t_draft_arrive", "t_enqueue"),
    ("queue_s", "t_enqueue", "t_draft_start"),
    ("draft_s", "t_draft_start", "t_draft_end"),
    ("serialize_s", "t_draft_end", "t_reply_send"),
    ("link_down_s", "t_reply_send", "t_target_arrive"),
    ("verify_wait_s", "t_target_arrive", "t_verify_start"),
    ("verify_s", "t_verify_start", "t_verify_end"),
)
"""The hops of a speculative round, in order: (name, from column, to column) of the rounds table."""


def hop_samples(records: Records, targets=None, whole_run: bool = False) -> dict[str, np.ndarray]:
    """Each hop's time (HOPS) for every speculative round in the measurement window (of the
    target indices ``targets`` only, when given; ``whole_run``: warm-up and cool-down too),
    ordered by target, request and round (a target's in the order it ran them), and per round
    ``after_round_s``: the target's own time from its request's previous round's end to this
    round's send (NaN for a request's first round); ``between_rounds_s``: those that exist.
    The samples :func:`hop_means` averages, and what a replay draws."""
    r = records.rounds
    t0, t1 = (-np.inf, np.inf) if whole_run else window_bounds(records.meta)
    t_ve = r["t_verify_end"].to_numpy()
    keep = (r["draft"].to_numpy() >= 0) & (t_ve >= t0) & (t_ve <= t1)
    if targets is not None:
        keep &= np.isin(r["target"].to_numpy(), list(targets))
    key = np.stack([r[c].to_numpy()[keep] for c in ("target", "request", "round")])
    order = np.lexsort(key[::-1])
    col = {c: r[c].to_numpy()[keep][order] for c in {c for _, a, b in HOPS for c in (a, b)}}
    out = {name: col[b] - col[a] for name, a, b in HOPS}
    # the previous round's end, same target and request
    key = key[:, order]
    same = (key[0][1:] == key[0][:-1]) & (key[1][1:] == key[1][:-1])
    after = np.full(len(order), np.nan)
    after[1:][same] = (col["t_send"][1:] - col["t_verify_end"][:-1])[same]
    out["after_round_s"] = after
    out["between_rounds_s"] = after[1:][same]
    return out


def hop_means(records: Records) -> dict[str, float | None]:
    """Mean time of each hop of the speculative rounds in the measurement window (HOPS), the
    whole round (``round_s``: send to verified), and the target's own time between a round's
    end and its next send within a request (``between_rounds_s``): where a round's time goes,
    to set a simulated run beside a real one hop by hop."""
    samples = hop_samples(records)
    out = {name: _mean(samples[name]) for name, _, _ in HOPS}
    out["round_s"] = _mean(round_times(records))
    out["between_rounds_s"] = _mean(samples["between_rounds_s"])
    return out


def _beyond(records: Records, rw: dict[str, np.ndarray], drafts: tuple) -> dict[str, Any]:
    """Pipelined drafting (draft time wasted on trees that missed, the hit rate over the whole
    run), the fabric's re-pairings, and the rounds' speculation depth in the window (0: a
    round without speculation)."""
    meta = records.meta
    pipe = meta.get("pipeline")
    out: dict[str, Any] = {"draft_wasted_s": None, "draft_wasted_fraction": None, "pipeline_hit_rate": None}
    if pipe:
        busy = float((drafts[2] - drafts[1]).sum())
        tried = pipe["hits"] + pipe["misses"]
        out.update(draft_wasted_s=_f(pipe["wasted_s"]),
                   draft_wasted_fraction=_f(pipe["wasted_s"] / busy) if busy else None,
                   pipeline_hit_rate=_f(pipe["hits"] / tried) if tried else None)
    out["fabric_repairs"] = meta.get("fabric_repairs")
    depth = rw["depth"]
    out["speculation_depth_mean"] = _mean(depth)
    out["rounds_without_speculation"] = _f(float(np.mean(depth == 0))) if len(depth) else None
    return out


def dist_stats(prefix: str, a) -> dict[str, float | None]:
    """``PREFIX_mean``, ``_p50``, ``_p99`` of ``a``."""
    return {f"{prefix}_mean": _mean(a), f"{prefix}_p50": _pct(a, 50), f"{prefix}_p99": _pct(a, 99)}


def inter_token_latencies(rounds: pd.DataFrame, requests: pd.DataFrame, t0: float, t1: float) -> np.ndarray:
    """The gaps between a request's successive outputs (its first token, then each round's
    tokens), as a streaming client sees them (``vllm bench serve``'s ITL: a round of several
    tokens is one chunk), for outputs that land in the window."""
    r = rounds[["request", "round", "t_verify_end"]].sort_values(["request", "round"], kind="stable")
    req, t = r["request"].to_numpy(), r["t_verify_end"].to_numpy(float)
    first = dict(zip(requests["request"].to_numpy(), requests["t_first_token"].to_numpy(float)))
    prev = np.empty(len(t))
    if len(t):
        prev[1:] = t[:-1]
        starts = np.r_[True, req[1:] != req[:-1]]
        prev[starts] = [first.get(q, np.nan) for q in req[starts]]
    keep = (t >= t0) & (t <= t1) & np.isfinite(prev)
    return t[keep] - prev[keep]


def serving_stats(records: Records, t0: float, t1: float, req: dict) -> dict[str, Any]:
    """Serving targets' steps in the window, in vLLM's terms where it has them: the batch
    (sequences per step), running and waiting requests, KV usage, preemptions; with each
    request's end-to-end latency and inter-token latencies, and the goodput under the targets'
    TPOT objectives (``tpot_slo_s``; None without any)."""
    st = records.steps
    w = st[(st["t_end"] >= t0) & (st["t_end"] <= t1)]
    running, cap = w["running"].to_numpy(float), w["kv_capacity"].to_numpy(float)
    limited = cap > 0
    usage = w["kv_tokens"].to_numpy(float)[limited] / cap[limited]
    dur = (w["t_end"] - w["t_start"]).to_numpy(float)
    arrival, finish = req["t_arrival"], req["t_finish"]
    e2e = (finish - arrival)[req["done"] & (arrival >= t0) & (finish <= t1)]
    itl = inter_token_latencies(records.rounds, records.requests, t0, t1)
    span = t1 - t0
    # goodput (vLLM's request_goodput): finished requests per second whose TPOT met their target's objective
    slo = {t["index"]: t.get("tpot_slo_s") for t in records.meta.get("targets", [])}
    bound = np.array([slo.get(int(t)) or np.nan for t in req["target"]], float)
    good = np.isfinite(req["tpot"]) & (req["tpot"] <= bound)
    return {
        "goodput_requests_per_s": _f(good.sum() / span) if span > 0 and np.isfinite(bound).any() else None,
        "steps": int(len(w)),
        "steps_per_s": _f(len(w) / span) if span > 0 else None,
        "step_time_mean_s": _mean(dur),
        **dist_stats("batch_size", running),
        "num_requests_running_mean": _mean(running),
        "num_requests_waiting_mean": _mean(w["waiting"]),
        "prefill_tokens_per_step_mean": _mean(w["prefill_tokens"]),
        "kv_cache_usage_mean": _mean(usage) if limited.any() else None,
        "kv_cache_usage_max": _f(usage.max()) if limited.any() else None,
        "kv_tokens_peak": int(w["kv_tokens"].max()) if len(w) else 0,
        "num_preemptions": int(w["preempted"].sum()),
        **dist_stats("e2e_latency_s", e2e),
        **dist_stats("itl_s", itl),
    }


# What `starsim bench-compare` holds side by side, in vllm bench serve's keys and units.
BENCH_COMPARED = (
    ("request_throughput", "req/s"), ("output_throughput", "tok/s"), ("total_token_throughput", "tok/s"),
    *((f"{s}_{m}_ms", "ms") for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "p99")),
    ("completed", ""),
)


def vllm_bench_result(records: Records) -> dict[str, Any]:
    """The run's requests as ``vllm bench serve --save-result`` writes its JSON: throughputs of
    the requests that arrived and finished in the measurement window, over the window, and
    TTFT, TPOT (excluding the first token), ITL (per streamed chunk: a speculative round's
    tokens arrive together) and E2E latency in ms: mean, median, std, p99."""
    t0, t1 = window_bounds(records.meta)
    rq = records.requests
    arrival, first, finish = (rq[c].to_numpy(float) for c in ("t_arrival", "t_first_token", "t_finish"))
    gen, prompt = rq["generated_tokens"].to_numpy(), rq["prompt_tokens"].to_numpy()
    done = np.isfinite(finish) & (arrival >= t0) & (finish <= t1)
    span = t1 - t0
    many = done & (gen > 1)
    per = {"ttft": first[done] - arrival[done], "tpot": (finish[many] - first[many]) / (gen[many] - 1),
           "itl": inter_token_latencies(records.rounds, rq, t0, t1), "e2el": finish[done] - arrival[done]}
    out: dict[str, Any] = {
        "duration": _f(span), "completed": int(done.sum()),
        "total_input_tokens": int(prompt[done].sum()), "total_output_tokens": int(gen[done].sum()),
        "request_throughput": _f(done.sum() / span) if span > 0 else None,
        "output_throughput": _f(gen[done].sum() / span) if span > 0 else None,
        "total_token_throughput": _f((gen[done].sum() + prompt[done].sum()) / span) if span > 0 else None,
    }
    for m, a in per.items():
        a = np.asarray(a, float) * 1e3
        out.update({f"mean_{m}_ms": _mean(a), f"median_{m}_ms": _pct(a, 50),
                    f"std_{m}_ms": _f(a.std()) if a.size else None, f"p99_{m}_ms": _pct(a, 99)})
    out["starsim"] = {"source": records.meta.get("source"), "window_s": [t0, t1],
                      "note": "requests that arrived and finished in the measurement window"}
    return out


def summarize(records: Records) -> dict[str, Any]:
    """The run summary (the keys of ``summary.json``), from the tables alone: its keys in order,
    each computed by a function here."""
    meta = records.meta
    rounds, requests = records.rounds, records.requests
    t0, t1 = window_bounds(meta)
    span = t1 - t0

    # ---- draft engine(s)
    engines = meta.get("draft_engines", [])
    drafts = _draft_intervals(records.intervals)  # filtered once, for every draft metric below
    stats = draft_engine_stats(records, drafts)
    utils = [st["utilization"] for st in stats]
    gaps_all = np.concatenate([st["gaps"] for st in stats]) if stats else np.empty(0)
    ratios_all = np.concatenate([st["idle_ratios"] for st in stats]) if stats else np.empty(0)
    task_time = draft_task_times(records, drafts)

    # ---- rounds and tokens
    t_ve, t_ds, draft = (rounds[c].to_numpy() for c in ("t_verify_end", "t_draft_start", "draft"))
    rw = _rows(rounds, (t_ve >= t0) & (t_ve <= t1),
               ("target", "draft", "emitted", "accepted", "depth", "t_send", "t_verify_start", "t_verify_end"))
    spec = rw["draft"] >= 0
    waits = _rows(rounds, (t_ds >= t0) & (t_ds < t1) & (draft >= 0), ("target", "t_draft_start", "t_enqueue"))
    wait = waits["t_draft_start"] - waits["t_enqueue"]

    # ---- requests
    req = {c: requests[c].to_numpy() for c in ("target", "t_arrival", "t_first_token", "t_finish", "generated_tokens")}
    arrival, first, finish, generated = req["t_arrival"], req["t_first_token"], req["t_finish"], req["generated_tokens"]
    req["first_in"] = (first >= t0) & (first <= t1)
    req["done"] = done = np.isfinite(finish)
    counted = emitted_tokens(records, rw, t0, t1)
    tokens = int(counted["emitted"].sum()) + int(req["first_in"].sum())
    arrived_in = (arrival >= t0) & (arrival <= t1)
    ttft = first[arrived_in] - arrival[arrived_in]
    ttft = ttft[~np.isnan(ttft)]
    dw = done & (arrival >= t0) & (finish <= t1) & (generated > 1)
    tpot = (finish[dw] - first[dw]) / (generated[dw] - 1)
    req["tpot"] = np.full(len(done), np.nan)  # per request, where it is measured
    req["tpot"][dw] = tpot

    per_target = _per_target(meta.get("targets", []), rw, counted, waits, req, span, bool(engines))
    n_rw, n_tasks = int(counted["rounds"].sum()), len(task_time)
    target_rates = [t["tokens_per_s"] for t in per_target]

    return {
        "draft_utilization": _mean(utils) if engines else None,
        "draft_idle_gap_mean_s": _mean(gaps_all),
        "draft_idle_gap_p50_s": _pct(gaps_all, 50),
        "draft_idle_gap_p99_s": _pct(gaps_all, 99),
        "draft_idle_ratio_mean": _mean(ratios_all),
        "draft_tasks": n_tasks,
        "draft_tasks_per_s": _f(n_tasks / span) if span > 0 and engines else None,
        "draft_task_time_mean_s": _mean(task_time),
        "draft_task_time_p50_s": _pct(task_time, 50),
        "draft_task_time_p99_s": _pct(task_time, 99),
        "draft_task_time_cv": cv(task_time),
        "draft_queue_wait_mean_s": _mean(wait),
        "draft_queue_wait_p99_s": _pct(wait, 99),
        "draft_kv_bytes_peak": kv_bytes_peak(records) if meta.get("record_rounds", True) else None,
        # tags evicted for draft memory (draft.memory_bytes): the instant "evict" intervals, whole run
        "draft_evictions": int((records.intervals["kind"] == "evict").sum()),
        **_beyond(records, rw, drafts),
        "throughput_tokens_per_s": _f(tokens / span) if span > 0 else None,
        "mean_accepted_tokens": _mean(rw["accepted"][spec] + 1) if spec.any() else (
            _f(counted["accepted"].sum() / counted["trees"].sum() + 1) if counted["trees"].sum()
            else (1.0 if n_rw else None)),
        "acceptance_marginal": acceptance_marginal(rw["accepted"][spec], rw["depth"][spec]),
        "rounds": n_rw,
        "round_time_mean_s": _mean(rt := round_times(records)),
        "round_time_cv": cv(rt),
        "requests_completed": int(done.sum()),
        "requests_unfinished": int(len(done) - done.sum()),
        "ttft_mean_s": _mean(ttft),
        "ttft_p99_s": _pct(ttft, 99),
        "ttft_samples": int(len(ttft)),  # what the TTFT percentiles rest on: requests that arrived in the window
        "tpot_mean_s": _mean(tpot),
        "tpot_p50_s": _pct(tpot, 50),  # over the requests: a plan's objectives are on these
        "tpot_p99_s": _pct(tpot, 99),
        "tpot_samples": int(len(tpot)),  # requests that arrived and finished in the window (over one token)
        "measured_s": _f(span),
        "t_end_s": _f(meta["t_end"]),
        "n_targets": len(meta.get("targets", [])),
        "target_tokens_per_s_mean": _mean([r for r in target_rates if r is not None]),
        "target_tokens_per_s_jain": jain_index(target_rates),
        # Jain's index of each target's rate over its weight: 1 when shares follow the weights
        "target_weighted_jain": jain_index([None if r is None else r / t.get("weight", 1.0)
                                            for r, t in zip(target_rates, per_target)]),
        "slo_attainment": slo_attainment(per_target),
        "per_target": per_target,
        # serving targets only (a steps table): absent otherwise, so other runs' summaries keep their keys
        **({"serving": serving_stats(records, t0, t1, req)} if records.steps is not None else {}),
    }
