"""The shipped profiles, one row per op (analysis/results/calibrate.md and models/README table).

Reads every compute profile in ``models/profiles/`` measured on a CPU (``--kind gpu`` for the
ones imported from the GPU kernel database, ``all`` for both) and prints a markdown table: the
spec, role, op, grid points, the fitted model with its in-sample and cross-validated MAPE, the
median time at the middle grid point, the spread, and when and how long it was measured. The
default (the CPU profiles in models/profiles) also goes into the results page. Rerun with
``python analysis/profiles_table.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _cli import write_results  # noqa: E402

from starsim.profiles import read_profile  # noqa: E402


def _point(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", type=Path, default=REPO / "models" / "profiles")
    ap.add_argument("--kind", choices=["cpu", "gpu", "all"], default="cpu",
                    help="the profiles' device kind (default cpu: measured here; gpu: imported)")
    args = ap.parse_args()
    lines = ["| spec | role | op | points | fitted model (s) | MAPE | CV MAPE | at the middle point | median ms | "
             "spread cv |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for path in sorted(args.dir.glob("*.yaml")):
        # link and stack profiles time no model; a .step.yaml is a serving step's cost file, not a profile
        skip = path.name.startswith(("link", "stack")) or path.name.endswith(".step.yaml")
        prof = None if skip else read_profile(path)
        if prof is None or prof.kind != "compute" or args.kind not in ("all", prof.device.get("kind")):
            continue
        spec, role = prof.model.get("spec"), prof.model.get("role")
        for name, op in prof.ops.items():
            k = len(op.inputs)
            rows = sorted(op.rows, key=lambda r: r[k])
            mid = rows[len(rows) // 2]
            at = ", ".join(f"{i} {_point(v)}" for i, v in zip(op.inputs, mid[:k]))
            if op.fit is None:
                form, mape, cv = "as measured (" + ", ".join(
                    f"{_point(r[0] * 1e3)} ms: {r[1] * 1e3:.1f}" for r in sorted(op.rows)) + ")", "", ""
            else:
                form, mape, cv = f"`{op.fit.form}`", f"{op.fit.mape_pct:.1f}%", f"{op.fit.cv_mape_pct:.1f}%"
            lines.append(f"| {spec} | {role} | {name} | {len(op.rows)} | {form} | {mape} | {cv} | {at} | "
                         f"{mid[k] * 1e3:.2f} | {op.noise_cv:.3f} |")
        p = prof.provenance
        ref = p.get("reference_matmul_s") or {}
        speed = f"; reference matmul {ref['before'] * 1e6:.0f} -> {ref['after'] * 1e6:.0f} us" if ref else ""
        notes.append(f"- `{path.name}`: {prof.device.get('name')}, {p.get('dtype')}, {prof.device.get('threads')} "
                     f"threads, torch {p.get('torch')}, transformers {p.get('transformers')}, {p.get('date')}, "
                     f"{p.get('wall_s')} s{speed}")
    table = "\n".join([*lines, "", *notes])
    print(table)
    print("\ncommand: python analysis/profiles_table.py")
    if args.kind == "cpu" and args.dir == REPO / "models" / "profiles":
        write_results("calibrate", "cpu-profiles", table, "python analysis/profiles_table.py")


if __name__ == "__main__":
    main()
