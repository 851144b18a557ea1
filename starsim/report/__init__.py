"""The idle-gap report of one or more run directories: seven figures (PNG/SVG) and one
self-contained HTML page (``starsim report``).

    from starsim.report import build_report
    rep = build_report(["runs/n1", "runs/n4"], "report/")
    rep.html, rep.files, rep.figures["idle_gaps"]

matplotlib is imported when a report is built, not when this package is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StarsimError
from .data import Run, read_runs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")

# (key, file stem, heading, paragraph) in page order
FIGURES = [
    ("timeline", "fig1_timeline", "1. Draft timeline",
     "What the draft engine does over a short stretch of each run (by default the first 0.5 s after "
     "warm-up): its busy time colored by the target it drafts for, its idle time in pale red, and under it "
     "one lane per target showing when the target waits for its tree (send, queue, draft, reply), verifies "
     "and prefills. With one target the draft idles while the target verifies; with more targets, other "
     "targets' drafts fill those gaps."),
    ("idle_gaps", "fig2_idle_gaps", "2. Idle-gap distribution",
     "Every gap between the end of one draft task and the start of the next in the measurement window, as a "
     "histogram and a cumulative distribution on a log time axis. Zero gaps (back-to-back tasks) cannot sit "
     "on a log axis: the legend counts them and the CDF starts at their share. Curves to the left mean "
     "shorter idle gaps."),
    ("idle_ratio", "fig3_idle_ratio", "3. Idle ratio over time",
     "The draft engine's idle ratio, idle / (idle + busy), in each window of the run (the paper's 0.2 s), "
     "raw and as a rolling mean; the dashed line is the summary's mean. A steady line means a steady load; "
     "dips and spikes show bursts and request boundaries."),
    ("scaling", "fig4_scaling", "4. Utilization and throughput vs number of targets",
     "One point per run at its number of targets (circles simulated, triangles measured), and for each "
     "scenario the closed form (starsim analyze) over N, with the saturation point N* where one draft "
     "becomes fully busy: beyond it, more targets add no throughput and each target's rounds stretch."),
    ("fairness", "fig5_fairness", "5. Fairness across targets",
     "Per-target tokens per second and mean wait of each target's tasks in the draft queue, one bar per "
     "target, grouped by run; the dashed line is the run's mean and Jain's index (1 = perfectly even) is "
     "under each group (with target weights, also over tokens/s / weight). With TPOT objectives "
     "(targets[].tpot_slo_s), each target's share of requests that met it is above its bar and the run's "
     "under the group. Uneven bars mean the draft serves some targets better than others."),
    ("draft_time", "fig6_draft_time", "6. Draft task and round time",
     "The distribution of the draft engine's time per task (the paper's claim: faster and more stable with "
     "several targets) and of each target's round time, send to verify end, as box plots over a sample of "
     "the tasks; CV is the coefficient of variation (std / mean)."),
    ("draft_memory", "fig7_draft_memory", "7. Draft memory over time",
     "The draft KV cache bytes the draft server(s) hold for all tags over the run: a tag holds its context's "
     "cache from its round until its request ends (freed) or, with draft.memory_bytes (the dashed line), "
     "until it is evicted for room; an evicted tag re-encodes its whole context on its next round."),
    ("serving", "fig8_serving", "8. Serving targets: batch and KV cache over time",
     "Runs with serving targets (targets[].serving, continuous batching) only: each target's sequences per "
     "engine step (its batch) and the share of its KV cache in use, over the run. A batch below max_seqs means "
     "the users, the step's token budget or KV held it back; KV near 100% means preemptions (recomputed "
     "sequences) or waiting admissions."),
]


SERVING_ONLY = ("serving",)  # figures drawn only when a run has serving targets (a steps table)


@dataclass
class Report:
    """What :func:`build_report` made: the HTML page, every figure file, the figures."""

    html: Path
    files: list[Path]
    figures: dict[str, Figure] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``"png,svg"`` -> ``["png", "svg"]``; anything else is a user error."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in parts if p not in FORMATS]
    if bad or not parts:
        raise StarsimError(f"--format: expected png, svg or png,svg, got {text!r}")
    return list(dict.fromkeys(parts))


def build_report(run_dirs: Sequence[str | Path], out: str | Path, formats: str | Sequence[str] = FORMATS,
                 t_from: float | None = None, t_to: float | None = None, command: str | None = None,
                 keep_figures: bool = True) -> Report:
    """Read the run directories, draw the figures, write them and ``report.html`` into ``out``."""
    from . import figures as F
    from .html import page

    fmts = parse_formats(formats)
    if not run_dirs:
        raise StarsimError("give at least one RUN_DIR")
    if t_from is not None and t_to is not None and t_to <= t_from:
        raise StarsimError(f"--to {t_to:g}: must be after --from ({t_from:g})")
    runs = read_runs([Path(p) for p in run_dirs])
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StarsimError(f"--out {out}: exists and is not a directory")
    for run in runs:  # range errors before any drawing
        F.timeline_range(run, t_from, t_to)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StarsimError(f"--out {out}: cannot create: {e.strerror or e}") from None

    notes: list[str] = []
    makers: dict[str, Any] = {
        "timeline": lambda: F.timeline(runs, t_from, t_to),
        "idle_gaps": lambda: F.idle_gap_hist_cdf(runs),
        "idle_ratio": lambda: F.idle_ratio_over_time_fig(runs),
        "scaling": lambda: F.scaling(runs, notes),
        "fairness": lambda: F.fairness(runs),
        "draft_time": lambda: F.draft_time(runs),
        "draft_memory": lambda: F.draft_memory(runs),
        "serving": lambda: F.serving(runs),
    }
    files: list[Path] = []
    figs: dict[str, Figure] = {}
    embedded = []
    serves = any(r.records.steps is not None for r in runs)
    for key, stem, heading, text in FIGURES:
        if key in SERVING_ONLY and not serves:  # a figure of its own kind of run only
            continue
        fig = makers[key]()
        try:
            written = F.save(fig, out / stem, fmts)
        except OSError as e:
            raise StarsimError(f"--out {out}: cannot write: {e.strerror or e}") from None
        files += written
        png = next((p for p in written if p.suffix == ".png"), None)
        embedded.append((key, heading, text, png.read_bytes() if png else F.png_bytes(fig)))
        if keep_figures:
            figs[key] = fig
    title = "starsim idle-gap report: " + ", ".join(r.display for r in runs)
    if command is None:
        command = default_command(run_dirs, out, fmts, t_from, t_to)
    html_path = out / "report.html"
    try:
        html_path.write_text(page(title, runs, embedded, command, notes), encoding="utf-8")
    except OSError as e:
        raise StarsimError(f"--out {out}: cannot write: {e.strerror or e}") from None
    return Report(html=html_path, files=files, figures=figs, runs=runs, notes=notes)


def default_command(run_dirs, out, fmts, t_from, t_to) -> str:
    """The ``starsim report`` command line that makes this report."""
    import shlex

    argv = ["starsim", "report", *map(str, run_dirs), "--out", str(out), "--format", ",".join(fmts)]
    if t_from is not None:
        argv += ["--from", f"{t_from:g}"]
    if t_to is not None:
        argv += ["--to", f"{t_to:g}"]
    return shlex.join(argv)


__all__ = ["FIGURES", "FORMATS", "Report", "build_report", "parse_formats"]
