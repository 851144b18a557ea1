"""The check itself: the options resolved into a :class:`Check` (every prerequisite first,
one line each), then a table of steps run by one loop, then ``steps.json`` and ``summary.md``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import StarsimError
from .device import Fail, device_info, git_state, shown, slug, system_for
from .files import pair_spec, scenario
from .options import FIGURES, GPU, PAIR_OPS, REPO, SCRIPT, SYSTEMS, TOY, Size, readme
from .runner import Runner, Step
from .summary import clock, summary_md

if TYPE_CHECKING:
    from ..compare import FitComparison


@dataclass
class Check:
    """What the options resolve to, and what the steps share (``compared``: step 2's outcome)."""

    args: argparse.Namespace  # as given (calibrate gets --spec and --dtype as given)
    device: str
    info: dict  # device_info
    size: Size
    spec: str  # the spec's name
    dtype: str
    grid: str
    ns: list[int]  # target counts of the real runs
    system: str | None
    system_note: str
    imported: dict[str, Path]  # role -> imported profile (empty with --no-compare)
    missing_imported: list[str]
    pair: Path
    out: Path
    t0: float  # the budget counts from here
    command: str  # how the check was started (steps.json, summary.md)
    by: str  # what wrote the scenario, as its description says
    compared: dict = field(default_factory=dict)

    @property
    def profiles(self) -> Path:
        return self.out / "profiles"

    @property
    def pair_name(self) -> str:
        # its profiles sit beside the spec's: a name of its own (calibrate --ops would merge same-named files)
        return self.pair.name if self.pair.name != self.spec else f"{self.pair.name}-pair"

    @property
    def scenario(self) -> Path:
        return self.out / "scenario.yaml"

    def found(self, spec_name: str, role: str) -> Path | None:
        """The profile calibrate wrote for ``spec_name``'s ``role``, if any."""
        hits = sorted(self.profiles.glob(f"{spec_name}.{role}.*.yaml"))
        return hits[0] if hits else None

    def say(self, message: str) -> None:
        print(message, flush=True)


# --------------------------------------------------------------------------- the options, resolved


def resolve(args: argparse.Namespace, t0: float, command: str, by: str) -> Check:
    """Every prerequisite checked before any work (Fail: one line); the output directory made."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise Fail(f"--device {args.device}: expected cpu or cuda[:K]")
    device = "cuda:0" if args.device == "cuda" else args.device  # a scenario's `torch: cuda` means unit k on cuda:k
    ns = _targets(args.targets)
    size = TOY if device == "cpu" else GPU
    from ...models.specs import load_spec

    try:
        spec = load_spec(args.spec or size.spec)
    except StarsimError as e:
        raise Fail(f"--spec {' '.join(str(e).split())}") from None  # the message starts with the name
    if args.pair is not None:
        args.pair = args.pair.resolve()
        missing = [p for p in ("target", "draft", "tokenizer.json") if not (args.pair / p).exists()]
        if missing:
            raise Fail(f"--pair {args.pair}: not a built pair (no {', '.join(missing)}); "
                       f"starsim models build-pair --out {args.pair}")
    info = device_info(device)  # Fail: no such CUDA device
    dtype = args.dtype or spec.dtype.get(info["kind"], "float32")
    mapped = system_for(info["name"]) if info["kind"] == "cuda" else None
    system = args.system or (mapped[0] if mapped else None) or ("cpu" if info["kind"] == "cpu" else None)
    system_note = ("given by --system" if args.system else "exact" if mapped and mapped[1]
                   else "nearest: the database has SXM parts only" if mapped else "")
    imported, missing_imported = ({}, []) if args.no_compare else _imported(args, spec.name, system, dtype, info)
    out = _out_dir(args.out, info)
    return Check(args=args, device=device, info=info, size=size, spec=spec.name, dtype=dtype,
                 grid=args.grid or size.grid, ns=ns, system=system, system_note=system_note, imported=imported,
                 missing_imported=missing_imported, pair=args.pair or out / "quick-pair", out=out, t0=t0,
                 command=command, by=by)


def _targets(text: str) -> list[int]:
    try:
        ns = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        ns = []
    if not ns or ns[0] < 1:
        raise Fail(f"--targets {text}: expected target counts >= 1, e.g. 1,2")
    return ns


def _imported(args: argparse.Namespace, spec: str, system: str | None, dtype: str,
              info: dict) -> tuple[dict[str, Path], list[str]]:
    """The imported profile of each role (role -> path) and the roles without one; Fail with none."""
    if system is None:
        raise Fail(f"no aiconfigurator system for the device {info['name']!r}: give --system "
                   f"({', '.join(s for _, s in SYSTEMS)}) or --no-compare")
    paths, missing = {}, []
    for role in ("target", "draft"):
        p = Path(args.imported.format(spec=spec, role=role, system=system, backend=args.backend, tp=args.tp,
                                      dtype=dtype))
        p = p if p.is_absolute() else REPO / p
        if p.is_file():
            paths[role] = p
        else:
            missing.append(f"{role} ({p})")
    if not paths:
        raise Fail(f"no imported profile: {'; '.join(missing)}; run `starsim calibrate import "
                   "aiconfigurator` first, or give --imported TEMPLATE, --system or --no-compare")
    return paths, missing


def _out_dir(out: Path | None, info: dict) -> Path:
    """``--out``, or a new directory under the figures (a second check the same day: ``-2``, ...)."""
    if out is None:
        base = REPO / FIGURES / f"{dt.date.today().isoformat()}-{slug(info['name'])}"
        out, k = base, 2
        while out.exists() and any(out.iterdir()):
            out, k = base.with_name(f"{base.name}-{k}"), k + 1
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Fail(f"--out {out}: exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def role_ops(ops: str | None) -> dict[str, str | None]:
    """``--ops`` split by role (calibrate takes only the ops of its ``--roles``); a role left
    without any is not calibrated. None: every op of both."""
    if not ops:
        return {"target": None, "draft": None}
    names = [o.strip() for o in ops.split(",") if o.strip()]
    by_role = {"target": [o for o in names if not o.startswith("draft")],
               "draft": [o for o in names if o.startswith("draft")]}
    return {role: ",".join(v) for role, v in by_role.items() if v}


# --------------------------------------------------------------------------- the steps


def _common(c: Check) -> list[str]:
    # one thread, as each process of a real run has (and a shared CPU's other tenants cost less)
    return ["--device", c.device, "--threads", "1", "--out", str(c.profiles), "--quiet"]


def _calibrate_spec(c: Check, role: str) -> list[str]:
    ops = role_ops(c.args.ops)[role]
    return (["calibrate", "compute", "--spec", c.args.spec or c.spec, "--roles", role, "--grid", c.grid, *_common(c)]
            + (["--dtype", c.args.dtype] if c.args.dtype else []) + (["--ops", ops] if ops else []))


def _build_pair(c: Check, _: Any) -> list[str]:
    return ["models", "build-pair", "--quick", "--out", str(c.pair), "--quiet"]


def _calibrate_pair(c: Check, _: Any) -> list[str]:
    # the pair's own spec is written once the pair exists (its configs); the step reads it then
    return ["calibrate", "compute", "--spec", str(c.out / "pair-spec.yaml"), "--grid", c.size.pair_grid, "--ops",
            PAIR_OPS, *_common(c)]


def _execute(c: Check, n: int) -> list[str]:
    return ["execute", str(c.scenario), "--set", f"targets.0.count={n}", "--out", str(c.out / "runs" / f"execute-n{n}")]


def _validate(c: Check, _: Any) -> list[str]:
    return ["validate", str(c.scenario), "--sweep", f"targets.0.count={','.join(map(str, c.ns))}",
            "--repeat", "1", "--out", str(c.out / "validate")]  # one run a point: the device's minutes are few


def _ready(c: Check) -> str | None:
    return None


def _pair_ready(c: Check) -> str | None:
    """The pair's spec written, or why not."""
    if not (c.pair / "target").is_dir():
        return "no pair"
    pair_spec(c.pair, c.pair_name, c.out, c.size.tree)
    return None


def _scenario_ready(c: Check) -> str | None:
    """The device variant of the scenario written (once), or why not."""
    if c.scenario.exists():
        return None
    tp, dp = c.found(c.pair_name, "target"), c.found(c.pair_name, "draft")
    if tp is None or dp is None or not (c.pair / "target").is_dir():
        return "no pair or no profile of it"
    scenario(c.out, c.info, c.size, c.pair, tp, dp, c.ns[-1], by=c.by)
    return None


def _compare(c: Check) -> None:
    """Step 2, once the spec's roles are measured: ``compare.md``, ``compare.csv``,
    ``compare_points.csv`` (``c.compared``: its outcome, in ``steps.json``)."""
    if c.args.no_compare:
        return
    from ...profiles import read_profile
    from ..compare import against_fits, write_csv

    t = time.monotonic()
    mine = {r: p for r in ("target", "draft") if (p := c.found(c.spec, r))}
    if not mine:
        c.compared = {"status": "failed: no measured profile", "wall_s": 0.0}
    else:
        try:
            theirs = {r: read_profile(p) for r, p in c.imported.items()}
            res = against_fits({r: read_profile(p) for r, p in mine.items()}, theirs, c.missing_imported)
        except Exception as e:  # a malformed imported file must not cost the rest of the GPU run
            c.compared = {"status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}", "wall_s": 0.0}
        else:
            (c.out / "compare.md").write_text(compare_md(c, res, mine, theirs))
            write_csv(c.out / "compare.csv", res.ops)
            write_csv(c.out / "compare_points.csv", res.points)
            c.compared = {"status": f"ok: {len(res.ops)} ops compared", "wall_s": round(time.monotonic() - t, 2),
                          "ops": res.ops, "notes": res.notes}
    c.say(f"  compare: {c.compared['status']}")


def compare_md(c: Check, res: FitComparison, mine: dict, theirs: dict) -> str:
    """``compare.md``: the table, what its ratio means, the files compared and the notes
    (``mine``: role -> measured profile path; ``theirs``: role -> imported profile)."""
    from ..compare import fit_table

    out = [*fit_table(res.ops), "", "Above 1: this device took longer than the imported fit predicts there (the "
           "measured side is the real backend's own code, HF eager kernels and the Python around them; the imported "
           "side is a serving engine's kernels from the database).", ""]
    for role, path in mine.items():
        if role in c.imported:
            prov = theirs[role].provenance or {}
            what = ", ".join(str(x) for x in (
                prov.get("source"), "kernel time only" if prov.get("kernel_only") else None,
                f"per-forward overhead {prov['per_forward_overhead_s'] * 1e6:g} us"
                if isinstance(prov.get("per_forward_overhead_s"), (int, float)) else None) if x)
            out.append(f"- {role}: measured `{shown(path, c.out)}`; imported `{shown(c.imported[role], c.out)}`"
                       + (f" ({what})" if what else ""))
    out += [f"- {n}" for n in res.notes]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class StepRow:
    """A row of the check's table: the steps it stands for, one ``starsim`` command each."""

    name: str  # "{}" stands for the value of each step, e.g. execute-n{}
    argv: Callable[[Check, Any], list[str]]  # the command after `starsim`, for one value
    share: str  # its key in Size.est_s: the seconds it is expected to take, its share of the budget
    each: Callable[[Check], Iterable] = lambda c: (None,)  # one step per value
    needs: Callable[[Check], str | None] = _ready  # writes what it reads; why it cannot run (skipped)
    interruptible: bool = False  # Ctrl-C at the deadline keeps what was measured
    wrote: Callable[[Check, Any], bool] | None = None  # whether a step cut at its deadline left its output
    then: Callable[[Check], None] | None = None  # after the row's last step


STEPS = (
    StepRow("calibrate-{}", _calibrate_spec, "calibrate-{}", each=lambda c: list(role_ops(c.args.ops)),
            interruptible=True, wrote=lambda c, role: c.found(c.spec, role) is not None, then=_compare),
    StepRow("build-pair", _build_pair, "build-pair", each=lambda c: () if c.args.pair is not None else (None,)),
    StepRow("calibrate-pair", _calibrate_pair, "calibrate-pair", needs=_pair_ready, interruptible=True,
            wrote=lambda c, _: c.found(c.pair_name, "target") is not None),
    StepRow("execute-n{}", _execute, "execute", each=lambda c: c.ns, needs=_scenario_ready),
    StepRow("validate", _validate, "validate", needs=_scenario_ready),
)


def plan(c: Check) -> list[tuple[StepRow, Step]]:
    """The table's steps for these options, in order."""
    return [(row, Step(row.name.format(v), row.argv(c, v), c.size.est_s[row.share.format(v)], row.interruptible,
                       None if row.wrote is None else lambda row=row, v=v: row.wrote(c, v)))
            for row in STEPS for v in row.each(c)]


def run_steps(c: Check, steps: list[tuple[StepRow, Step]], runner: Runner) -> None:
    """Each step in turn, or skipped with why; a step's deadline keeps the later ones' shares."""
    for i, (row, step) in enumerate(steps):
        why = row.needs(c)
        if why:
            runner.skip(step, why)
        else:
            runner.run(step, sum(s.est_s for _, s in steps[i + 1:]))
        if row.then is not None and (i + 1 == len(steps) or steps[i + 1][0] is not row):
            row.then(c)


# --------------------------------------------------------------------------- the check, end to end


def run(args: argparse.Namespace, command: str, by: str = SCRIPT) -> int:
    """The check for parsed options (``--readme``: the README section only); ``command``: how it
    was started. Exit status: 0 every step ran, 1 one failed or was skipped, 130 interrupted;
    Fail (exit 2): a prerequisite is missing."""
    if args.readme:
        print(readme(), end="")
        return 0
    t0 = time.monotonic()  # the budget counts from here: the device's set-up too
    c = resolve(args, t0, command, by)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    c.say(f"GPU check on {c.device} ({c.info['name']}), spec {c.spec}, budget {args.budget_s:.0f} s -> {c.out}")
    steps = plan(c)
    runner = Runner(c.out, args.budget_s, c.say, c.t0, sum(s.est_s for _, s in steps))
    interrupted = False
    try:
        run_steps(c, steps, runner)
    except KeyboardInterrupt:
        interrupted = True
        c.say("interrupted: writing the summary of what ran")
    return finish(c, runner, started, interrupted)


def finish(c: Check, runner: Runner, started: str, interrupted: bool) -> int:
    """``steps.json`` and ``summary.md``; the exit status."""
    from ...profiles import read_profile

    wall = runner.elapsed()
    mine = {r: (p, read_profile(p)) for r in ("target", "draft") if (p := c.found(c.spec, r))}
    prov = {"started": started, "wall_s": round(wall, 1), "budget_s": c.args.budget_s, **c.info,
            "system": c.system, "system_match": c.system_note, "spec": c.spec, "dtype": c.dtype, "grid": c.grid,
            "pair": str(c.pair), "pair_built": c.args.pair is None, "targets": c.ns, "starsim_git": git_state(),
            "command": c.command, "steps": runner.done, "compare": c.compared}
    (c.out / "steps.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    (c.out / "summary.md").write_text(summary_md(c.out, prov, mine, c.ns))
    failed = [s["step"] for s in runner.done if not s["status"].startswith(("ok", "cut"))]
    if c.compared.get("status", "ok").startswith("failed"):
        failed.append("compare")
    c.say(f"wrote {c.out / 'summary.md'} in {clock(wall)}")
    if interrupted:
        return 130
    if failed:
        print(f"error: {len(failed)} step(s) did not run through ({', '.join(failed)}); see {c.out / 'summary.md'}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python analysis/gpu_check.py [OPTIONS]``: a missing prerequisite is one line, exit 2."""
    from .options import parser

    args = parser().parse_args(argv)
    try:
        return run(args, f"python {SCRIPT} " + shlex.join(sys.argv[1:] if argv is None else argv))
    except StarsimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
