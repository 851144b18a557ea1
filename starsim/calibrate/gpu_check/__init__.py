"""The GPU check: calibrate one GPU spec, compare it with the imported profile, run a real star.

``starsim calibrate gpu-check`` (and ``analysis/gpu_check.py``, its script) runs, through the
CLI, into one output directory (``--out``; default ``analysis/figures/gpu_check/DATE-DEVICE/``),
within a time budget (``--budget-s``, 8 minutes):

1. ``starsim calibrate compute --spec SPEC --device cuda:0 --roles target`` (then ``--roles
   draft``; one process per role, so each gets its share of the budget). A role still
   running at its deadline gets Ctrl-C and keeps what it measured (``provenance.interrupted``).
2. The measured profiles against the imported (aiconfigurator database) ones of the same
   GPU, ``models/profiles/SPEC.ROLE.SYSTEM-BACKEND-tpTP.DTYPE.yaml``: per op, at each measured
   grid point, measured time / the imported fit's prediction (``compare.md``, ``compare.csv``,
   ``compare_points.csv``; the comparison of ``starsim calibrate compare --fit``).
3. A real star on the same device: ``starsim models build-pair --quick`` (seconds, on the
   CPU: build-pair never uses a GPU; ``--pair DIR`` takes a built one), that pair timed with
   ``calibrate compute --grid quick``, a device variant of ``scenarios/real_cpu_n2.yaml``
   (``scenario.yaml``), ``starsim execute`` and ``starsim validate`` for 1 and 2 targets.
4. ``summary.md`` (and ``steps.json``): date, device, torch/CUDA versions, every command
   with its wall time and outcome, the ratio table, the real runs and the validation.

``--device cpu`` runs the same steps at toy size (``tiny-cpu``, ``--grid quick``, a short
workload): what the test runs. ``--readme`` prints the README section. Exit status: 0 all
steps ran, 1 a step failed or was skipped (its log is in ``logs/``), 2 a prerequisite is missing.

Modules: ``options`` (the options, sizes and README section; the standard library only),
``device``, ``runner`` (processes against the deadline), ``files`` (the pair's spec, the
scenario), ``check`` (the step table and its loop), ``summary``. Nothing here imports torch
until the check runs.
"""

import importlib

# name -> the module that holds it; imported on first use, so that the CLI, which reads only
# ``options`` to declare the command, does not load the check at every start
_WHERE = {
    **dict.fromkeys(("STEPS", "Check", "StepRow", "main", "plan", "resolve", "role_ops", "run"), "check"),
    **dict.fromkeys(("Fail", "device_info", "slug", "system_for"), "device"),
    **dict.fromkeys(("pair_spec", "scenario"), "files"),
    **dict.fromkeys(("BUDGET_S", "DEFAULT_SPEC", "GPU", "TOY", "Size", "add_arguments", "readme"), "options"),
    "summary_md": "summary",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
