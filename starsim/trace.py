"""Chrome / Perfetto trace (``trace.json``) from the record tables.

Tracks: the draft server (one thread per engine), and per target its link up, draft wait,
link down, verify and prefill. Open it at https://ui.perfetto.dev or chrome://tracing.
Only a time range is exported (default: 20 s from the end of warm-up) to keep files small.
"""

from __future__ import annotations

import numpy as np

from .records import Records

_US = 1e6
_TARGET_TRACKS = ("link up", "draft queue + draft", "link down", "verify / decode", "prefill")


def chrome_trace(records: Records, t0: float, t1: float) -> dict:
    meta = records.meta
    events: list[dict] = []

    def meta_ev(pid, tid, kind, name):
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}})

    def span(pid, tid, name, s, e, args=None):
        if np.isfinite(s) and np.isfinite(e) and e >= t0 and s <= t1:
            ev = {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": s * _US, "dur": (e - s) * _US}
            if args:
                ev["args"] = args
            events.append(ev)

    engines = meta.get("draft_engines", [])
    meta_ev(0, 0, "process_name", "draft server")
    for k, eng in enumerate(engines):
        meta_ev(0, k, "thread_name", eng)
    eng_tid = {e: k for k, e in enumerate(engines)}
    targets = meta.get("targets", [])
    for t in targets:
        pid = 1 + t["index"]
        meta_ev(pid, 0, "process_name", f"{t['name']} ({t['device']})")
        for tid, name in enumerate(_TARGET_TRACKS):
            meta_ev(pid, tid, "thread_name", name)

    iv = records.intervals
    iv = iv[(iv["end"] >= t0) & (iv["start"] <= t1)]
    for eng, kind, tgt, s, e in zip(iv["engine"], iv["kind"], iv["target"], iv["start"], iv["end"]):
        if kind == "draft":
            span(0, eng_tid.get(eng, 0), f"draft t{tgt}", s, e)
        elif kind == "prefill":
            span(1 + int(tgt), 4, "prefill", s, e)

    r = records.rounds
    r = r[(r["t_verify_end"] >= t0) & (r["t_send"].fillna(r["t_verify_start"]) <= t1)]
    cols = ["target", "round", "t_send", "t_draft_arrive", "t_enqueue", "t_draft_start", "t_draft_end",
            "t_reply_send", "t_target_arrive", "t_verify_start", "t_verify_end", "accepted", "bytes_up", "bytes_down"]
    for row in zip(*(r[c].to_numpy() for c in cols)):
        tgt, rnd, ts, ta, tq, _ds, de, trs, tta, vs, ve, acc, bu, bd = row
        pid = 1 + int(tgt)
        span(pid, 0, "up", ts, ta, {"bytes": int(bu)})
        span(pid, 1, "wait draft", tq, de)
        span(pid, 2, "down", trs, tta, {"bytes": int(bd)})
        span(pid, 3, "verify" if np.isfinite(ts) else "decode", vs, ve, {"round": int(rnd), "accepted": int(acc)})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"window_s": [t0, t1]}}
