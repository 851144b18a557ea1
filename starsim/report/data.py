"""What the report reads from a run directory, and the few series it plots.

Every metric comes from :mod:`starsim.metrics` (``summary.json``, or :func:`summarize` when a
run directory has none); the arrays behind its numbers (idle gaps, idle ratio per window,
draft task times, round times) from its functions of the same names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StarsimError
from ..metrics import draft_task_times as _draft_task_times
from ..metrics import idle_gaps_all, idle_ratio_series, summarize, window_bounds
from ..metrics import jain_index as _jain_index
from ..metrics import round_times as _round_times
from ..records import Records
from ..yaml_files import read_yaml


@dataclass
class Run:
    """One run directory, read once: tables, summary, scenario (as written) and labels."""

    path: Path
    records: Records
    summary: dict[str, Any]
    scenario: dict[str, Any] | None  # scenario.yaml as a dict; None when the directory has none
    name: str                        # scenario name (or the directory's name)
    label: str = ""                  # unique among the runs of one report
    summary_stored: bool = True      # False: no summary.json, ``summary`` was computed from the tables
    skipped: str | None = None       # why its scenario.yaml was not read (broken), one line; None: read or absent

    @property
    def source(self) -> str:
        return str(self.records.meta.get("source") or self.provenance.get("source") or "?")

    @property
    def provenance(self) -> dict[str, Any]:
        return self.summary.get("provenance") or {}

    @property
    def n_targets(self) -> int:
        return int(self.summary.get("n_targets") or len(self.records.meta.get("targets", [])))

    @property
    def display(self) -> str:
        """``name (sim)``: what a legend or a title calls the run."""
        return f"{self.label} ({self.source})"

    @property
    def window(self) -> tuple[float, float]:
        """The measurement window ``[warmup, t_end - cooldown]`` metrics uses."""
        return window_bounds(self.records.meta)


def _not_a_run(path: Path, why: str) -> StarsimError:
    return StarsimError(f"{path}: not a run directory ({why})")


def read_run(path: Path) -> Run:
    """Read a run directory (``starsim run --out`` or ``starsim execute --out``)."""
    path = Path(path)
    if not path.is_dir():
        raise _not_a_run(path, "not found" if not path.exists() else "not a directory")
    for table in ("rounds", "requests", "intervals"):
        if not ((path / f"{table}.parquet").is_file() or (path / f"{table}.csv").is_file()):
            raise _not_a_run(path, f"no {table} table")
    if not (path / "meta.json").is_file():
        raise _not_a_run(path, "no meta.json")
    try:
        records = Records.read(path)
    except (OSError, ValueError) as e:  # pyarrow's and json's errors are ValueErrors
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _not_a_run(path, f"cannot read its tables: {why}") from None
    for key in ("t_end", "window_s"):
        if key not in records.meta:
            raise _not_a_run(path, f"meta.json has no {key}")
    summary_file = path / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else summarize(records)
    except (OSError, ValueError) as e:
        raise StarsimError(f"{summary_file}: cannot read: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(summary, dict):
        raise StarsimError(f"{summary_file}: expected a JSON object (a run's summary), got {type(summary).__name__}")
    scenario, skipped = None, None
    scenario_file = path / "scenario.yaml"
    if scenario_file.is_file():
        try:
            scenario = read_yaml(scenario_file, "scenario")
        except StarsimError as e:  # a run's copy of its scenario only labels and groups runs
            scenario, skipped = None, str(e).splitlines()[0]
        if not isinstance(scenario, dict):
            skipped = skipped or f"{scenario_file}: not a mapping"
            scenario = None
    name = str((summary.get("provenance") or {}).get("scenario") or (scenario or {}).get("name") or path.name)
    return Run(path=path, records=records, summary=summary, scenario=scenario, name=name,
               summary_stored=summary_file.is_file(), skipped=skipped)


VALIDATION_RUNS = ("real", "replay", "sim")  # a validate point's run directories, drawn in this order


def expand_validation(paths: list[Path]) -> list[Path]:
    """Each ``starsim validate --out`` directory among ``paths`` (it holds validation.json)
    replaced by its points' first real run, its replay and its profile-based simulation, in
    that order: the replay drawn beside the real run it replays."""
    out: list[Path] = []
    for p in paths:
        doc = p / "validation.json"
        if not doc.is_file():
            out.append(p)
            continue
        try:
            points = [str(pt["point"]) for pt in json.loads(doc.read_text())["points"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StarsimError(f"{doc}: not a validation written by starsim validate ({e})") from None
        found = [p / pt.replace("/", "_") / name for pt in points for name in VALIDATION_RUNS]
        found = [d for d in found if d.is_dir()]
        if not found:
            raise StarsimError(f"{p}: a validation without run directories (run starsim validate with --out)")
        out += found
    return out


def read_runs(paths: list[Path]) -> list[Run]:
    """Read several run directories (a validation's directory: its points' real, replay and
    simulated runs); labels are the scenario names, made unique with the directory's name
    where two runs share one."""
    paths = expand_validation([Path(p) for p in paths])
    runs = [read_run(p) for p in paths]
    names = [r.name for r in runs]
    for r in runs:
        r.label = r.name if names.count(r.name) == 1 else f"{r.name} [{r.path.name}]"
    labels = [r.label for r in runs]
    for r in runs:  # the same directory name twice (a validation's points): with its parent's
        if labels.count(r.label) > 1:
            r.label = f"{r.name} [{r.path.parent.name}/{r.path.name}]"
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):  # and still the same: number them
        if labels.count(r.label) > 1:
            r.label = f"{r.label} #{i + 1}"
    return runs


def family(run: Run) -> str | None:
    """A key shared by runs of the same scenario at different target counts (None: no
    scenario file). Names, descriptions, durations, request caps, pool sizes, acceptance and
    profile scales are ignored; a replay counts as the scenario it replays."""
    # a replay: the scenario it replays, not the measured times it was fed
    scenario = (run.provenance.get("replay") or {}).get("scenario") or run.scenario
    if scenario is None:
        return None
    sc = json.loads(json.dumps(scenario, default=str))
    # acceptance too: a validation sweep feeds each point the curve its real run measured
    for k in ("name", "description", "duration_s", "max_requests", "acceptance"):
        sc.pop(k, None)
    for t in sc.get("targets") or []:
        if isinstance(t, dict):
            t.pop("count", None)
    for d in (sc.get("devices") or {}).values():
        if isinstance(d, dict):
            d.pop("count", None)
    _drop_profile_scales(sc)
    return json.dumps(sc, sort_keys=True)


def _drop_profile_scales(node) -> None:
    """A validation sweep also scales each point's profiles by its run's machine speed: the
    profile timings' ``scale`` is no part of what the scenario is."""
    if isinstance(node, dict):
        if node.get("kind") == "profile":
            node.pop("scale", None)
        for v in node.values():
            _drop_profile_scales(v)
    elif isinstance(node, list):
        for v in node:
            _drop_profile_scales(v)


def family_name(run: Run) -> str:
    """The scenario name without its ``-nK`` suffix (``starsd-ref-n4`` -> ``starsd-ref``)."""
    return re.sub(r"[-_]n\d+$", "", run.name)


# --------------------------------------------------------------------------- series
# The arrays behind the summary's numbers come from starsim.metrics; these take a Run.


def idle_gaps(run: Run) -> np.ndarray:
    """All draft idle gaps in the measurement window, over every draft engine."""
    return idle_gaps_all(run.records)


def idle_ratio_over_time(run: Run) -> pd.DataFrame:
    """Idle ratio per window (``t_start``, ``idle_ratio``), the mean over draft engines
    (:func:`starsim.metrics.idle_ratio_series`; its mean is the summary's idle ratio)."""
    s = idle_ratio_series(run.records)
    if s.empty:
        return pd.DataFrame({"t_start": [], "idle_ratio": []})
    return s.groupby("t_start", as_index=False)["idle_ratio"].mean()


def draft_task_times(run: Run) -> np.ndarray:
    return _draft_task_times(run.records)


def round_times(run: Run) -> np.ndarray:
    return _round_times(run.records)


jain_index = _jain_index
