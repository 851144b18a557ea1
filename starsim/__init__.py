"""starsim: predict, measure and explain one-for-many speculative decoding (StarSD)."""

__version__ = "0.1.0"

from .analytic import analyze  # noqa: E402
from .metrics import summarize  # noqa: E402
from .records import Records  # noqa: E402
from .result import Result  # noqa: E402
from .scenario import Scenario, load_scenario, validate_scenario  # noqa: E402
from .sim import simulate  # noqa: E402

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
