"""Running a sweep: every point simulated (or solved in closed form), in parallel, resumable,
into one tidy table.

Each point's result is written to ``OUT/points/<id>.json`` the moment it comes back (``id``:
the resolved scenario's content digest), so an interrupted sweep picks up where it stopped:
a rerun skips every point whose file is there and computes the rest. ``OUT/results.parquet``
is then built from the files of this sweep's points: one row per point, the swept fields
first (a mapping or list value as JSON text), then ``point`` (its position) and ``id``,
then every scalar of the run's summary (the keys of ``summary.json``). Wall times stay in
the point files, not the table, so one sweep gives the same table on any executor.

Executors: a local process pool (default, ``jobs`` workers), or Ray (``ray="local"``
starts a Ray instance on this machine, ``"auto"`` joins the running cluster, or a cluster
address). Workers receive the validated scenario itself, not file paths: a cluster's nodes
need starsim installed, and only files a run reads while it runs (a trace replay's trace)
must be at the same path there.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import StarsimError
from ..scenario import Scenario
from .sweep_file import Point, Sweep

RESULTS = "results.parquet"


def _scalars(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's scalar entries (numbers, strings, booleans), JSON-safe (NaN -> None)."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, bool) or isinstance(v, (int, str)):
            out[k] = v
        elif isinstance(v, float):
            out[k] = v if math.isfinite(v) else None
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # a numpy scalar
            x = v.item()
            out[k] = x if not isinstance(x, float) or math.isfinite(x) else None
    return out


def run_point(scenario: Scenario, analytic: bool = False, run_dir: str | None = None) -> dict[str, Any]:
    """One point: its summary's scalars and how long it took (a worker's task)."""
    t0 = time.perf_counter()
    if analytic:
        from ..analytic import analyze

        summary = analyze(scenario)
    else:
        from ..sim import simulate

        res = simulate(scenario)
        if run_dir is not None:
            res.write(Path(run_dir))
        summary = res.summary
    return {"summary": _scalars(summary), "wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------- executors


def _ignore_sigint() -> None:
    # Ctrl-C reaches every process of the terminal's group: only the parent acts on it (it
    # cancels what has not started and keeps what finished), the workers finish quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _local(tasks: list[tuple[Point, str | None]], analytic: bool, jobs: int) -> Iterator[tuple[Point, dict]]:
    if jobs <= 1:  # in process: no pool to start
        for p, d in tasks:
            yield p, run_point(p.scenario, analytic, d)
        return
    # Workers start from a clean process (forkserver, else spawn), not a fork of this one:
    # a fork inherits the locks of this process's threads (pyarrow's allocator runs one)
    # in whatever state they were, and a worker can hang on one for good.
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_ignore_sigint) as pool:
        pending = {pool.submit(run_point, p.scenario, analytic, d): p for p, d in tasks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield pending.pop(f), f.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ray(tasks: list[tuple[Point, str | None]], analytic: bool, address: str) -> Iterator[tuple[Point, dict]]:
    try:
        import ray
    except ImportError:
        raise StarsimError("--ray needs Ray: pip install 'starsim[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
        if address != "local":
            kw["address"] = address
        ray.init(**kw)
    try:
        remote = ray.remote(run_point)
        pending = {remote.remote(p.scenario, analytic, d): p for p, d in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()


def _executor(tasks: list[tuple[Point, str | None]], analytic: bool, workers: int | None,
              ray: str | None) -> tuple[Iterator[tuple[Point, dict]], str]:
    """The tasks' results as each finishes, on Ray or the local pool (``workers``, default
    all CPUs), and the executor's name."""
    if ray is not None:
        return _ray(tasks, analytic, ray), f"ray ({ray})"
    n = workers or os.cpu_count() or 1
    return _local(tasks, analytic, min(n, max(len(tasks), 1))), f"local ({n} workers)"


def execute_points(points: list[Point], workers: int | None = None, ray: str | None = None,
                   analytic: bool = False) -> Iterator[tuple[Point, dict]]:
    """Simulate (or solve) ``points`` on the local pool (``workers``, default all CPUs) or
    on Ray; (point, record) as each finishes: ``record["summary"]`` holds its scalars."""
    return _executor([(p, None) for p in points], analytic, workers, ray)[0]


# --------------------------------------------------------------------------- the sweep


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(v: Any) -> Any:
    """A swept value as a table cell: scalars as they are, mappings and lists as JSON."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def results_table(sweep: Sweep, points: list[Point], out: Path) -> pd.DataFrame:
    """One row per point (in sweep order) from the point files: swept fields, point, id, metrics."""
    rows = []
    for p in points:
        f = out / "points" / f"{p.id}.json"
        if not f.is_file():
            continue
        rec = json.loads(f.read_text())
        rows.append({**{k: _cell(p.values[k]) for k in sweep.spec.fields}, "point": p.index, "id": p.id,
                     **rec["summary"]})
    return pd.DataFrame(rows)


def run_sweep(sweep: Sweep, out: str | Path, *, analytic: bool = False, jobs: int | None = None,
              ray: str | None = None, keep_runs: bool = False, progress: bool = True,
              say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run every point not yet done under ``out``; write and return the results table."""
    from tqdm.auto import tqdm

    out = Path(out)
    say = say or (lambda msg: None)
    points = sweep.points()  # all validated before anything runs
    (out / "points").mkdir(parents=True, exist_ok=True)
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.id, p)  # equal points (e.g. a zip repeating a value) run once
    todo = [p for i, p in seen.items() if not (out / "points" / f"{i}.json").is_file()]
    kind = "closed form" if analytic else "simulation"
    say(f"{sweep.spec.name}: {len(points)} points ({len(seen)} distinct), {len(seen) - len(todo)} already done, "
        f"{len(todo)} to run ({kind})")
    manifest = {"name": sweep.spec.name, "sweep_file": str(sweep.path.resolve()), "base": str(sweep.base),
                "fields": sweep.spec.fields, "points": len(points), "analytic": analytic}
    _write_atomic(out / "sweep.json", json.dumps(manifest, indent=2) + "\n")
    tasks = [(p, str(out / "runs" / p.id) if keep_runs and not analytic else None) for p in todo]
    results, executor = _executor(tasks, analytic, jobs, ray)
    bar = tqdm(total=len(todo), desc=sweep.spec.name, unit="pt", disable=not progress, file=sys.stderr)
    try:
        for p, rec in results:
            doc = {"id": p.id, "point": p.index, "values": p.values, "executor": executor, **rec}
            _write_atomic(out / "points" / f"{p.id}.json", json.dumps(doc, allow_nan=False, default=str) + "\n")
            bar.update(1)
    finally:
        # an interrupt may land here rather than in the executor: close it now (cancel what
        # has not started, let workers finish their point), not at interpreter exit
        results.close()
        bar.close()
    table = results_table(sweep, points, out)
    table.to_parquet(out / RESULTS, index=False)
    return table
