"""Capacity planning: from a plan file (the target's GPU options, the draft candidates, the
fleet sizes and draft counts, other fields to search, the latency objectives) to what to
deploy, confirmed by the simulator (``starsim plan``)."""

from .plan_file import PlanFile, load_plan
from .run import run_plan

__all__ = ["PlanFile", "load_plan", "run_plan"]
