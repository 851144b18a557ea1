"""How far two profiles of one spec agree, point by point: raw, and normalized for the
machine's speed at each point (the reference kernel each row keeps beside it, ``ref_s``).

A shared machine's speed moves by 10-30% for minutes at a time, so two calibrations taken at
different moments disagree by that much even when nothing else differs. Normalized, each
point's time is divided by the reference timed beside it: what remains is what the two
calibrations really disagree on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..profiles import Op, ProfileFile


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
        ma, mb = _times(op, False), _times(other, False)
        common = sorted(set(ma) & set(mb))
        if not common:
            continue
        mid = sorted(common, key=lambda c: ma[c])[len(common) // 2]
        raw = _diffs(ma, mb, common, mid)
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
