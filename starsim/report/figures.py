"""The report's seven figures, each a function of the runs that returns a matplotlib Figure.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot: no global
figure registry, no GUI backend); :func:`save` writes them with the Agg and SVG canvases
and without dates, so the same runs give the same files.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import StarsimError
from ..metrics import cv as metrics_cv
from .data import (
    Run,
    draft_task_times,
    family,
    family_name,
    idle_gaps,
    idle_ratio_over_time,
    jain_index,
    round_times,
)

if TYPE_CHECKING:  # matplotlib is imported inside the functions: importing this module is cheap
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#17becf", "#e377c2", "#7f7f7f"]
# target colors avoid the phase colors below (brown, olive, greys)
TARGET_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2", "#17becf"]
PHASE = {  # (color, legend label)
    "idle": ("#fbdada", "draft idle"),
    "wait": ("#d4d4d4", "target: send + wait for its tree"),
    "verify": ("#3b3b3b", "target: verify"),
    "prefill": ("#8c564b", "target: prefill"),
    "decode": ("#bcbd22", "target: decode (no draft)"),
}
SOURCE_MARKERS = {"sim": "o", "real": "^", "replay": "D"}
TIMELINE_S = 0.5      # default timeline length after warm-up
MAX_TARGET_LANES = 16  # timeline lanes per run beyond which targets are left out (and said so)
STRIP_POINTS = 1500   # dots per run in the strip plots (a seeded sample)
SAVE_RC = {"svg.hashsalt": "starsim-report", "svg.fonttype": "path", "path.simplify": True}


def run_color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def target_colors(n: int) -> list:
    if n <= len(TARGET_COLORS):
        return TARGET_COLORS[:n]
    import matplotlib

    return [matplotlib.colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def runs_title(what: str, runs: list[Run]) -> str:
    """``what: a (sim), b (real)``; many runs are counted instead of named."""
    if len(runs) <= 3:
        names = ", ".join(r.display for r in runs)
    else:
        sources = [r.source for r in runs]
        names = f"{len(runs)} runs (" + ", ".join(f"{sources.count(s)} {s}" for s in sorted(set(sources))) + ")"
    return "\n".join(textwrap.wrap(f"{what}: {names}", 130))


def _legend(text: str, width: int = 60) -> str:
    """A legend entry wrapped to lines of ``width``: a long run name is folded, never cut off
    at the figure's edge."""
    return "\n".join(textwrap.wrap(text, width)) or text


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def _tick_label(run: Run, n_runs: int, *lines: str) -> str:
    """A run's category label under a bar group or a box: its name wrapped to the room one
    category has, then its source and N, then ``lines``."""
    width = max(12, int(90 / max(n_runs, 1)))
    return "\n".join([*textwrap.wrap(run.label, width), f"{run.source}, N={run.n_targets}", *lines])


def _freeze_layout(fig: Figure) -> None:
    """Run the constrained layout once, then keep it: every file of a figure (whatever the
    formats asked for, in whatever order) is drawn from the same positions."""
    import matplotlib
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    engine = fig.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        with matplotlib.rc_context(SAVE_RC):
            fig.draw_without_rendering()
        fig.set_layout_engine("none")


def save(fig: Figure, stem: Path, formats: list[str], dpi: int = 110) -> list[Path]:
    """Write ``stem.png`` / ``stem.svg`` without creation dates (byte-identical reruns)."""
    import matplotlib

    _freeze_layout(fig)
    metadata = {"png": {"Software": None}, "svg": {"Date": None, "Creator": "starsim report"}}
    out = []
    with matplotlib.rc_context(SAVE_RC):
        for fmt in formats:
            p = stem.with_suffix(f".{fmt}")
            fig.savefig(p, format=fmt, dpi=dpi, metadata=metadata[fmt])
            out.append(p)
    return out


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    import io

    import matplotlib

    _freeze_layout(fig)
    buf = io.BytesIO()
    with matplotlib.rc_context(SAVE_RC):
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- 1: timeline


def timeline_range(run: Run, t_from: float | None, t_to: float | None) -> tuple[float, float]:
    """The timeline's ``[a, b]``: ``--from/--to``, else the first 0.5 s after warm-up."""
    t_end = float(run.records.meta["t_end"])
    a = run.window[0] if t_from is None else float(t_from)
    b = min(a + TIMELINE_S, t_end) if t_to is None else float(t_to)
    if a >= t_end:
        raise StarsimError(f"--from {a:g}: {run.path} ends at {t_end:.6g} s")
    if b <= a:
        raise StarsimError(f"--to {b:g}: must be after --from ({a:g})")
    return a, b


