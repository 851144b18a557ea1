"""How far two profiles agree, point by point: ``calibrate compare`` and the GPU check's
step 2 share this module.

Two profiles of one spec (``agreement``): at each grid point both measured, raw, and
normalized for the machine's speed at each point (the reference kernel each row keeps beside
it, ``ref_s``). A shared machine's speed moves by 10-30% for minutes at a time, so two
calibrations taken at different moments disagree by that much even when nothing else
differs. Normalized, each point's time is divided by the reference timed beside it: what
remains is what the two calibrations really disagree on.

A measured profile against another's fit (``against_fit``, ``calibrate compare --fit``): at
each point the first measured, its time over the second's fitted prediction there, e.g. a
GPU calibration against the profile imported from aiconfigurator's database for that GPU.

Both pair an op's points the same way (:func:`paired`) and report at the same middle point
(:func:`middle`: the point whose first-profile time is the median).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..profiles import Op, ProfileFile, build_op

Point = tuple[tuple, float, float]  # (grid point in A's inputs, A's time, B's time there)


def paired(a: Op, b: Op, fit: bool = False) -> list[Point]:
    """A's grid points beside B's time there: with ``fit``, every point A measured (in A's
    row order) and B's fitted prediction; else the points both measured (sorted), B's
    measured time."""
    k = len(a.inputs)
    if fit:
        return [(tuple(r[:k]), r[k], b.predict(**dict(zip(a.inputs, r[:k])))) for r in a.rows]
    ma, mb = _times(a, False), _times(b, False)
    return [(c, ma[c], mb[c]) for c in sorted(set(ma) & set(mb))]


def middle(times: Sequence[float]) -> int:
    """The index of the median time (the upper one of an even count; ties in list order)."""
    return sorted(range(len(times)), key=times.__getitem__)[len(times) // 2]


# --------------------------------------------------------------------------- two measurements


@dataclass
class OpAgreement:
    """B against A on one op: at the median grid point (the point whose A time is the
    median), over all common points, and where the two fits predict that point."""

    op: str
    points: int
    median_point: tuple
    raw_pct: float  # B vs A at the median point, percent
    raw_median_abs_pct: float
    raw_max_abs_pct: float
    fit_pct: float  # the fits at the median point (nan: one has none)
    norm_pct: float | None  # as raw_pct, each time in units of the reference beside it (None: no ref_s)
    norm_median_abs_pct: float | None
    norm_max_abs_pct: float | None


def _times(op: Op, normalized: bool) -> dict[tuple, float] | None:
    """Grid point -> its time; normalized: in units of the reference timed beside it (so two
    profiles taken at different speeds compare as if at one; None without ``ref_s``)."""
    k = len(op.inputs)
    if normalized and "ref_s" not in op.columns:
        return None
    y = op.column("median_s") / op.column("ref_s") if normalized else op.column("median_s")
    return {tuple(r[:k]): float(v) for r, v in zip(op.rows, y)}


def _diffs(ma: dict, mb: dict, common: list, mid: tuple) -> tuple[float, float, float]:
    d = np.array([100.0 * (mb[c] - ma[c]) / ma[c] for c in common])
    return 100.0 * (mb[mid] - ma[mid]) / ma[mid], float(np.median(np.abs(d))), float(np.max(np.abs(d)))


def agreement(a: ProfileFile, b: ProfileFile) -> list[OpAgreement]:
    """Each op both profiles measured at common grid points, B against A."""
    out = []
    for name, op in a.ops.items():
        other = b.ops.get(name)
        if other is None or other.inputs != op.inputs:
            continue
        pts = paired(op, other)
        if not pts:
            continue
        common = [c for c, _, _ in pts]
        mid = common[middle([ta for _, ta, _ in pts])]
        raw = _diffs({c: ta for c, ta, _ in pts}, {c: tb for c, _, tb in pts}, common, mid)
        na, nb = _times(op, True), _times(other, True)
        norm = _diffs(na, nb, common, mid) if na is not None and nb is not None else (None, None, None)
        fit = float("nan")
        if op.fit is not None and other.fit is not None:  # the fits smooth out one point's noise
            at = dict(zip(op.inputs, mid))
            fit = 100.0 * (other.predict(**at) - op.predict(**at)) / op.predict(**at)
        out.append(OpAgreement(name, len(common), mid, raw[0], raw[1], raw[2], fit, *norm))
    return out


def format_agreement(rows: list[OpAgreement]) -> str:
    """The table ``calibrate compare`` prints."""
    lines = [f"  {'op':16s} {'points':>6s} {'median point':>20s} {'raw there':>10s} {'normalized':>10s} "
             f"{'fits there':>10s} {'median |diff| raw / norm':>24s} {'max raw / norm':>15s}"]

    def pct(v, signed=True):
        return f"{'-':>9s}" if v is None or v != v else (f"{v:+8.2f}%" if signed else f"{v:7.2f}%")

    for r in rows:
        point = str(tuple(int(v) if v == int(v) else v for v in r.median_point))
        lines.append(f"  {r.op:16s} {r.points:6d} {point:>20s} {pct(r.raw_pct):>10s} {pct(r.norm_pct):>10s} "
                     f"{pct(r.fit_pct):>10s} {pct(r.raw_median_abs_pct, False):>12s} / "
                     f"{pct(r.norm_median_abs_pct, False):>9s} {r.raw_max_abs_pct:6.1f}% / "
                     f"{'-' if r.norm_max_abs_pct is None else f'{r.norm_max_abs_pct:.1f}%'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- a measurement against a fit


@dataclass
class FitComparison:
    """Measured profiles against fitted ones (the GPU check's ``compare.csv``,
    ``compare_points.csv`` and the notes of ``compare.md``)."""

    ops: list[dict] = field(default_factory=list)  # one row per op: the ratio's median and range
    points: list[dict] = field(default_factory=list)  # one row per measured point
    notes: list[str] = field(default_factory=list)  # what was not compared, and why


def against_fits(measured: dict[str, ProfileFile], fitted: dict[str, ProfileFile],
                 missing: Sequence[str] = ()) -> FitComparison:
    """Per role in both (role -> profile), :func:`against_fit`; ``missing``: the roles
    without a fitted profile, as the notes name them."""
    result = FitComparison(notes=[f"no imported profile for the {m}" for m in missing])
    for role, mine in measured.items():
        if role in fitted:
            against_fit(mine, fitted[role], role, result)
    return result


def against_fit(measured: ProfileFile, fitted: ProfileFile, role: str,
                into: FitComparison | None = None) -> FitComparison:
    """Per op in both profiles: measured time / the fit's prediction at each of the measured
    grid points (rows tagged with ``role``), added to ``into``. A fitted ``decode`` that the
    measured profile lacks is compared with its verify's one-token points."""
    result = into if into is not None else FitComparison()
    pairs = [(name, measured.ops[name], fitted.ops[name], [])
             for name in sorted(set(measured.ops) & set(fitted.ops))]
    decode = _decode_points(measured) if "decode" in fitted.ops and "decode" not in measured.ops else None
    if decode is not None:
        pairs.append(("decode", decode, fitted.ops["decode"], ["measured: verify at tokens 1"]))
    only = sorted((set(measured.ops) ^ set(fitted.ops)) - ({"decode"} if decode is not None else set()))
    if only:
        result.notes.append(f"{role}: in one profile only: " + ", ".join(
            f"{o} ({'measured' if o in measured.ops else 'imported'})" for o in only))
    for name, a, b, note in pairs:
        why = _fit_op(result, role, name, a, b, note)
        if why:
            result.notes.append(f"{role} {name}: {why}")
    return result


