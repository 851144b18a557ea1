"""The metrics module on hand-made tables, where every number is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from starsim.metrics import busy_curve, idle_gaps, kv_bytes_peak, merge_intervals, rows_by, summarize
from starsim.records import Recorder


def _records(intervals, t_end=5.0, warmup=0.0, window=1.0):
    rec = Recorder()
    rec.intervals.extend(("draft", "d[0]", "draft", 0, s, e) for s, e in intervals)
    meta = {"source": "test", "mode": "star", "t_end": t_end, "warmup_s": warmup, "cooldown_s": 0.0,
            "window_s": window, "draft_engines": ["draft"], "targets": []}
    return rec.finish(meta)


def test_utilization_gaps_and_idle_ratio():
    s = summarize(_records([(0, 1), (2, 3), (3, 4)]))
    assert s["draft_utilization"] == pytest.approx(3 / 5)
    assert s["draft_idle_gap_mean_s"] == pytest.approx(0.5)  # gaps 1 and 0
    assert s["draft_idle_gap_p50_s"] == pytest.approx(0.5)
    assert s["draft_idle_ratio_mean"] == pytest.approx(2 / 5)  # windows: 0, 1, 0, 0, 1


def test_warmup_clips_the_measurement_window():
    s = summarize(_records([(0, 1), (2, 3), (3, 4)], warmup=0.5))
    assert s["draft_utilization"] == pytest.approx(2.5 / 4.5)
    assert s["measured_s"] == pytest.approx(4.5)


def test_merge_and_busy_curve():
    s, e = merge_intervals(np.array([3.0, 0.0, 0.5, 5.0]), np.array([4.0, 1.0, 2.0, 6.0]))
    assert list(s) == [0.0, 3.0, 5.0] and list(e) == [2.0, 4.0, 6.0]
    b = busy_curve(np.array([0.0, 3.0]), np.array([2.0, 4.0]))
    assert b(np.array([1.0, 2.5, 3.5, 10.0])) == pytest.approx([1.0, 2.0, 2.5, 3.0])


def test_idle_gaps_inside_window_only():
    g = idle_gaps(np.array([0.0, 2.0, 5.0]), np.array([1.0, 3.0, 6.0]), 1.5, 10.0)
    assert list(g) == [2.0]


def test_kv_peak_frees_at_request_end():
    rec = Recorder()
    nan = float("nan")
    # request 0 on target 0 grows 100 -> 300 bytes, ends at t=3; request 1 grows to 200 at t=4
    for rid, rnd, t, kv in [(0, 0, 1.0, 100), (0, 1, 2.0, 300), (1, 0, 4.0, 200)]:
        rec.rounds.append((0, rid, rnd, 0, *([nan] * 4), t, *([nan] * 4), 0, 0, 1, 1, 0, 1, 0, 0, kv))
    rec.requests.extend([(0, 0, 1, 2, 2, 0.0, 0.0, 0.5, 3.0), (1, 0, 1, 2, 1, 3.0, 3.0, 3.5, nan)])
    r = rec.finish({"t_end": 5.0, "window_s": 1.0})
    assert kv_bytes_peak(r) == 300


def test_rows_by_matches_boolean_filters():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"target": rng.integers(-1, 5, 300), "engine": rng.choice(["draft-0", "draft-1", "x"], 300)})
    for col, values in (("target", [3, 0, -1, 7]), ("engine", ["draft-1", "nope", "x"])):
        for v, rows in zip(values, rows_by(df[col], values)):
            assert rows.tolist() == np.flatnonzero((df[col] == v).to_numpy()).tolist()


def test_sort_by_is_lexsort():
    from starsim.metrics import _sort_by

    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(0, 40))
        key = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.random(n)
        if trial % 5 == 0 and n:
            key[rng.integers(0, n, 3)] = np.nan
        then = rng.integers(-3, 3, n)
        if trial % 3 == 0:
            then = np.sort(then)
        assert (_sort_by(key, then) == np.lexsort((then, key))).all()


def test_spread_and_fairness_come_from_the_same_rows(const_star):
    from starsim import simulate, validate_scenario
    from starsim.metrics import cv, draft_task_times, jain_index, round_times

    const_star["targets"][0]["verify_time"] = {"kind": "uniform", "low": 0.005, "high": 0.015}
    res = simulate(validate_scenario(const_star))
    s = res.summary
    tasks, rounds = draft_task_times(res.records), round_times(res.records)
    assert len(tasks) == s["draft_tasks"] and s["draft_task_time_cv"] == pytest.approx(0.0, abs=1e-9)  # constant
    assert s["round_time_mean_s"] == pytest.approx(rounds.mean()) and s["round_time_cv"] == pytest.approx(cv(rounds))
    assert 0 < s["round_time_cv"] < 1
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0) and jain_index([1.0, 0.0]) == pytest.approx(0.5)
    assert s["target_tokens_per_s_jain"] == pytest.approx(jain_index([t["tokens_per_s"] for t in s["per_target"]]))
    assert cv([]) is None