def _clip(start: np.ndarray, end: np.ndarray, a: float, b: float) -> list[tuple[float, float]]:
    keep = (end > a) & (start < b) & np.isfinite(start) & np.isfinite(end)
    s, e = np.maximum(start[keep], a), np.minimum(end[keep], b)
    return list(zip(s.tolist(), (e - s).tolist()))


def timeline(runs: list[Run], t_from: float | None = None, t_to: float | None = None) -> Figure:
    """Figure 1: one panel per run: the draft engine lane(s) (idle background, busy colored
    by the target served) over one lane per target (send/wait, verify, prefill, decode)."""
    from matplotlib.patches import Patch

    lanes = []
    for run in runs:
        n = run.n_targets
        lanes.append(len(run.records.meta.get("draft_engines", [])) + min(n, MAX_TARGET_LANES))
    fig = _figure(11, 1.6 + 0.34 * sum(lanes) + 0.9 * len(runs))
    axes = fig.subplots(len(runs), 1, squeeze=False, gridspec_kw={"height_ratios": [max(k, 1) + 1.5 for k in lanes]})
    seen_phases: set[str] = set()
    n_max = 0
    for run, ax in zip(runs, axes[:, 0]):
        a, b = timeline_range(run, t_from, t_to)
        meta = run.records.meta
        iv = run.records.intervals
        iv = iv[(iv["end"] > a).to_numpy() & (iv["start"] < b).to_numpy()]  # only what the range shows
        istart, iend = iv["start"].to_numpy(float), iv["end"].to_numpy(float)
        kind, itarget, engine = iv["kind"].to_numpy(str), iv["target"].to_numpy(), iv["engine"].to_numpy(str)
        targets = meta.get("targets", [])
        shown = targets[:MAX_TARGET_LANES]
        colors = target_colors(len(targets))
        n_max = max(n_max, len(targets))
        labels, label_colors = [], []
        y = 0
        for eng in meta.get("draft_engines", []):
            ax.broken_barh([(a, b - a)], (y - 0.42, 0.84), facecolors=PHASE["idle"][0])
            seen_phases.add("idle")
            for t in targets:
                sel = (kind == "draft") & (engine == eng) & (itarget == t["index"])
                bars = _clip(istart[sel], iend[sel], a, b)
                if bars:
                    ax.broken_barh(bars, (y - 0.42, 0.84), facecolors=colors[t["index"] % len(colors)],
                                   edgecolors="white", linewidths=0.4)
            labels.append(f"{eng} engine")
            label_colors.append("black")
            y += 1
        r = run.records.rounds
        r = r[(r["t_verify_start"] > a).to_numpy() & (r["t_send"] < b).to_numpy()]
        for t in shown:
            i = t["index"]
            mine = (r["target"] == i).to_numpy() & (r["draft"] >= 0).to_numpy()
            bars = _clip(r["t_send"].to_numpy(float)[mine], r["t_verify_start"].to_numpy(float)[mine], a, b)
            if bars:
                ax.broken_barh(bars, (y - 0.3, 0.6), facecolors=PHASE["wait"][0], edgecolors="none")
                seen_phases.add("wait")
                own = _clip(r["t_draft_start"].to_numpy(float)[mine], r["t_draft_end"].to_numpy(float)[mine], a, b)
                if own:  # inside the wait: when its own draft ran (the rest is link and queue)
                    ax.broken_barh(own, (y - 0.1, 0.2), facecolors=colors[i % len(colors)], edgecolors="none")
                    seen_phases.add("own")
            for k in ("prefill", "verify", "decode"):
                sel = (kind == k) & (itarget == i)
                bars = _clip(istart[sel], iend[sel], a, b)
                if bars:  # white edges: back-to-back steps (decode tokens) stay apart
                    ax.broken_barh(bars, (y - 0.3, 0.6), facecolors=PHASE[k][0], edgecolors="white",
                                   linewidths=0.4)
                    seen_phases.add(k)
            labels.append(f"{t['name']} (target {i})")
            label_colors.append(colors[i % len(colors)])
            y += 1
        ax.set_ylim(y - 0.5, -0.5)
        ax.set_yticks(range(y), labels)
        for tick, c in zip(ax.get_yticklabels(), label_colors):
            tick.set_color(c)
        ax.set_xlim(a, b)
        ax.set_xlabel("time on the run's clock (s)")
        more = f"; {len(targets) - len(shown)} more targets not shown" if len(targets) > len(shown) else ""
        ax.set_title(f"{run.display}: {a:.3f} to {b:.3f} s{more}", fontsize=10, loc="left")
        ax.grid(axis="x", color="#eeeeee")
        ax.set_axisbelow(True)
    handles = [Patch(color=PHASE[k][0], label=PHASE[k][1]) for k in PHASE if k in seen_phases]
    if "own" in seen_phases:
        handles.append(Patch(color="#777777", label="thin strip in a wait: its draft running (target color)"))
    if n_max <= len(TARGET_COLORS):
        handles += [Patch(color=c, label=f"draft busy for target {i}") for i, c in enumerate(target_colors(n_max))]
    else:
        handles.append(Patch(color=target_colors(n_max)[0], label="draft busy (color: the target, as its lane label)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    fig.suptitle(runs_title("Draft timeline (busy/idle) and target phases", runs))
    return fig


# --------------------------------------------------------------------------- 2: idle gaps


def idle_gap_hist_cdf(runs: list[Run]) -> Figure:
    """Figure 2: the distribution of draft idle gaps, histogram and CDF on a log time axis;
    zero gaps (back-to-back tasks) cannot sit on a log axis: the legend counts them and the
    CDF starts at their share."""
    fig = _figure(11, 4.6)
    ax_h, ax_c = fig.subplots(1, 2)
    gaps = [idle_gaps(r) * 1e3 for r in runs]
    pos_all = np.concatenate([g[g > 0] for g in gaps]) if gaps else np.empty(0)
    if pos_all.size:
        lo, hi = pos_all.min(), pos_all.max()
        bins = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 10, 50)
    for i, (run, g) in enumerate(zip(runs, gaps)):
        color = run_color(i)
        if g.size == 0:
            continue
        pos = np.sort(g[g > 0])
        zero = 1.0 - pos.size / g.size
        label = _legend(f"{run.display}: {g.size:,} gaps, {100 * zero:.0f}% zero")
        if not pos.size:  # nothing to draw on a log axis: say why in the legend instead of leaving it out
            util = run.summary.get("draft_utilization")
            why = (f"the draft ran back to back (utilization {100 * util:.1f}%: saturated)"
                   if util is not None and util > 0.999 else "every task started as the last ended")
            ax_h.plot([], [], color=color, label=_legend(f"{run.display}: no gap above zero: {why}"))
        if pos.size:
            ax_h.hist(pos, bins=bins, weights=np.full(pos.size, 1.0 / g.size), histtype="step", lw=1.8,
                      color=color, label=label)
            y = zero + np.arange(1, pos.size + 1) / g.size
            ax_c.step(np.r_[pos[0], pos], np.r_[zero, y], where="post", lw=1.8, color=color, label=label)
        else:
            ax_c.plot([], [], color=color, label=label)
        mean = run.summary.get("draft_idle_gap_mean_s")
        if mean:
            ax_c.axvline(mean * 1e3, color=color, ls=":", lw=1.3,
                         label=_legend(f"mean {mean * 1e3:.3g} ms ({run.label})"))
    if not pos_all.size:
        why = "no idle gaps above zero: the draft never idled (saturated: every task began as the last ended)"
        _no_data(ax_h, "\n".join(textwrap.wrap(why, 50)))
        _no_data(ax_c, "\n".join(textwrap.wrap(why, 50)))
    for ax in (ax_h, ax_c):
        ax.set_xscale("log")
        ax.set_xlabel("draft idle gap (ms, log scale)")
        ax.grid(color="#eeeeee", which="both")
        ax.set_axisbelow(True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    ax_h.set_ylabel("fraction of all gaps in the bin")
    ax_h.set_title("histogram (50 log-spaced bins)", fontsize=10)
    ax_c.set_ylabel("fraction of gaps <= x")
    ax_c.set_ylim(0, 1.02)
    ax_c.set_title("cumulative distribution", fontsize=10)
    fig.suptitle(runs_title("Draft idle gaps", runs))
    return fig


# --------------------------------------------------------------------------- 3: idle ratio


def smoothing_windows(n: int) -> int:
    """Rolling-mean length for a series of ``n`` windows: about 1/50 of the run, at least 3."""
    return max(3, int(round(n / 50)))


def idle_ratio_over_time_fig(runs: list[Run]) -> Figure:
    """Figure 3: one panel per run, idle ratio per window (raw) and its rolling mean."""
    fig = _figure(11, 1.2 + 2.3 * len(runs))
    axes = fig.subplots(len(runs), 1, squeeze=False, sharey=True)[:, 0]
    for i, (run, ax) in enumerate(zip(runs, axes)):
        color = run_color(i)
        w = float(run.records.meta["window_s"])
        s = idle_ratio_over_time(run)
        ax.set_title(f"{run.display}: {w * 1e3:.0f} ms windows", fontsize=10, loc="left")
        if s.empty:
            _no_data(ax, "no draft engine, or no full window in the measurement")
            continue
        x = s["t_start"].to_numpy(float) + w / 2
        raw = s["idle_ratio"].to_numpy(float)
        k = smoothing_windows(len(raw))
        smooth = s["idle_ratio"].rolling(k, center=True, min_periods=1).mean().to_numpy(float)
        ax.plot(x, raw, color=color, lw=0.8, alpha=0.35, label="per window")
        ax.plot(x, smooth, color=color, lw=2.0, label=f"rolling mean of {k} windows ({k * w:.3g} s)")
        mean = run.summary.get("draft_idle_ratio_mean")
        if mean is not None:
            ax.axhline(mean, color="black", ls="--", lw=1, zorder=1, label=f"mean {mean:.3f} (summary)")
        ax.set_ylabel("idle ratio")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(color="#eeeeee")
        ax.legend(fontsize=8, loc="upper right", ncol=3)
        ax.set_xlabel("time on the run's clock (s)")
    fig.suptitle(runs_title("Draft idle ratio = idle / (idle + busy) per window", runs))
    return fig


# --------------------------------------------------------------------------- 4: scaling


def _closed_form(run: Run, n_max: int) -> dict | None:
    """``analyze`` of the run's scenario at N = 1..n_max (one target group; several groups:
    the scenario as it is, at its own N), or None without a scenario file."""
    from ..analytic import analyze
    from ..scenario import load_scenario

    if run.scenario is None:
        return None
    if len(run.scenario.get("targets") or []) != 1:
        a = analyze(load_scenario(run.path / "scenario.yaml"))
        u = a["draft_utilization"]
        return {"n": [a["n_targets"]], "util": [np.nan if u is None else 100 * u],
                "tput": [a["throughput_tokens_per_s"]], "n_star": a["n_saturation"], "batch": _batch(a)}
    ns = list(range(1, n_max + 1))
    util, tput = [], []
    n_star = None
    for n in ns:
        a = analyze(load_scenario(run.path / "scenario.yaml", [f"targets.0.count={n}"]))
        util.append(np.nan if a["draft_utilization"] is None else 100 * a["draft_utilization"])
        tput.append(a["throughput_tokens_per_s"])
        n_star = a["n_saturation"]
    return {"n": ns, "util": util, "tput": tput, "n_star": n_star, "batch": _batch(a)}


def _batch(a: dict) -> float:
    """Sequences per step of the closed form's first target (1: not a serving target)."""
    return float(a["per_target"][0].get("batch", 1.0)) if a.get("per_target") else 1.0


def scaling(runs: list[Run], notes: list[str] | None = None) -> Figure:
    """Figure 4: draft utilization and throughput against the number of targets, one point
    per run (marker: sim or real), the closed form of each scenario as a line, its N* (runs
    of serving targets at several batch sizes: one scenario family, so one line, per batch)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 4.6)
    ax_u, ax_t = fig.subplots(1, 2)
    groups: dict[str | None, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(family(run) or f"#{i}", []).append(i)
    for g, (_, members) in enumerate(groups.items()):
        color = run_color(g)
        first = runs[members[0]]
        fam = family_name(first)
        n_hi = max(runs[i].n_targets for i in members) + 2
        try:
            cf = _closed_form(first, n_hi)
        except (StarsimError, ValueError, KeyError, OSError) as e:
            cf = None
            if notes is not None:
                notes.append(f"no closed form for {first.label}: {str(e).splitlines()[0]}")
        if cf is not None and cf["batch"] > 1:  # serving targets: a curve per batch size (a family each)
            fam = f"{fam}, batch {cf['batch']:g}"
        if cf is not None and len(cf["n"]) == 1:  # several target groups: one point, no line
            label = f"closed form of {fam} as is (several target groups)"
            for ax, v in ((ax_u, cf["util"]), (ax_t, cf["tput"])):
                ax.plot(cf["n"], v, color=color, marker="x", ms=10, mew=2, ls="none", label=label)
        elif cf is not None:
            label = f"closed form at N = 1..{n_hi}: {fam}"
            ax_u.plot(cf["n"], cf["util"], color=color, lw=1.6, marker=".", label=label)
            ax_t.plot(cf["n"], cf["tput"], color=color, lw=1.6, marker=".", label=label)
            ns = cf["n_star"]
            if ns is not None and np.isfinite(ns):
                inside = ns <= n_hi
                for ax in (ax_u, ax_t):
                    if inside:
                        ax.axvline(ns, color=color, ls=":", lw=1.4, label=f"N* = {ns:.2f} ({fam})")
                    else:
                        ax.plot([], [], color=color, ls=":", label=f"N* = {ns:.2f} ({fam}, beyond the axis)")
        labelled: set[str] = set()
        for i in members:
            run = runs[i]
            marker = SOURCE_MARKERS.get(run.source, "s")
            u, tp = run.summary.get("draft_utilization"), run.summary.get("throughput_tokens_per_s")
            # one legend entry per family and source: a sweep's points read as one series
            label = None if run.source in labelled else _legend(f"{fam} ({run.source})" if len(members) > 1
                                                                else run.display)
            labelled.add(run.source)
            kw = {"color": color, "marker": marker, "ms": 9, "ls": "none", "mec": "black", "mew": 0.8,
                  "label": label}
            if u is not None:
                ax_u.plot([run.n_targets], [100 * u], **kw)
            if tp is not None:
                ax_t.plot([run.n_targets], [tp], **kw)
    for ax in (ax_u, ax_t):
        ax.set_xlabel("number of targets N")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(color="#eeeeee")
        ax.set_axisbelow(True)
        ax.set_xlim(left=0.5)
    ax_u.set_ylabel("draft utilization (%)")
    ax_u.set_ylim(0, 105)
    ax_u.set_title("draft utilization (o simulated, ^ measured, diamond replayed; lines: the closed form)", fontsize=10)
    ax_t.set_ylabel("throughput (tokens/s, all targets)")
    ax_t.set_ylim(bottom=0)
    ax_t.set_title("system throughput", fontsize=10)
    handles, labels = ax_t.get_legend_handles_labels()  # the same entries as ax_u's, and then some
    extra_u = [(h, lb) for h, lb in zip(*ax_u.get_legend_handles_labels()) if lb not in labels]
    for h, lb in extra_u:
        handles.append(h)
        labels.append(lb)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(runs_title("Utilization and throughput vs number of targets", runs))
    return fig


# --------------------------------------------------------------------------- 5: fairness


def _grouped_bars(ax: Axes, runs: list[Run], value: Callable[[dict], float | None], scale: float) -> None:
    first = True
    for i, run in enumerate(runs):
        per = run.summary.get("per_target") or []
        n = max(len(per), 1)
        width = 0.8 / n
        vals = np.array([np.nan if value(t) is None else value(t) * scale for t in per], dtype=float)
        x = i - 0.4 + width * (np.arange(len(per)) + 0.5)
        ax.bar(x, np.nan_to_num(vals), width=width * 0.92, color=run_color(i), edgecolor="white", lw=0.5)
        if n <= 8:
            for xi, t in zip(x, per):
                ax.text(xi, 0, f"{t['target']}", ha="center", va="bottom", fontsize=7, color="white")
        if np.isfinite(vals).any():
            ax.hlines(np.nanmean(vals), i - 0.42, i + 0.42, color="black", ls="--", lw=1.2,
                      label="mean over the run's targets" if first else None)
            first = False
    ax.set_xticks(range(len(runs)))
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.grid(axis="y", color="#eeeeee")
    ax.set_axisbelow(True)


def fairness(runs: list[Run]) -> Figure:
    """Figure 5: per-target tokens/s and mean draft queue wait, one bar group per run; Jain's
    index (and, with weights, over rate / weight) under each group, and with TPOT objectives
    each target's attainment above its bar and the run's under the group."""
    fig = _figure(11, 4.8)
    ax_t, ax_w = fig.subplots(1, 2)
    _grouped_bars(ax_t, runs, lambda t: t.get("tokens_per_s"), 1.0)
    _grouped_bars(ax_w, runs, lambda t: t.get("queue_wait_mean_s"), 1e3)
    ticks = []
    for run in runs:
        j = run.summary.get("target_tokens_per_s_jain")
        if j is None and "target_tokens_per_s_jain" not in run.summary:  # a summary from before the key
            j = jain_index(t.get("tokens_per_s") for t in run.summary.get("per_target") or [])
        extra = [f"Jain {j:.3f}"] if j is not None else []
        per = run.summary.get("per_target") or []
        wj = run.summary.get("target_weighted_jain")
        if wj is not None and any(t.get("weight", 1.0) != 1.0 for t in per):
            extra.append(f"weighted Jain {wj:.3f}")
        slo = run.summary.get("slo_attainment")
        if slo is not None:
            extra.append(f"TPOT objective met {100 * slo:.0f}%")
        ticks.append(_tick_label(run, len(runs), *extra))
    for ax in (ax_t, ax_w):
        ax.set_xticklabels(ticks, fontsize=8)
        top = ax.get_ylim()[1]
        ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)  # room for the legend above the bars
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    for i, run in enumerate(runs):  # each target's TPOT-objective attainment above its bar
        per = run.summary.get("per_target") or []
        width = 0.8 / max(len(per), 1)
        for k, t in enumerate(per):
            a, rate = t.get("slo_attainment"), t.get("tokens_per_s")
            if a is not None and rate is not None and len(per) <= 16:
                ax_t.text(i - 0.4 + width * (k + 0.5), rate, f"{100 * a:.0f}%", ha="center", va="bottom", fontsize=6)
    ax_t.set_ylabel("tokens/s per target")
    ax_t.set_title("per-target throughput (bars: targets, numbered)", fontsize=10)
    ax_w.set_ylabel("mean draft queue wait (ms)")
    ax_w.set_title("per-target wait for the draft engine", fontsize=10)
    fig.suptitle(runs_title("Fairness across targets", runs))
    return fig


# --------------------------------------------------------------------------- 6: draft time


def _box_strip(ax: Axes, runs: list[Run], series: list[np.ndarray], cv_key: str, empty: str) -> None:
    import matplotlib.patches as mpatches
    from matplotlib.lines import Line2D

    data = [s if s.size else np.array([np.nan]) for s in series]
    ax.boxplot(data, positions=range(len(runs)), widths=0.5, showfliers=False, whis=(1, 99), zorder=3,
               medianprops={"color": "black", "lw": 1.6}, boxprops={"lw": 1.2}, whiskerprops={"lw": 1.0})
    for i, s in enumerate(series):
        if s.size == 0:
            continue
        rng = np.random.default_rng(i)
        pick = np.sort(rng.choice(s.size, STRIP_POINTS, replace=False)) if s.size > STRIP_POINTS else slice(None)
        pts = s[pick]
        alpha = 0.3 if pts.size >= 1000 else 0.55
        ax.scatter(i + rng.uniform(-0.2, 0.2, pts.size), pts, s=4, alpha=alpha, color=run_color(i), lw=0,
                   rasterized=True, zorder=2)
    labels = []
    for run, s in zip(runs, series):
        c = run.summary[cv_key] if cv_key in run.summary else metrics_cv(s)  # older summaries lack the key
        cv = f"CV {c:.2f}" if c is not None else empty
        labels.append(_tick_label(run, len(runs), cv))
    ax.set_xticks(range(len(runs)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(runs) - 0.4)
    filled = [s for s in series if s.size]
    medians = [float(np.median(s)) for s in filled]
    if filled and min(medians) > 0 and max(float(s.max()) for s in filled) > 8 * min(medians):
        ax.set_yscale("log")  # a long tail (or very different runs) would flatten the boxes
    else:
        ax.set_ylim(bottom=0)
    ax.grid(axis="y", color="#eeeeee")
    ax.set_axisbelow(True)
    ax.legend(handles=[mpatches.Patch(facecolor="white", edgecolor="black", label="box: quartiles, whiskers p1-p99"),
                       Line2D([], [], color="#777777", marker="o", ls="none", ms=3,
                              label=f"dots: tasks (up to {STRIP_POINTS} per run)")],
              fontsize=8, loc="upper right")


def draft_time(runs: list[Run]) -> Figure:
    """Figure 6: the distribution of the draft engine's time per task (the paper's "faster
    and more stable") and of each target's round time, box and strip per run."""
    fig = _figure(11, 4.8)
    ax_d, ax_r = fig.subplots(1, 2)
    _box_strip(ax_d, runs, [draft_task_times(r) * 1e3 for r in runs], "draft_task_time_cv", "no draft tasks")
    _box_strip(ax_r, runs, [round_times(r) * 1e3 for r in runs], "round_time_cv", "no speculative rounds")
    ax_d.set_ylabel("draft engine time per task (ms" + (", log scale)" if ax_d.get_yscale() == "log" else ")"))
    ax_d.set_title("draft time per task", fontsize=10)
    ax_r.set_ylabel("round time, send to verify end (ms" + (", log scale)" if ax_r.get_yscale() == "log" else ")"))
    ax_r.set_title("target round time", fontsize=10)
    fig.suptitle(runs_title("Draft task and round time distributions", runs))
    return fig


# --------------------------------------------------------------------------- 7: draft memory


def draft_memory(runs: list[Run]) -> Figure:
    """Figure 7: the draft KV bytes held over all tags over time (metrics.draft_kv_series),
    one line per run, with the draft's memory capacity (``draft.memory_bytes``) where set."""
    from ..metrics import draft_kv_series

    fig = _figure(11, 4.2)
    ax = fig.subplots()
    drawn = False
    for i, run in enumerate(runs):
        t, held = draft_kv_series(run.records)
        if not len(t):
            continue
        drawn = True
        color = run_color(i)
        evicted = run.summary.get("draft_evictions")
        extra = f", {evicted} evictions" if evicted else ""
        ax.step(t, held / 1e6, where="post", color=color, lw=1.2,
                label=_legend(f"{run.display}: peak {held.max() / 1e6:.4g} MB{extra}"))
        cap = ((run.scenario or {}).get("draft") or {}).get("memory_bytes")
        if cap:
            ax.axhline(cap / 1e6, color=color, ls="--", lw=1, label=_legend(f"{run.display}: draft.memory_bytes"))
    if not drawn:
        _no_data(ax, "no draft KV bytes recorded (kv_bytes_per_token 0, or no draft)")
    else:
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("time on the run's clock (s)")
    ax.set_ylabel("draft KV held, all tags (MB)")
    ax.grid(color="#eeeeee")
    fig.suptitle(runs_title("Draft memory over time", runs))
    return fig


# --------------------------------------------------------------------------- 8: serving targets


MAX_SERVING_LANES = 8  # targets drawn per run: more would be a blur


def serving(runs: list[Run]) -> Figure:
    """Figure 8 (runs with serving targets): each target's batch (sequences in each step) and
    its KV cache usage over time, from the steps table; one line per target, up to
    ``MAX_SERVING_LANES`` per run, solid for the batch and the KV share of capacity below."""
    fig = _figure(11, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    drawn = False
    for run in runs:
        st = run.records.steps
        if st is None or not len(st):
            continue
        targets = sorted(st["target"].unique())[:MAX_SERVING_LANES]
        colors = target_colors(len(targets))
        for c, t in zip(colors, targets):
            s = st[st["target"] == t]
            name = f"{run.display}: target {t}" if len(runs) > 1 else f"target {t}"
            top.step(s["t_start"], s["running"], where="post", color=c, lw=0.9, label=_legend(name))
            cap = s["kv_capacity"].to_numpy(float)
            if (cap > 0).all():
                bottom.step(s["t_start"], 100.0 * s["kv_tokens"] / cap, where="post", color=c, lw=0.9)
        drawn = True
    if not drawn:
        _no_data(top, "no serving targets (targets[].serving) in these runs")
    else:
        top.legend(fontsize=7, loc="upper right", ncol=2)
        if not bottom.lines:
            _no_data(bottom, "KV capacity unlimited (serving.kv_capacity_tokens not set)")
    top.set_ylabel("sequences in the step")
    bottom.set_ylabel("KV cache in use (% of capacity)")
    bottom.set_xlabel("time on the run's clock (s)")
    for ax in (top, bottom):
        ax.grid(color="#eeeeee")
    fig.suptitle(runs_title("Serving targets: batch and KV cache over time", runs))
    return fig
