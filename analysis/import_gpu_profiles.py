"""Regenerate the shipped GPU profiles (models/profiles/*.{system}-{backend}-tp{N}.bfloat16.yaml)
from aiconfigurator-core's measured kernel database: one ``starsim calibrate import
aiconfigurator`` per pair of ``gpu_pairs.PAIRS``. Needs the gpu-db extra, no GPU.

    python analysis/import_gpu_profiles.py [--overhead-us 0]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_pairs import PAIRS  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--overhead-us", type=float, default=0.0, help="per-forward overhead (default 0: kernel only)")
    ap.add_argument("--out", default="models/profiles", help="profile directory (default models/profiles)")
    args = ap.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
