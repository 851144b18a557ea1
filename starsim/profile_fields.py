"""The timings a scenario takes from calibrated profiles (``profile_fields``: the field paths
and their profile ops, a serving step fitted from a profile's ``step`` rows included), and
whether each was measured on this machine (``foreign_profiles``: one line per profile that
was not, for the commands that run here: ``validate``, ``execute``)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepOp:
    """A serving target's step cost (``serving.step_time`` from a calibrated ``.step.yaml``)
    seen as a profile op: the target profile beside it and its measured ``step`` rows."""

    path: str  # the target profile's
    file: Any
    scale: float
    op: str = "step"


def step_op(step_time) -> StepOp | None:
    """The target profile whose ``step`` rows ``step_time``'s file was fitted from (None: a
    step cost from elsewhere: aiconfigurator's kernels, hand-set fields)."""
    from .profiles import read_profile

    path = getattr(step_time, "path", None)
    if path is None or not path.endswith(".step.yaml"):
        return None
    profile = Path(path[: -len(".step.yaml")] + ".yaml")
    if not profile.is_file():
        return None
    f = read_profile(profile)
    return StepOp(str(profile.resolve()), f, step_time.scale) if "step" in f.ops else None


def profile_fields(scenario) -> list[tuple[str, Any]]:
    """(field path, Profile spec) of every timing the scenario takes from a profile file, a
    serving step fitted from a profile's ``step`` rows included (as a :class:`StepOp`)."""
    from .distributions import Profile

    out = []
    for name in ("time", "round_time"):
        d = getattr(scenario.draft, name)
        if isinstance(d, Profile):
            out.append((f"draft.{name}", d))
    if isinstance(scenario.draft.batch.time, Profile):  # batched drafting's round
        out.append(("draft.batch.time", scenario.draft.batch.time))
    for i, g in enumerate(scenario.targets):
        for name in ("verify_time", "prefill_time", "decode_time"):
            d = getattr(g, name, None)
            if isinstance(d, Profile):
                out.append((f"targets.{i}.{name}", d))
        st = g.serving.step_time if g.serving is not None else None
        step = step_op(st) if st is not None else None
        if step is not None:
            out.append((f"targets.{i}.serving.step_time", step))
    return out


def role_cpus(scenario, path: str) -> frozenset[int] | None:
    """The cores the role of profile field ``path`` is declared on (``draft.*``: the draft's
    device, ``targets.I.*``: group I's; a pool's unit 0 when the reference names no unit);
    None where the scenario declares none."""
    from .scenario import parse_device_ref

    ref = scenario.draft.device if path.startswith("draft.") else scenario.targets[int(path.split(".")[1])].device
    pool, unit = parse_device_ref(ref)
    return scenario.devices[pool].unit_cpus(unit or 0)


def cpu_name() -> str:
    """This machine's CPU as a profile names its device (``cpu: MODEL (N logical)``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} logical)"


def here(kind: str, torch_device: str) -> str | None:
    """The name a profile measured here on ``torch_device`` would carry (None: no such device)."""
    if kind == "cpu":
        return cpu_name()
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(torch.device(torch_device)) if torch.cuda.is_available() else None
    return None


def foreign_profiles(scenario) -> list[str]:
    """One line per profile file the scenario's timings use that was measured on another
    device than this machine's (a CPU model or GPU name): what that does to a comparison with
    a run here, and the command that recalibrates it (on the cores the profile was timed on)."""
    seen: dict[str, list[str]] = {}
    files: dict[str, Any] = {}
    for path, prof in profile_fields(scenario):
        f = prof.file
        key = getattr(prof, "path", None) or str(id(f))
        seen.setdefault(key, []).append(path)
        files[key] = f
    out = []
    for key, paths in seen.items():
        f = files[key]
        dev = f.device or {}
        then, kind = dev.get("name"), dev.get("kind")
        now = here(kind, dev.get("torch_device", "cpu")) if kind in ("cpu", "cuda") else None
        if then is None or kind not in ("cpu", "cuda") or now == then:
            continue
        model = f.model or {}
        cpus = (f.provenance or {}).get("cpus") if kind == "cpu" else None
        cmd = (f"starsim calibrate compute --spec {model.get('spec', 'SPEC')} --device {dev.get('torch_device', 'cpu')}"
               f" --threads {dev.get('threads', 1)}" + (f" --cpus {','.join(map(str, cpus))}" if cpus else "")
               + f" --roles {model.get('role', 'target')} --out {Path(key).parent if os.sep in key else 'DIR'}")
        out.append(f"{', '.join(paths)}: profile measured on {then!r}, this machine is {now or 'without that device'}"
                   f": its times rest on another machine's speed, so a comparison with a run here "
                   f"measures that difference too; recalibrate here: {cmd} (starsim validate --calibrate "
                   f"does it first)")
    return out
