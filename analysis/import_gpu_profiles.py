"""Regenerate the shipped GPU profiles (models/profiles/*.{system}-{backend}-tp{N}.bfloat16.yaml)
from aiconfigurator-core's measured kernel database: one ``starsim calibrate import
aiconfigurator`` per pair of ``gpu_pairs.PAIRS``. Needs the gpu-db extra, no GPU.

    python analysis/import_gpu_profiles.py [--overhead-us 0]
    python analysis/import_gpu_profiles.py --table     # the table of the shipped profiles (analysis/results/gpu.md)

Both put that table into analysis/results/gpu.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import write_results  # noqa: E402
from gpu_pairs import PAIRS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--overhead-us", type=float, default=0.0, help="per-forward overhead (default 0: kernel only)")
    ap.add_argument("--out", default="models/profiles", help="profile directory (default models/profiles)")
    ap.add_argument("--table", action="store_true",
                    help="print the table of the shipped profiles (and put it in the results page), no import")
    args = ap.parse_args(argv)
    if args.table:
        print(table())
        if args.out == "models/profiles":
            write_results("gpu", "gpu-profiles", table(), "python analysis/import_gpu_profiles.py --table")
        return 0
    try:
        import aiconfigurator_core  # noqa: F401
    except ImportError:
        print("error: needs aiconfigurator-core: pip install -e '.[gpu-db]'", file=sys.stderr)
        return 2
    for p in PAIRS:
        cmd = ["starsim", "calibrate", "import", "aiconfigurator", "--spec", p.spec, "--system", p.system,
               "--backend", p.backend, "--tp", str(p.tp), "--draft-tp", str(p.draft_tp),
               "--overhead-us", f"{args.overhead_us:g}", "--out", args.out]
        print("$ " + " ".join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=ROOT)
        if r.returncode:
            return r.returncode
    if args.out == "models/profiles":  # the shipped profiles: their table on the results page
        write_results("gpu", "gpu-profiles", table(), "python analysis/import_gpu_profiles.py --table")
    return 0


def table(context: int = 1024) -> str:
    """Markdown: per shipped pair, a few times from the fits and where they came from."""
    from starsim.profiles import read_profile

    lines = ["| pair | system, backend (data version) | decode ms | verify 60 tok ms | draft round ms | "
             "prefill 512 ms | fit CV MAPE | from measured rows |", "|---|---|---|---|---|---|---|---|"]
    for p in PAIRS:
        t, d = read_profile(ROOT / p.profile("target")), read_profile(ROOT / p.profile("draft"))
        ops = {**t.ops, **d.ops}
        cv = [o.fit.cv_mape_pct for o in ops.values() if o.fit]
        frac = [*t.provenance["measured_fraction"].values(), *d.provenance["measured_fraction"].values()]
        tree = d.ops["draft_round"].fixed["tree"]
        lines.append(
            f"| {p.label.split(',')[0]} | {p.system}, {p.backend} {t.provenance['backend_version']}"
            f"{f' (TP {p.tp})' if p.tp > 1 else ''} | {1e3 * t.ops['decode'].predict(context=context):.2f} | "
            f"{1e3 * t.ops['verify'].predict(tokens=60, context=context):.2f} | "
            f"{1e3 * d.ops['draft_round'].predict(tokens=3, context=context):.2f} "
            f"(tree {tree['top_k']}/{tree['depth']}/{tree['tokens']}) | "
            f"{1e3 * t.ops['prefill'].predict(tokens=512):.1f} | {min(cv):.1f}-{max(cv):.1f}% | "
            f"{100 * min(frac):.0f}-{100 * max(frac):.0f}% |")
    return "\n".join(lines) + (f"\n\nTimes from the fits at context {context} (a draft round encodes 3 new tokens); "
                               "kernel time only (per-forward overhead 0).")


if __name__ == "__main__":
    sys.exit(main())
