"""Calibrate here first (``starsim validate --calibrate``): every profile op a scenario's
timings use, re-timed on this machine, on the cores each role is declared on, with the
profile's own model spec, threads and dtype; the scenario's fields then point at the new
files. A comparison with a run here then rests on this machine's speed today, not on the
machine (or the day) the shipped profiles were measured on.

The roles are timed one after the other, each alone on its cores (``calibrate compute``
run by hand can time two roles at once, as a run has them); a serving step fitted from a
profile's ``step`` rows is not re-timed here (one line says so)."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import StarsimError
from ..profile_fields import StepOp, profile_fields, role_cpus


def calibrate_here(scenario, out_dir: Path, say=None, quick: bool = False) -> tuple[list[str], list[str]]:
    """Re-time the scenario's profile ops (see the module docstring) into ``out_dir``: the
    ``--set`` overrides that point each field at its new file, and one line per thing left
    as it was. ``quick``: the coarse smoke grid (tests)."""
    from ..models.specs import load_spec
    from ..real.resources import pinned
    from .compute import GRIDS, QUICK, Settings, calibrate, save

    say = say or (lambda msg: None)
    groups: dict[tuple, dict] = {}  # (profile file, its role's cores) -> its ops and fields
    notes: list[str] = []
    for path, prof in profile_fields(scenario):
        if isinstance(prof, StepOp):
            notes.append(f"{path}: a serving step is not re-timed by --calibrate (starsim calibrate compute "
                         f"--ops step, then serving.step_time: the .step.yaml it writes)")
            continue
        cpus = role_cpus(scenario, path)
        g = groups.setdefault((prof.path, cpus), {"file": prof.file, "ops": set(), "fields": []})
        g["ops"].add(prof.op)
        g["fields"].append(path)
    sets: list[str] = []
    for (_, cpus), g in groups.items():
        f = g["file"]
        model, dev = f.model or {}, f.device or {}
        if not model.get("spec") or model.get("role") not in ("draft", "target"):
            raise StarsimError(f"--calibrate: {', '.join(g['fields'])}: the profile names no model spec and role "
                               "to re-time (imported profiles are measured elsewhere: recalibrate by hand)")
        device = dev.get("torch_device", "cpu")
        where = f"cores {','.join(map(str, sorted(cpus)))}" if cpus else "any core"
        say(f"calibrating {model['spec']} {model['role']} ({', '.join(sorted(g['ops']))}) on {where} ...")
        settings = Settings(
            spec=load_spec(model["spec"]), device=device, dtype=(f.provenance or {}).get("dtype"),
            threads=dev.get("threads"), grid=QUICK if quick else GRIDS["cuda" if device.startswith("cuda") else "cpu"],
            roles=(model["role"],), ops=tuple(sorted(g["ops"])),
            extra={"command": "starsim validate --calibrate", "grid_name": "quick" if quick else "default",
                   **({"cpus": sorted(cpus)} if cpus else {})})
        t0 = time.perf_counter()
        with pinned(cpus):  # before torch starts its threads: they inherit the cores
            profiles = calibrate(settings)
        if not profiles:
            raise StarsimError("--calibrate: interrupted before any op was measured")
        where_to = out_dir / (f"cpus-{'-'.join(map(str, sorted(cpus)))}" if cpus else "any")
        (new,) = save(profiles, settings.spec, where_to)
        say(f"  {new} ({time.perf_counter() - t0:.0f} s)")
        sets += [f"{field}.path={new.resolve()}" for field in g["fields"]]
    return sets, notes
