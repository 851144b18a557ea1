"""Running the check's ``starsim`` commands, one process group each, against one deadline."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .options import REPO


@dataclass
class Step:
    """One command of the check, as run (or skipped): its result is a row of ``steps.json``."""

    name: str
    argv: list[str]  # after `starsim`
    est_s: float
    interruptible: bool = False  # calibrate: Ctrl-C at the deadline keeps what was measured
    wrote: Callable[[], bool] | None = None  # whether a cut step left its output (a partial profile)
    result: dict = field(default_factory=dict)


class Runner:
    """Runs ``starsim`` steps one after another against one deadline, each logged to
    ``OUT/logs/NAME.log``. A step's deadline keeps the later steps' estimated time (scaled
    down when the budget is below the estimates' sum, so every step gets its share)."""

    def __init__(self, out: Path, budget_s: float, say: Callable[[str], None], t0: float, est_total_s: float) -> None:
        self.out, self.say = out, say
        self.t0 = t0
        self.deadline = self.t0 + budget_s
        self.scale = min(1.0, budget_s / est_total_s) if est_total_s > 0 else 1.0
        self.done: list[dict] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, step: Step, later_s: float) -> dict:
        cmd = "starsim " + shlex.join(step.argv)
        log = self.out / "logs" / f"{step.name}.log"
        limit = self.deadline - time.monotonic() - later_s * self.scale
        res = {"step": step.name, "command": cmd, "log": str(log.relative_to(self.out)), "wall_s": 0.0, "rc": None}
        if limit < min(30.0, 0.5 * step.est_s * self.scale):  # not worth starting: its share is spent
            res["status"] = "skipped: the time budget was spent"
            self.say(f"  {step.name}: skipped (time budget)")
            return self._keep(step, res)
        self.say(f"  {step.name}: {cmd}")
        t = time.monotonic()
        rc, cut = _run_logged(step, cmd, log, limit)
        res.update(wall_s=round(time.monotonic() - t, 1), rc=rc)
        if rc == 0:
            res["status"] = "ok"
        elif cut and step.interruptible and step.wrote is not None and step.wrote():
            res["status"] = "cut at its deadline: what it measured is written (partial)"
        elif cut:
            res["status"] = f"stopped at its deadline ({limit:.0f} s)"
        else:
            res["status"] = f"failed (exit {rc})"
        self.say(f"  {step.name}: {res['status']} in {res['wall_s']:.1f} s")
        return self._keep(step, res)

    def skip(self, step: Step, why: str) -> dict:
        self.say(f"  {step.name}: skipped ({why})")
        return self._keep(step, {"step": step.name, "command": "", "wall_s": 0.0, "rc": None,
                                 "status": f"skipped: {why}"})

    def _keep(self, step: Step, res: dict) -> dict:
        step.result = res
        self.done.append(res)
        return res

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _run_logged(step: Step, cmd: str, log: Path, limit: float) -> tuple[int, bool]:
    """``python -m starsim.cli ARGV`` into ``log`` for at most ``limit`` seconds: (exit status,
    whether it was stopped at the limit)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as fh:
        fh.write(f"$ {cmd}\n")
        fh.flush()
        # a session of its own: the whole group (execute's draft and target processes) can be stopped
        proc = subprocess.Popen([sys.executable, "-m", "starsim.cli", *step.argv], cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            return _stop(proc, step.interruptible), True
        except KeyboardInterrupt:
            _stop(proc, False)
            raise


def _stop(proc: subprocess.Popen, interrupt: bool) -> int:
    """Stop a step's process group: Ctrl-C first for calibrate (it writes what it measured),
    else SIGTERM; SIGKILL when it does not end."""
    plan = ([(signal.SIGINT, 30.0)] if interrupt else []) + [(signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)]
    for sig, wait in plan:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()
