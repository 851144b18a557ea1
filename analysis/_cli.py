"""What the analysis scripts share: the repository root, running the starsim CLI there (each
figure of a results page is made through the commands a user would type), and keeping the
results pages (``analysis/results/*.md``) in step with the tables the scripts write."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "analysis" / "results"


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


def machine() -> str:
    """The machine a table was measured on: its CPU, and the GPU when torch has one in use."""
    from starsim.profile_fields import cpu_name

    torch = sys.modules.get("torch")  # only where the script ran torch: no import, no CUDA start here
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_initialized() else None
    return cpu_name() + (f", GPU: {gpu}" if gpu else "")


def write_results(page: str, key: str, table: str, command: str, results: Path = RESULTS) -> Path:
    """Put ``table`` into the results page ``analysis/results/PAGE.md``, in place of the block
    between ``<!-- begin KEY: written by COMMAND -->`` and ``<!-- end KEY -->``, stamped with
    the command, today's UTC date and the machine (the page says what wrote each table, when
    and where). The rest
    of the page is left as it is. A page or block that is not there ends the script with one
    line: the figures and tables under analysis/figures are written by then."""
    path = results / f"{page}.md"
    block = re.compile(rf"<!-- begin {re.escape(key)}: .*?-->\n.*?<!-- end {re.escape(key)} -->", re.DOTALL)
    text = path.read_text() if path.is_file() else ""
    if not block.search(text):
        raise SystemExit(f"{Path(sys.argv[0]).name}: {_shown(path)} has no block '{key}' "
                         f"(<!-- begin {key}: ... --> ... <!-- end {key} -->): the page was not updated")
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    new = (f"<!-- begin {key}: written by {command} -->\n\n{table.strip()}\n\n"
           f"<sub>Written by `{command}` on {day} (UTC), on {machine()}.</sub>\n\n<!-- end {key} -->")
    path.write_text(block.sub(lambda _: new, text, count=1))
    print(f"updated {_shown(path)} ({key})", file=sys.stderr)
    return path


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


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
