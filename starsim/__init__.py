"""starsim: predict, measure and explain one-for-many speculative decoding (StarSD).

What a user scripts, one name per step (the README's "Python API" lists them):

- a scenario: ``load_scenario``, ``validate_scenario``, ``Scenario``;
- its predictions: ``simulate`` (a :class:`Result`), ``analyze`` (the closed form),
  ``summarize`` (the metrics of any :class:`Records`);
- the commands that compose them: ``run_validation`` (``starsim validate``), ``load_plan`` and
  ``run_plan`` (``starsim plan``), ``build_report`` (``starsim report``), ``load_sweep`` and
  ``run_sweep`` (``starsim sweep``).

The last group is imported on first use (module ``__getattr__``), so ``import starsim`` loads
the simulator and nothing of the real backend, the planner or matplotlib.
"""

from .analytic import analyze
from .metrics import summarize
from .records import Records
from .result import Result
from .scenario import Scenario, load_scenario, validate_scenario
from .sim import simulate
from .version import __version__

__all__ = [
    "Records",
    "Result",
    "Scenario",
    "analyze",
    "build_report",
    "load_plan",
    "load_scenario",
    "load_sweep",
    "run_plan",
    "run_sweep",
    "run_validation",
    "simulate",
    "summarize",
    "validate_scenario",
    "__version__",
]

_LAZY = ("build_report", "load_plan", "load_sweep", "run_plan", "run_sweep", "run_validation")


def __getattr__(name: str):
    """The entry points of validate, plan, report and sweep, imported when first asked for.
    ``run_validation`` is :func:`starsim.validate.validate` (``starsim.validate`` names the module)."""
    if name == "run_validation":
        from .validate import validate as value
    elif name == "load_plan":
        from .plan import load_plan as value
    elif name == "run_plan":
        from .plan import run_plan as value
    elif name == "build_report":
        from .report import build_report as value
    elif name == "load_sweep":
        from .sweep import load_sweep as value
    elif name == "run_sweep":
        from .sweep import run_sweep as value
    else:
        raise AttributeError(f"module 'starsim' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
