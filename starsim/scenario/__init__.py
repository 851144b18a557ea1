"""The scenario: typed schema (the single source of truth) and YAML loading with overrides.

The format is documented field by field in ``scenarios/README.md``; the ``description``
of each field is the same text, so ``starsim schema`` prints it too.

One module per part of the scenario, bottom up: ``limits`` (the sizes refused), ``base``
(the base model, number types), ``devices``, ``tree``, ``draft``, ``link``, ``step_time``,
``targets``, ``workload``, ``real``, ``schema`` (the whole :class:`Scenario`, its
cross-field checks), ``digest``; then ``overrides`` (``--set``), ``error_paths`` (pydantic's
errors as the paths a user wrote) and ``load``. Callers import from here.
"""

from .base import Core, NonNeg, Pos
from .devices import Device, parse_device_ref
from .draft import SERVER_OFF, SERVER_ONLY, Adaptive, Batching, Draft, DraftFailure, Fabric
from .limits import (
    MAX_BYTES_PER_TOKEN,
    MAX_CPU,
    MAX_DURATION_S,
    MAX_KV_TOKENS,
    MAX_PROMPTS,
    MAX_RATE_PER_S,
    MAX_SEQS,
    MAX_TREE_DEPTH,
    MAX_TREE_TOKENS,
    MAX_TREE_TOP_K,
    MAX_UNITS,
    MAX_WINDOWS,
    MIN_WINDOW_S,
)
from .link import Link, LinkDirection, Payload
from .load import as_mode, load_scenario, validate_scenario
from .overrides import apply_override, parse_override
from .real import Fault, KillTarget, ModelSource, PretrainedModel, Real, SpecModel, StopDraft
from .schema import MODES, Scenario
from .step_time import StepTime
from .targets import Serving, TargetGroup
from .tree import Tree
from .workload import WORKLOAD_KINDS, ClosedLoop, GammaArrivals, Poisson, TraceReplay, Workload

__all__ = [
    "MAX_BYTES_PER_TOKEN", "MAX_CPU", "MAX_DURATION_S", "MAX_KV_TOKENS", "MAX_PROMPTS", "MAX_RATE_PER_S",
    "MAX_SEQS", "MAX_TREE_DEPTH", "MAX_TREE_TOKENS", "MAX_TREE_TOP_K", "MAX_UNITS", "MAX_WINDOWS",
    "MIN_WINDOW_S", "MODES", "SERVER_OFF", "SERVER_ONLY", "WORKLOAD_KINDS",
    "Adaptive", "Batching", "ClosedLoop", "Core", "Device", "Draft", "DraftFailure", "Fabric", "Fault",
    "GammaArrivals", "KillTarget", "Link", "LinkDirection", "ModelSource", "NonNeg", "Payload", "Poisson", "Pos",
    "PretrainedModel", "Real", "Scenario", "Serving", "SpecModel", "StepTime", "StopDraft", "TargetGroup",
    "TraceReplay", "Tree", "Workload",
    "apply_override", "as_mode", "load_scenario", "parse_device_ref", "parse_override", "validate_scenario",
]
