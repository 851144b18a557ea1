"""What the analysis scripts share: the repository root, and running the starsim CLI there
(each README figure is made through the commands a user would type)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory line in MB (VmHWM: this process image's peak resident
    memory, VmRSS: its resident memory now). Not ru_maxrss: Linux carries that across exec
    from the parent, which may have run a benchmark already."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def no_options(doc: str) -> None:
    """For a script that takes no options: ``--help`` prints its docstring and starts no work."""
    argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()


def starsim(*args: str) -> None:
    """``starsim ARGS`` from the repository root, with this Python; output discarded. A failure
    (a missing pair, a bad scenario) ends the script with one line after the command's own
    message, not a traceback."""
    r = subprocess.run([sys.executable, "-m", "starsim.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(f"{Path(sys.argv[0]).name}: `starsim {' '.join(args[:2])} ...` failed with exit code "
                         f"{r.returncode} (its message is above)")


def validated(scenario: str, out, *args: str) -> dict:
    """``starsim validate SCENARIO ARGS --out OUT`` and its one point: ``{"metrics": {name: row},
    "point": the point's dict}`` from validation.json."""
    import json

    starsim("validate", scenario, *args, "--out", str(out))
    point = json.loads((Path(out) / "validation.json").read_text())["points"][0]
    return {"metrics": {r["metric"]: r for r in point["metrics"]}, "point": point}


def error_table(title: str, metrics: dict, keys: tuple[str, ...]) -> str:
    """A markdown table of ``keys`` from :func:`validated`'s metrics: real, sim and the sim's error."""
    lines = [f"| {title} | real | sim | sim err |", "|---|---|---|---|"]
    for key in keys:
        row = metrics[key]
        unit = f" ({row['unit']})" if row["unit"] else ""
        lines.append(f"| {row['label']}{unit} | {row['real']:.4g} | {row['sim']:.4g} | {row['sim_err_pct']:+.1f}% |")
    return "\n".join(lines)


def print_written(md: Path, script: str) -> int:
    """``--readme``: print the table a script last wrote (exit 0), or say it is not written yet
    (one line, exit 2)."""
    if not md.is_file():
        print(f"error: {md.relative_to(REPO)} not written yet: run python analysis/{script} first", file=sys.stderr)
        return 2
    print(md.read_text())
    return 0


def has_gpu_db() -> bool:
    """Whether aiconfigurator-core is installed; if not, one line saying how to get it."""
    try:
        import aiconfigurator_core  # noqa: F401
    except ImportError:
        print("error: needs aiconfigurator-core: pip install -e '.[gpu-db]'", file=sys.stderr)
        return False
    return True
