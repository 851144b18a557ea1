"""starsim: predict, measure and explain one-for-many speculative decoding (StarSD)."""

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
    "load_scenario",
    "simulate",
    "summarize",
    "validate_scenario",
    "__version__",
]