def _fit_op(result: FitComparison, role: str, name: str, a: Op, b: Op, note: list[str]) -> str | None:
    """One op's points and summary row added to ``result``; why it was not compared, else None."""
    if b.fit is None:
        return "the imported op has no fit (kept as measured): not compared"
    if set(a.inputs) != set(b.inputs):
        return f"inputs differ ({', '.join(a.inputs)} vs {', '.join(b.inputs)})"
    if a.fixed.get("tree") and b.fixed.get("tree") and a.fixed["tree"] != b.fixed["tree"]:
        t = lambda f: "/".join(str(f["tree"][k]) for k in ("top_k", "depth", "tokens"))  # noqa: E731
        note.append(f"tree {t(a.fixed)} measured vs {t(b.fixed)} imported")
    rows = []
    for point, mine, pred in paired(a, b, fit=True):
        x = dict(zip(a.inputs, point))
        inside = all(lo <= x[i] <= hi for i, (lo, hi) in b.range.items() if i in x)
        rows.append({"role": role, "op": name, **{i: num(v) for i, v in x.items()}, "measured_ms": mine * 1e3,
                     "imported_ms": pred * 1e3, "ratio": mine / pred if pred > 0 else math.nan,
                     "inside_imported_range": inside})
    good = [p for p in rows if math.isfinite(p["ratio"])]
    if not good:
        return "the imported fit predicts no positive time at the measured points"
    ratios = np.array([p["ratio"] for p in good])
    mid = good[middle([p["measured_ms"] for p in good])]
    result.ops.append({"role": role, "op": name, "points": len(good),
                       "inside_imported_range": sum(p["inside_imported_range"] for p in good),
                       "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()),
                       "ratio_max": float(ratios.max()),
                       # what a per-forward overhead would have to add (the import's --overhead-us)
                       "diff_median_ms": float(np.median([p["measured_ms"] - p["imported_ms"] for p in good])),
                       "middle_point": ", ".join(f"{i} {mid[i]}" for i in a.inputs),
                       "measured_ms": mid["measured_ms"], "imported_ms": mid["imported_ms"],
                       "note": "; ".join(note)})
    result.points += rows
    return None


def _decode_points(prof: ProfileFile) -> Op | None:
    """The measured verify's one-token points as a ``decode`` op (context alone), which the
    import prices and calibrate does not time apart; None without such points."""
    v = prof.ops.get("verify")
    if v is None:
        return None
    t, c = v.inputs.index("tokens"), v.inputs.index("context")
    rows = [(r[c], *r[len(v.inputs):]) for r in v.rows if r[t] == 1]
    return build_op(["context"], rows, fit=False) if rows else None


def num(v: float) -> int | float:
    """A grid value as written: 16, not 16.0."""
    return int(v) if float(v).is_integer() else v


def fit_table(ops: list[dict]) -> list[str]:
    """The per-op rows of :class:`FitComparison` as a markdown table."""
    out = ["| role | op | points (inside imported range) | measured / imported, median | range | "
           "measured - imported, median ms | at the middle point | measured ms | imported ms | note |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for o in ops:
        out.append(f"| {o['role']} | {o['op']} | {o['points']} ({o['inside_imported_range']}) | "
                   f"{o['ratio_median']:.3f} | {o['ratio_min']:.3f}-{o['ratio_max']:.3f} | "
                   f"{o['diff_median_ms']:+.3f} | {o['middle_point']} | {o['measured_ms']:.3f} | "
                   f"{o['imported_ms']:.3f} | {o['note']} |")
    if not ops:
        out.append("| | (no op in both profiles) | | | | | | | | |")
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV, the columns in first-seen order (the ops' inputs differ)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
