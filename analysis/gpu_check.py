"""The GPU check: calibrate one GPU spec, compare it with the imported profile, run a real star.

Runs, through the CLI, into one output directory (``--out``; default
``analysis/figures/gpu_check/DATE-DEVICE/``), within a time budget (``--budget-s``, 8 minutes):

1. ``starsim calibrate compute --spec SPEC --device cuda:0 --roles target`` (then ``--roles
   draft``; one process per role, so each gets its share of the budget). A role still
   running at its deadline gets Ctrl-C and keeps what it measured (``provenance.interrupted``).
2. The measured profiles against the imported (aiconfigurator database) ones of the same
   GPU, ``models/profiles/SPEC.ROLE.SYSTEM-BACKEND-tpTP.DTYPE.yaml``: per op, at each measured
   grid point, measured time / the imported fit's prediction (``compare.md``, ``compare.csv``,
   ``compare_points.csv``).
3. A real star on the same device: ``starsim models build-pair --quick`` (seconds, on the
   CPU: build-pair never uses a GPU; ``--pair DIR`` takes a built one), that pair timed with
   ``calibrate compute --grid quick``, a device variant of ``scenarios/real_cpu_n2.yaml``
   (``scenario.yaml``), ``starsim execute`` and ``starsim validate`` for 1 and 2 targets.
4. ``summary.md`` (and ``steps.json``): date, device, torch/CUDA versions, every command
   with its wall time and outcome, the ratio table, the real runs and the validation.

``--device cpu`` runs the same steps at toy size (``tiny-cpu``, ``--grid quick``, a short
workload): what the test runs. ``--readme`` prints the README section. Exit status: 0 all
steps ran, 1 a step failed or was skipped (its log is in ``logs/``), 2 a prerequisite is missing.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # starsim without an install (a bare GPU image: PYTHONPATH and the repo)

DEFAULT_SPEC = "qwen3-8b-qwen3-06b"
BUDGET_S = 480.0
IMPORTED = "models/profiles/{spec}.{role}.{system}-{backend}-tp{tp}.{dtype}.yaml"
FIGURES = Path("analysis/figures/gpu_check")
BASE_SCENARIO = "scenarios/real_cpu_n2.yaml"
# what the simulator of the real run reads from the pair's profiles (its warm/cold curves included)
PAIR_OPS = "prefill,verify,verify_idle,draft_round,draft_idle"

# torch's device name -> aiconfigurator system (its database holds SXM parts only: a PCIe or
# NVL part maps to its SXM sibling, marked "nearest", as its clocks and bandwidth are lower)
SYSTEMS = (("H200", "h200_sxm"), ("H100", "h100_sxm"), ("A100", "a100_sxm"), ("B200", "b200_sxm"))


@dataclass
class Size:
    """What one device kind runs: the GPU sizes, or the toy sizes of ``--device cpu``."""

    spec: str
    grid: str
    pair_grid: str
    tree: dict  # the pair's draft tree (its spec and the scenario: a profile holds one tree)
    workload: dict
    max_requests: int
    max_wall_s: float
    # seconds each step is expected to take: a step's deadline keeps this much for the later ones
    est_s: dict = field(default_factory=dict)


GPU = Size(
    # the pair at the quick grid: its calls take 1-3 ms, for which the default grid's adaptive
    # timing sizes blocks of 100 calls (about 2 minutes for the pair); the workload stays inside
    # the quick grid's contexts (16-64), the tree's 17 verify tokens beyond its 8 (flagged)
    spec=DEFAULT_SPEC, grid="default", pair_grid="quick", tree={"top_k": 4, "depth": 4, "tokens": 16},
    workload={"prompts": 12, "prompt_tokens": {"kind": "uniform", "low": 16, "high": 32}, "output_tokens": 32},
    max_requests=12, max_wall_s=90.0,
    # ESTIMATES for an H200 (not yet run on one): the 8B/0.6B spec's calls (HF eager, 15-25 ms a
    # forward) at the default cuda grid; three processes starting torch and CUDA per real run;
    # validate's spot checks before and after each point
    est_s={"calibrate-target": 110, "calibrate-draft": 110, "build-pair": 15, "calibrate-pair": 25, "execute": 30,
           "validate": 110},
)
TOY = Size(
    spec="tiny-cpu", grid="quick", pair_grid="quick", tree={"top_k": 2, "depth": 3, "tokens": 7},
    workload={"prompts": 4, "prompt_tokens": {"kind": "uniform", "low": 16, "high": 32}, "output_tokens": 16},
    max_requests=4, max_wall_s=60.0,
    # measured on the project's 2-core VM
    est_s={"calibrate-target": 11, "calibrate-draft": 12, "build-pair": 8, "calibrate-pair": 9, "execute": 21,
           "validate": 51},
)


class Fail(Exception):
    """A prerequisite is missing: one line, exit 2."""


# --------------------------------------------------------------------------- the device


def system_for(name: str) -> tuple[str, bool] | None:
    """(aiconfigurator system, exact) for torch's device name, e.g. "NVIDIA H100 80GB HBM3" ->
    ("h100_sxm", True); None when the database has no such GPU."""
    up = name.upper()
    for key, system in SYSTEMS:
        if key in up:
            return system, not ("PCIE" in up or "NVL" in up)
    return None


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:48].strip("-") or "device"


def device_info(device: str) -> dict:
    """Name and versions of ``device``; Fail when it is a CUDA device this machine lacks."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise Fail(f"torch and transformers are needed ({e.name} is missing): pip install -e '.[torch]'") from None
    info = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "host": platform.node(), "platform": platform.platform()}
    if device == "cpu":
        name = platform.processor() or platform.machine()
        try:
            name = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                        if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info.update(name=f"{name} ({os.cpu_count()} logical CPUs)", kind="cpu")
        return info
    if not torch.cuda.is_available():
        raise Fail(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; run on a GPU "
                   "machine, or --device cpu for the toy-size run")
    index = int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise Fail(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    props = torch.cuda.get_device_properties(index)
    info.update(name=torch.cuda.get_device_name(index), kind="cuda", cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), memory_gib=round(props.total_memory / 2**30, 1),
                multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    try:  # the driver, which torch does not report
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return head + (" with uncommitted changes" if dirty else "")


def role_ops(ops: str | None) -> dict[str, str | None]:
    """``--ops`` split by role (calibrate takes only the ops of its ``--roles``); a role left
    without any is not calibrated. None: every op of both."""
    if not ops:
        return {"target": None, "draft": None}
    names = [o.strip() for o in ops.split(",") if o.strip()]
    by_role = {"target": [o for o in names if not o.startswith("draft")],
               "draft": [o for o in names if o.startswith("draft")]}
    return {role: ",".join(v) for role, v in by_role.items() if v}


def ref(path: Path, out: Path) -> str:
    """``path`` as a file in ``out`` names it: relative when both lie in the repository or the
    path in ``out`` (the directory then travels whole), else absolute."""
    path = path.resolve()
    if path.is_relative_to(out) or (path.is_relative_to(REPO) and out.is_relative_to(REPO)):
        return os.path.relpath(path, out)
    return str(path)


def shown(path: Path, out: Path) -> str:
    """``path`` for a reader of ``out``'s files: relative to ``out`` or the repository, else absolute."""
    path = path.resolve()
    for base in (out, REPO):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


# --------------------------------------------------------------------------- running the steps


@dataclass
class Step:
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

    def __init__(self, out: Path, budget_s: float, say, t0: float, est_total_s: float) -> None:
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
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        t = time.monotonic()
        with log.open("w") as fh:
            fh.write(f"$ {cmd}\n")
            fh.flush()
            # a session of its own: the whole group (execute's draft and target processes) can be stopped
            proc = subprocess.Popen([sys.executable, "-m", "starsim.cli", *step.argv], cwd=REPO, env=env,
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
            cut = False
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                cut = True
                rc = _stop(proc, step.interruptible)
            except KeyboardInterrupt:
                _stop(proc, False)
                raise
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


# --------------------------------------------------------------------------- measured vs imported


def compare(measured: dict, imported: dict, missing: list[str]) -> tuple[list[dict], list[dict], list[str]]:
    """Per op in both profiles of a role: measured time / the imported fit's prediction at each
    of the measured grid points. ``measured``/``imported``: role -> ProfileFile. Returns
    (one row per op, one row per point, notes)."""
    import numpy as np

    ops, points, notes = [], [], [f"no imported profile for the {m}" for m in missing]
    for role, mine in measured.items():
        theirs = imported.get(role)
        if theirs is None:
            continue
        pairs = [(name, mine.ops[name], theirs.ops[name], []) for name in sorted(set(mine.ops) & set(theirs.ops))]
        decode = _decode_points(mine) if "decode" in theirs.ops and "decode" not in mine.ops else None
        if decode is not None:
            pairs.append(("decode", decode, theirs.ops["decode"], ["measured: verify at tokens 1"]))
        only = sorted((set(mine.ops) ^ set(theirs.ops)) - ({"decode"} if decode is not None else set()))
        if only:
            notes.append(f"{role}: in one profile only: " + ", ".join(
                f"{o} ({'measured' if o in mine.ops else 'imported'})" for o in only))
        for name, a, b, note in pairs:
            if b.fit is None:
                notes.append(f"{role} {name}: the imported op has no fit (kept as measured): not compared")
                continue
            if set(a.inputs) != set(b.inputs):
                notes.append(f"{role} {name}: inputs differ ({', '.join(a.inputs)} vs {', '.join(b.inputs)})")
                continue
            if a.fixed.get("tree") and b.fixed.get("tree") and a.fixed["tree"] != b.fixed["tree"]:
                t = lambda f: "/".join(str(f["tree"][k]) for k in ("top_k", "depth", "tokens"))  # noqa: E731
                note.append(f"tree {t(a.fixed)} measured vs {t(b.fixed)} imported")
            k = len(a.inputs)
            rows = []
            for r in a.rows:
                x = dict(zip(a.inputs, r[:k]))
                pred = b.predict(**x)
                inside = all(lo <= x[i] <= hi for i, (lo, hi) in b.range.items() if i in x)
                ratio = r[k] / pred if pred > 0 else math.nan
                rows.append({"role": role, "op": name, **{i: _num(v) for i, v in x.items()},
                             "measured_ms": r[k] * 1e3, "imported_ms": pred * 1e3, "ratio": ratio,
                             "inside_imported_range": inside})
            good = [p for p in rows if math.isfinite(p["ratio"])]
            if not good:
                notes.append(f"{role} {name}: the imported fit predicts no positive time at the measured points")
                continue
            ratios = np.array([p["ratio"] for p in good])
            mid = sorted(good, key=lambda p: p["measured_ms"])[len(good) // 2]
            ops.append({"role": role, "op": name, "points": len(good),
                        "inside_imported_range": sum(p["inside_imported_range"] for p in good),
                        "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()),
                        "ratio_max": float(ratios.max()),
                        # what a per-forward overhead would have to add (the import's --overhead-us)
                        "diff_median_ms": float(np.median([p["measured_ms"] - p["imported_ms"] for p in good])),
                        "middle_point": ", ".join(f"{i} {mid[i]}" for i in a.inputs),
                        "measured_ms": mid["measured_ms"], "imported_ms": mid["imported_ms"],
                        "note": "; ".join(note)})
            points += rows
    return ops, points, notes


def _decode_points(prof):
    """The measured verify's one-token points as a ``decode`` op (context alone), which the
    import prices and calibrate does not time apart; None without such points."""
    from starsim.profiles import build_op

    v = prof.ops.get("verify")
    if v is None:
        return None
    t, c = v.inputs.index("tokens"), v.inputs.index("context")
    rows = [(r[c], *r[len(v.inputs):]) for r in v.rows if r[t] == 1]
    return build_op(["context"], rows, fit=False) if rows else None


def _num(v: float):
    return int(v) if float(v).is_integer() else v


def compare_markdown(ops: list[dict], notes: list[str], mine: dict, theirs: dict, theirs_prov: dict) -> str:
    """``mine``/``theirs``: role -> path as shown; ``theirs_prov``: role -> the imported provenance."""
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
    out += ["", "Above 1: this device took longer than the imported fit predicts there (the measured side is the "
            "real backend's own code, HF eager kernels and the Python around them; the imported side is a "
            "serving engine's kernels from the database).", ""]
    for role in mine:
        if role in theirs:
            prov = theirs_prov.get(role) or {}
            what = ", ".join(str(x) for x in (
                prov.get("source"), "kernel time only" if prov.get("kernel_only") else None,
                f"per-forward overhead {prov['per_forward_overhead_s'] * 1e6:g} us"
                if isinstance(prov.get("per_forward_overhead_s"), (int, float)) else None) if x)
            out.append(f"- {role}: measured `{mine[role]}`; imported `{theirs[role]}`" + (f" ({what})" if what else ""))
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------- the real run's scenario


def pair_spec(pair: Path, name: str, out: Path, tree: dict) -> Path:
    """A spec file for ``pair`` (its own configs, random weights), so calibrate times the very
    architecture the real run loads at the tree the scenario drafts."""
    import yaml

    rel = ref(pair, out)  # relative to the spec file
    spec = {"name": name, "description": f"the offline pair in {rel} (architecture from its configs)",
            "source": f"{rel}/target/config.json, {rel}/draft/config.json",
            "target": {"hf_config": f"{rel}/target"}, "draft": {"hf_config": f"{rel}/draft"},
            "tree": tree, "dtype": {"cpu": "float32", "cuda": "float32"},  # as build-pair saves it
            "cpu_ok": True}
    path = out / "pair-spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def scenario(out: Path, info: dict, size: Size, pair: Path, target_prof: Path, draft_prof: Path,
             n_max: int) -> Path:
    """``scenarios/real_cpu_n2.yaml`` on this device: every process on ``info['device']``, the
    pair's profiles from this device, the size's workload; paths relative to the output directory."""
    import yaml

    d = yaml.safe_load((REPO / BASE_SCENARIO).read_text())
    rel = lambda p: ref(p, out)  # noqa: E731
    dev = info["device"]
    units = n_max + 1  # a unit per process: the draft on the last
    if info["kind"] == "cuda":
        # each process has its own CPU core here; the GPU time-slices their kernels, which the
        # simulator does not model (a unit per process, independent)
        pool = {"type": f"{info['name']}: every process of the run on {dev}", "count": units, "torch": dev}
    else:
        pool = {"type": f"{info['name']}: every process of the run", "count": units, "cores": os.cpu_count() or 1,
                "torch": "cpu"}
    d["name"] = f"real-{slug(info['name'])}"
    d["description"] = f"{BASE_SCENARIO} on {dev} ({info['name']}), pair {pair.name}, written by analysis/gpu_check.py"
    d["devices"] = {"dev": pool}
    d["draft"]["device"] = f"dev[{units - 1}]"
    d["draft"]["round_time"]["path"] = rel(draft_prof)
    d["draft"]["tree"] = dict(size.tree)
    g = d["targets"][0]
    g["device"] = "dev"
    for key in ("verify_time", "prefill_time", "decode_time"):
        g[key]["path"] = rel(target_prof)
    if d["acceptance"].get("path"):
        # the shipped pair's curve; `starsim validate` feeds each real run's own curve instead
        d["acceptance"]["path"] = rel(REPO / BASE_SCENARIO.rsplit("/", 1)[0] / d["acceptance"]["path"])
    d["workload"].update(size.workload)
    d["max_requests"] = size.max_requests
    d["real"].update(pair=rel(pair), max_wall_s=size.max_wall_s)
    path = out / "scenario.yaml"
    head = (f"# {BASE_SCENARIO} on {dev} ({info['name']}), written by analysis/gpu_check.py.\n"
            "# Messaging times (parse/serialize, send/receive, link) are the CPU VM's loopback measurements.\n")
    path.write_text(head + yaml.safe_dump(d, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the summary


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def runs_markdown(out: Path, ns: list[int]) -> list[str]:
    lines = ["| run | targets | throughput tok/s | draft utilization | tokens per round | wall s |",
             "|---|---|---|---|---|---|"]
    for n in ns:
        s = _read_json(out / "runs" / f"execute-n{n}" / "summary.json")
        if s is None:
            lines.append(f"| execute-n{n} | {n} | (no run) | | | |")
            continue
        lines.append(f"| execute-n{n} | {n} | {s['throughput_tokens_per_s']:.1f} | "
                     f"{100 * s['draft_utilization']:.1f}% | {s['mean_accepted_tokens']:.2f} | "
                     f"{s['provenance'].get('wall_time_s', float('nan')):.1f} |")
    return lines


def validate_markdown(out: Path) -> list[str]:
    v = _read_json(out / "validate" / "validation.json")
    if v is None:
        return ["(no validation)"]
    lines = ["| point | real tok/s | sim tok/s | sim err | real draft util | sim draft util | sim err | "
             "largest miss |", "|---|---|---|---|---|---|---|---|"]
    f = lambda x, spec, unit="": "" if x is None else format(x, spec) + unit  # noqa: E731
    for p in v["points"]:
        m = {r["metric"]: r for r in p["metrics"]}
        t, u = m["throughput_tokens_per_s"], m["draft_utilization"]
        worst = p["components"][0]["component"] if p["components"] else ""
        lines.append(f"| {p['point']} | {f(t['real'], '.1f')} | {f(t['sim'], '.1f')} | "
                     f"{f(t['sim_err_pct'], '+.1f', '%')} | {f(u['real'], '.1f', '%')} | {f(u['sim'], '.1f', '%')} | "
                     f"{f(u['sim_err_pct'], '+.1f', '%')} | {worst} |")
    ms = v.get("mape_sim_pct") or {}
    if ms.get("throughput_tokens_per_s") is not None:
        lines += ["", f"MAPE of the simulator: throughput {ms['throughput_tokens_per_s']:.1f}%, draft utilization "
                  f"{ms['draft_utilization']:.1f}% (full table: `validate/validation.md`)."]
    return lines


def fits_markdown(profiles: dict) -> list[str]:
    lines = ["| role | op | points | fitted model (s) | CV MAPE |", "|---|---|---|---|---|"]
    for role, (path, prof) in profiles.items():
        for name, op in prof.ops.items():
            form = f"`{op.fit.form}`" if op.fit else "as measured: " + ", ".join(
                f"{_num(r[0] * 1e3)} ms gap {r[1] * 1e3:.2f}" for r in sorted(op.rows))
            cv = f"{op.fit.cv_mape_pct:.1f}%" if op.fit else ""
            lines.append(f"| {role} | {name} | {len(op.rows)} | {form} | {cv} |")
        part = prof.provenance.get("interrupted")
        lines.append(f"| {role} | ({path.name}, {prof.provenance.get('wall_s')} s{'; ' + part if part else ''}) "
                     "| | | |")
    return lines


def _clock(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s"


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Without --out: analysis/figures/gpu_check/DATE-DEVICE/. "
                                 "python analysis/gpu_check.py --readme prints the README section.")
    ap.add_argument("--device", default="cuda:0", help="cuda:K (default cuda:0), or cpu: the toy-size run")
    ap.add_argument("--spec", help=f"GPU spec to calibrate (default {DEFAULT_SPEC}; tiny-cpu with --device cpu)")
    ap.add_argument("--grid", choices=["default", "quick"],
                    help="calibrate's grid for the spec (default: default on a GPU, quick on the CPU)")
    ap.add_argument("--ops", help="only these ops of the spec (comma list, calibrate --ops; default all)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the spec's for the device")
    ap.add_argument("--system", help="aiconfigurator system of the imported profile (default: from the device's "
                    "name: " + ", ".join(s for _, s in SYSTEMS) + ")")
    ap.add_argument("--backend", default="vllm", help="backend of the imported profile (default vllm)")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallelism of the imported profile (default 1)")
    ap.add_argument("--imported", default=IMPORTED,
                    help=f"imported profile path, with {{spec}} {{role}} {{system}} {{backend}} {{tp}} {{dtype}} "
                    f"(default {IMPORTED}, relative to the repository)")
    ap.add_argument("--no-compare", action="store_true", help="skip step 2 (no imported profile needed)")
    ap.add_argument("--pair", type=Path, help="a built pair (starsim models build-pair --out DIR) instead of "
                    "building the quick one")
    ap.add_argument("--targets", default="1,2", help="target counts of the real runs (default 1,2)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help=f"wall-clock budget of the whole check (default {BUDGET_S:.0f})")
    ap.add_argument("--out", type=Path, help="output directory (new or empty)")
    ap.add_argument("--readme", action="store_true", help="print the README section 'GPU check' and exit")
    return ap


def readme() -> str:
    g, t = GPU.est_s, TOY.est_s
    total = lambda e: sum(e.values()) + e["execute"]  # noqa: E731 - two executes (1 and 2 targets)
    rows = [("1", f"`starsim calibrate compute --spec {DEFAULT_SPEC} --device cuda:0 --roles target`, "
             "then `--roles draft` (default grid; CPU: tiny-cpu, quick grid)", g["calibrate-target"]
             + g["calibrate-draft"], t["calibrate-target"] + t["calibrate-draft"]),
            ("2", "measured / imported, per op", 0, 0),
            ("3", "`starsim models build-pair --quick`; the pair timed (`calibrate compute --grid quick`)",
             g["build-pair"] + g["calibrate-pair"], t["build-pair"] + t["calibrate-pair"]),
            ("3", "`starsim execute scenario.yaml` with 1, then 2 targets", 2 * g["execute"], 2 * t["execute"]),
            ("3", "`starsim validate scenario.yaml --sweep targets.0.count=1,2`", g["validate"], t["validate"])]
    table = "\n".join(f"| {n} | {what} | {a or '<1'} | {b or '<1'} |" for n, what, a, b in rows)
    return f"""## GPU check

What a GPU is needed for, in one script, within {BUDGET_S / 60:.0f} minutes, into one directory:

```bash
analysis/gpu_check.sh                 # python analysis/gpu_check.py --device cuda:0 --spec {DEFAULT_SPEC}
analysis/gpu_check.sh --device cpu    # the same steps at toy size on the CPU (tiny-cpu, the test runs this)
```

1. **Calibrate** the spec on the GPU, one process per role. A role still running at its deadline
   gets Ctrl-C and keeps what it measured (`provenance.interrupted`).
2. **Compare** it with the imported aiconfigurator profile of the same GPU,
   `{IMPORTED}` (`starsim calibrate import
   aiconfigurator`; the system comes from the device's name, `--system` overrides, `--no-compare`
   skips the step): per op, at each measured grid point, measured time / the imported fit's
   prediction, median and range (`compare.md`, `compare.csv`, `compare_points.csv`).
3. **Run a real star on the GPU**: the offline pair (`--quick`, built in seconds; `build-pair` trains
   on the CPU, single-threaded, so the full pair costs its ~5 CPU minutes on a GPU machine too:
   build it beforehand and pass `--pair models/pairs/stdlib-pair`), timed on the GPU, in a variant of
   `{BASE_SCENARIO}` with every process on the GPU (`scenario.yaml`).
4. **Write** `summary.md`: date, GPU, driver, torch and CUDA versions, git commit, every command with
   its wall time and outcome, the tables; beside it `steps.json`, the profiles, the run directories
   and one log per step, in `{FIGURES}/DATE-DEVICE/` (`--out` for another).

| step | what | H200 s (estimated, not yet run) | CPU toy s (2-core VM) |
|---|---|---|---|
{table}
| | total | about {total(g)} | about {total(t)} |

Each step's deadline keeps the later steps' estimated share, so the check ends within
`--budget-s` ({BUDGET_S:.0f}). Exit status: 0 every step ran (a calibration cut at its deadline
keeps what it measured and counts as run), 1 a step failed or was skipped (its log is in `logs/`),
2 a prerequisite is missing, said in one line: no CUDA device, no spec, no imported profile, no pair.
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.readme:
        print(readme(), end="")
        return 0
    try:
        return check(args, list(sys.argv[1:] if argv is None else argv))
    except Fail as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def check(args: argparse.Namespace, argv: list[str]) -> int:
    t0 = time.monotonic()  # the budget counts from here: imports and the device's set-up too
    say = lambda m: print(m, flush=True)  # noqa: E731
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise Fail(f"--device {args.device}: expected cpu or cuda[:K]")
    device = "cuda:0" if args.device == "cuda" else args.device  # a scenario's `torch: cuda` means unit k on cuda:k
    try:
        ns = sorted({int(v) for v in args.targets.split(",") if v.strip()})
    except ValueError:
        ns = []
    if not ns or ns[0] < 1:
        raise Fail(f"--targets {args.targets}: expected target counts >= 1, e.g. 1,2")
    size = TOY if device == "cpu" else GPU
    try:
        import pydantic  # noqa: F401
        import simpy  # noqa: F401
    except ImportError as e:
        raise Fail(f"starsim's dependencies are missing ({e.name}): pip install -e '.[torch]', or put wheels "
                   "of them on PYTHONPATH") from None
    from starsim.errors import StarsimError
    from starsim.models.specs import load_spec
    from starsim.profiles import read_profile

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
    dev_type = info["kind"]
    dtype = args.dtype or spec.dtype.get(dev_type, "float32")
    mapped = system_for(info["name"]) if dev_type == "cuda" else None
    system = args.system or (mapped[0] if mapped else None) or ("cpu" if dev_type == "cpu" else None)
    system_note = ("given by --system" if args.system else "exact" if mapped and mapped[1]
                   else "nearest: the database has SXM parts only" if mapped else "")

    imported_paths: dict[str, Path] = {}
    missing_imported: list[str] = []
    if not args.no_compare:
        if system is None:
            raise Fail(f"no aiconfigurator system for the device {info['name']!r}: give --system "
                       f"({', '.join(s for _, s in SYSTEMS)}) or --no-compare")
        for role in ("target", "draft"):
            p = Path(args.imported.format(spec=spec.name, role=role, system=system, backend=args.backend,
                                          tp=args.tp, dtype=dtype))
            p = p if p.is_absolute() else REPO / p
            if p.is_file():
                imported_paths[role] = p
            else:
                missing_imported.append(f"{role} ({p})")
        if not imported_paths:
            raise Fail(f"no imported profile: {'; '.join(missing_imported)}; run `starsim calibrate import "
                       "aiconfigurator` first, or give --imported TEMPLATE, --system or --no-compare")

    out = args.out
    if out is None:
        base = REPO / FIGURES / f"{dt.date.today().isoformat()}-{slug(info['name'])}"
        out, k = base, 2
        while out.exists() and any(out.iterdir()):  # a second check the same day: a new directory
            out, k = base.with_name(f"{base.name}-{k}"), k + 1
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Fail(f"--out {out}: exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    say(f"GPU check on {device} ({info['name']}), spec {spec.name}, budget {args.budget_s:.0f} s -> {out}")

    est = size.est_s
    profiles = out / "profiles"
    grid = args.grid or size.grid
    # one thread, as each process of a real run has (and a shared CPU's other tenants cost less)
    common = ["--device", device, "--threads", "1", "--out", str(profiles), "--quiet"]

    def found(spec_name: str, role: str) -> Path | None:
        hits = sorted(profiles.glob(f"{spec_name}.{role}.*.yaml"))
        return hits[0] if hits else None

    steps: list[Step] = []
    for role, ops in role_ops(args.ops).items():
        cmd = ["calibrate", "compute", "--spec", args.spec or spec.name, "--roles", role, "--grid", grid, *common]
        cmd += ["--dtype", args.dtype] if args.dtype else []
        cmd += ["--ops", ops] if ops else []
        steps.append(Step(f"calibrate-{role}", cmd, est[f"calibrate-{role}"], interruptible=True,
                          wrote=lambda role=role: found(spec.name, role) is not None))
    n_spec = len(steps)
    pair = args.pair or out / "quick-pair"
    # its profiles sit beside the spec's: a name of its own (calibrate --ops would merge same-named files)
    pair_name = pair.name if pair.name != spec.name else f"{pair.name}-pair"
    if args.pair is None:
        steps.append(Step("build-pair", ["models", "build-pair", "--quick", "--out", str(pair), "--quiet"],
                          est["build-pair"]))
    # the pair's own spec is written once the pair exists (its configs); the step reads it then
    steps.append(Step("calibrate-pair", ["calibrate", "compute", "--spec", str(out / "pair-spec.yaml"), "--grid",
                                         size.pair_grid, "--ops", PAIR_OPS, *common],
                      est["calibrate-pair"], interruptible=True,
                      wrote=lambda: found(pair_name, "target") is not None))
    scen = out / "scenario.yaml"
    for n in ns:
        steps.append(Step(f"execute-n{n}", ["execute", str(scen), "--set", f"targets.0.count={n}",
                                            "--out", str(out / "runs" / f"execute-n{n}")], est["execute"]))
    steps.append(Step("validate", ["validate", str(scen), "--sweep", f"targets.0.count={','.join(map(str, ns))}",
                                   "--out", str(out / "validate")], est["validate"]))

    def later(i: int) -> float:
        return sum(s.est_s for s in steps[i + 1:])

    runner = Runner(out, args.budget_s, say, t0, later(-1))

    compare_result: dict = {}
    scen_error = None
    interrupted = False
    try:
        for i, step in enumerate(steps):
            if step.name == "calibrate-pair":
                if not (pair / "target").is_dir():
                    runner.skip(step, "no pair")
                    continue
                pair_spec(pair, pair_name, out, size.tree)
            if step.name.startswith(("execute", "validate")) and not scen.exists() and not scen_error:
                tp, dp = found(pair_name, "target"), found(pair_name, "draft")
                if tp is None or dp is None or not (pair / "target").is_dir():
                    scen_error = "no pair or no profile of it"
                else:
                    scenario(out, info, size, pair, tp, dp, ns[-1])
            if step.name.startswith(("execute", "validate")) and scen_error:
                runner.skip(step, scen_error)
                continue
            runner.run(step, later(i))
            if i == n_spec - 1 and not args.no_compare:  # the spec's roles are measured
                compare_result = _compare_step(out, spec.name, imported_paths, missing_imported, found, read_profile)
                say(f"  compare: {compare_result['status']}")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: writing the summary of what ran")
    wall = runner.elapsed()

    mine = {r: (p, read_profile(p)) for r in ("target", "draft") if (p := found(spec.name, r))}
    prov = {"started": started, "wall_s": round(wall, 1), "budget_s": args.budget_s, **info,
            "system": system, "system_match": system_note, "spec": spec.name, "dtype": dtype, "grid": grid,
            "pair": str(pair), "pair_built": args.pair is None, "targets": ns, "starsim_git": git_state(),
            "command": "python analysis/gpu_check.py " + shlex.join(argv),
            "steps": runner.done, "compare": compare_result}
    (out / "steps.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(summary_md(out, prov, mine, ns))
    failed = [s["step"] for s in runner.done if not s["status"].startswith(("ok", "cut"))]
    if compare_result.get("status", "ok").startswith("failed"):
        failed.append("compare")
    say(f"wrote {out / 'summary.md'} in {_clock(wall)}")
    if interrupted:
        return 130
    if failed:
        print(f"error: {len(failed)} step(s) did not run through ({', '.join(failed)}); see {out / 'summary.md'}",
              file=sys.stderr)
        return 1
    return 0


def _compare_step(out: Path, spec_name: str, imported_paths: dict, missing: list[str], found, read_profile) -> dict:
    t = time.monotonic()
    mine = {r: p for r in ("target", "draft") if (p := found(spec_name, r))}
    if not mine:
        return {"status": "failed: no measured profile", "wall_s": 0.0}
    try:
        theirs = {r: read_profile(p) for r, p in imported_paths.items()}
        ops, points, notes = compare({r: read_profile(p) for r, p in mine.items()}, theirs, missing)
    except Exception as e:  # a malformed imported file must not cost the rest of the GPU run
        return {"status": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}", "wall_s": 0.0}
    md = compare_markdown(ops, notes, {r: shown(p, out) for r, p in mine.items()},
                          {r: shown(p, out) for r, p in imported_paths.items()},
                          {r: prof.provenance for r, prof in theirs.items()})
    (out / "compare.md").write_text(md)
    write_csv(out / "compare.csv", ops)
    write_csv(out / "compare_points.csv", points)
    return {"status": f"ok: {len(ops)} ops compared", "wall_s": round(time.monotonic() - t, 2), "ops": ops,
            "notes": notes}


def summary_md(out: Path, p: dict, mine: dict, ns: list[int]) -> str:
    gpu = p["kind"] == "cuda"
    versions = f"torch {p['torch']}" + (f" (CUDA {p.get('cuda')}, cuDNN {p.get('cudnn')})" if gpu else "")
    lines = [f"# GPU check: {p['name']}, {p['started'][:10]}", "",
             f"- started {p['started']}; {_clock(p['wall_s'])} of a {p['budget_s']:.0f} s budget",
             f"- device {p['device']}: {p['name']}" + (
                 f", {p.get('memory_gib')} GiB, {p.get('multiprocessors')} SMs, compute capability "
                 f"{p.get('capability')}, driver {p.get('driver')}" if gpu else ""),
             f"- {versions}, transformers {p['transformers']}, Python {p['python']}; starsim at git {p['starsim_git']}",
             f"- host {p['host']} ({p['platform']})",
             f"- spec {p['spec']} ({p['dtype']}, grid {p['grid']}); imported profiles: system {p['system']}"
             + (f" ({p['system_match']})" if p["system_match"] else ""),
             f"- pair {shown(Path(p['pair']), out)} ({'built here with --quick' if p['pair_built'] else 'given'})",
             f"- command: `{p['command']}`", "", "## Steps", "",
             "| step | command | wall s | outcome |", "|---|---|---|---|"]
    for s in p["steps"]:
        cmd = s["command"].replace(str(out) + "/", "").replace(str(out), ".")
        lines.append(f"| {s['step']} | `{cmd}` | {s['wall_s']:.1f} | {s['status']} |" if cmd else
                     f"| {s['step']} | | | {s['status']} |")
    c = p["compare"]
    lines += ["", "## Measured vs imported (aiconfigurator)", ""]
    if (out / "compare.md").exists():
        lines.append((out / "compare.md").read_text().rstrip())
    else:
        lines.append(c.get("status", "not run (--no-compare)") if c else "not run (--no-compare)")
    lines += ["", f"## Fitted profiles of {p['spec']} on this device", ""]
    lines += fits_markdown(mine) if mine else ["(none measured)"]
    lines += ["", f"## Real runs on {p['device']}", "", "`starsim execute scenario.yaml --set targets.0.count=N`:", ""]
    lines += runs_markdown(out, ns)
    lines += ["", "`starsim validate scenario.yaml --sweep targets.0.count=...` (simulator fed each real run's "
              "acceptance and its speed spot checks):", ""]
    lines += validate_markdown(out)
    lines += ["", "Files: `profiles/` (calibrate), `compare.*`, `pair-spec.yaml`, `scenario.yaml`, `runs/`, "
              "`validate/`, `logs/` (one per step), `steps.json`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
