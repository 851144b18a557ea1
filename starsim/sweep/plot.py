"""``starsim plot``: any metric of a sweep's results table against any swept field.

One line per value of ``hue`` (optional), one panel per value of ``col`` (optional).
Rows can be narrowed with ``where`` (``field=value``). Swept fields that none of x, hue,
col and where fix are averaged over, and the figure says so, so a line never silently
mixes points. The figure's footer names the table it was drawn from.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pandas as pd
import yaml

from ..errors import StarsimError
from .run import RESULTS


def read_results(path: str | Path) -> tuple[pd.DataFrame, list[str], Path]:
    """(table, swept fields, file) from a results file or a sweep's output folder."""
    p = Path(path)
    f = p / RESULTS if p.is_dir() else p
    if not f.is_file():
        raise StarsimError(f"{path}: no results table here (expected a sweep's {RESULTS} or its folder)")
    try:
        df = pd.read_parquet(f)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise StarsimError(f"{f}: not a readable Parquet table ({type(e).__name__}: {e})") from None
    manifest = f.parent / "sweep.json"
    fields = json.loads(manifest.read_text())["fields"] if manifest.is_file() else []
    fields = [c for c in fields if c in df.columns]
    if not fields:  # no manifest: the columns before "point"
        cols = list(df.columns)
        fields = cols[: cols.index("point")] if "point" in cols else []
    return df, fields, f


def _need(df: pd.DataFrame, col: str | None, what: str, fields: list[str]) -> None:
    if col is not None and col not in df.columns:
        close = difflib.get_close_matches(col, [str(c) for c in df.columns], n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        metrics = [c for c in df.columns if c not in fields and c not in ("point", "id")]
        raise StarsimError(f"{what} {col!r}: not a column of the table{hint}; swept fields: "
                           f"{', '.join(fields) or 'none'}; metrics: {', '.join(metrics[:12])}"
                           f"{' ...' if len(metrics) > 12 else ''}")


def _where(df: pd.DataFrame, conds: list[str], fields: list[str]) -> tuple[pd.DataFrame, list[str]]:
    used = []
    for c in conds:
        k, eq, v = c.partition("=")
        if not eq:
            raise StarsimError(f"--where {c}: expected FIELD=VALUE")
        _need(df, k, "--where", fields)
        want = yaml.safe_load(v)
        col = df[k]
        keep = col.astype(str) == str(want) if col.dtype == object else col == want
        if not keep.any():
            raise StarsimError(f"--where {c}: no row has {k} = {v}; values: {sorted(col.astype(str).unique())[:10]}")
        df, used = df[keep], [*used, k]
    return df, used


def plot_results(path: str | Path, x: str, y: str, hue: str | None = None, col: str | None = None,
                 where: list[str] | None = None, out: str | Path | None = None, logx: bool = False,
                 logy: bool = False) -> Path:
    """Draw ``y`` against ``x``; returns the image written (default: next to the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df, fields, src = read_results(path)
    for name, what in ((x, "--x"), (y, "--y"), (hue, "--hue"), (col, "--col")):
        _need(df, name, what, fields)
    if not pd.api.types.is_numeric_dtype(df[y]):
        raise StarsimError(f"--y {y!r}: not a numeric column")
    df, fixed = _where(df, where or [], fields)
    shown = [c for c in dict.fromkeys((x, hue, col, *fixed)) if c is not None]
    # fields that still vary once the shown ones are fixed (a zip partner of x does not)
    averaged = [f for f in fields if f not in shown and df.groupby(shown)[f].nunique().max() > 1]
    panels = [None] if col is None else sorted(df[col].unique(), key=_order)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, pv in zip(axes[0], panels):
        sub = df if pv is None else df[df[col] == pv]
        groups = [(None, sub)] if hue is None else sorted(sub.groupby(hue), key=lambda g: _order(g[0]))
        for hv, g in groups:
            line = g.groupby(x, sort=True)[y].mean()
            label = None if hue is None else f"{hue} = {hv}"
            ax.plot(line.index, line.values, marker="o", ms=4, lw=1.5, label=label)
        ax.set_xlabel(x)
        ax.set_title(f"{col} = {pv}" if pv is not None else y, fontsize=10)
        ax.grid(alpha=0.3)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if hue is not None:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(_label(y))
    try:  # the table's path as the user would type it from here
        shown_src = src.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown_src = src
    note = f"from {shown_src}"
    if averaged:
        note += f"; mean over {', '.join(averaged)}"
    if fixed:
        note += "; " + ", ".join(where or [])
    fig.text(0.01, 0.005, note, fontsize=7, color="0.4", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    dest = Path(out) if out else src.parent / f"{y}_vs_{x}{'_by_' + hue if hue else ''}.png".replace("/", "_")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=130)
    plt.close(fig)
    return dest


def _order(v):
    """Sort key that puts numbers in numeric order and anything else after, as text."""
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _label(metric: str) -> str:
    """A metric's axis label with its unit, read off its name (``_s``: seconds, ...)."""
    if metric.endswith("tokens_per_s"):
        return f"{metric} (tokens/s)"
    if metric.endswith("_per_s"):
        return f"{metric} (1/s)"
    if metric.endswith("_s"):
        return f"{metric} (s)"
    if "utilization" in metric or "ratio" in metric:
        return f"{metric} (0-1)"
    return metric
