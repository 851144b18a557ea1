"""Every script in analysis/ answers ``--help`` without starting work: exit 0, its usage
printed, nothing written under the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# scripts, not the modules they share (``_cli.py``, ``gpu_pairs.py``: no ``__main__``)
SCRIPTS = sorted(p for p in (ROOT / "analysis").glob("*.py") if '__name__ == "__main__"' in p.read_text())


def _tree() -> set[Path]:
    return {p for d in ("analysis", "runs", "models", "scenarios") for p in (ROOT / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_there_are_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_starts_no_work(script):
    before = {p: p.stat().st_mtime_ns for p in _tree()}
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout
    after = {p: p.stat().st_mtime_ns for p in _tree()}
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]
