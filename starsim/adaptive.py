"""Adaptive speculation: how deep a target speculates in its next round (``draft.adaptive``).

A controller belongs to one target. Before each round it gives the tree depth to draft
(0: no speculation, the target decodes one token itself, no draft request); after the
round it is told what happened. Adding a controller: one class here plus ``@register``.

- ``fixed``: always the scenario's ``draft.tree`` (StarSD).
- ``goodput`` (SmartSpec-style): the depth ``d`` in ``0..tree.depth`` that maximises the
  expected tokens per second of round, ``E[tokens | d] / E[time | d]``:

  * ``E[tokens | d] = 1 + sum_{j=1..d} alpha^j``, with ``alpha`` this target's per-step
    acceptance rate, estimated from its own rounds (a round of depth ``d`` that accepted
    ``k`` tokens tried ``k + 1`` steps when ``k < d``, ``d`` otherwise, and ``k`` of them
    succeeded; running averages of both, ``smoothing`` the newest round's weight);
  * ``E[time | d]`` is the modelled compute of the round (the draft's tree at depth ``d`` and
    the verify of its tokens, from the scenario's time models) plus the *overhead* this
    target measured beyond that compute on its speculative rounds: network, messaging and
    the wait in the draft's queue, so a loaded draft server pushes depth down;
  * ``d = 0`` costs one decode step. After ``probe_every`` rounds at 0, one round at depth 1
    re-measures acceptance, so a collapse that recovers is noticed.
"""

from __future__ import annotations

from collections.abc import Callable

CONTROLLERS: dict[str, type[Controller]] = {}


def register(name: str) -> Callable[[type[Controller]], type[Controller]]:
    def deco(cls: type[Controller]) -> type[Controller]:
        CONTROLLERS[name] = cls
        cls.name = name
        return cls

    return deco


# cost(depth, context) -> modelled compute seconds of a round at that depth (0: a decode step)
Cost = Callable[[int, float], float]


class Controller:
    name = "abstract"

    def __init__(self, max_depth: int, cost: Cost, probe_every: int = 16, smoothing: float = 0.1):
        self.max_depth, self.cost = max_depth, cost
        self.probe_every, self.smoothing = probe_every, smoothing

    def depth(self, context: float) -> int:
        raise NotImplementedError

    def observe(self, depth: int, accepted: int, round_s: float, context: float) -> None:
        """A round at ``depth`` accepted ``accepted`` draft tokens and took ``round_s``
        (send to verified) at ``context``."""


@register("fixed")
class Fixed(Controller):
    def depth(self, context: float) -> int:
        return self.max_depth


@register("goodput")
class Goodput(Controller):
    def __init__(self, max_depth: int, cost: Cost, probe_every: int = 16, smoothing: float = 0.1):
        super().__init__(max_depth, cost, probe_every, smoothing)
        # optimistic start (every step accepted, no overhead): the first rounds speculate
        # fully, and measurement pulls the estimates down to what the target sees
        self.successes, self.trials = 1.0, 1.0
        self.overhead = 0.0
        self.since_spec = 0  # rounds at depth 0 since the last speculative one

    @property
    def alpha(self) -> float:
        return self.successes / self.trials if self.trials > 0 else 0.0

    def goodput(self, d: int, context: float) -> float:
        """Expected tokens per second of a round at depth ``d``."""
        a = self.alpha
        tokens = 1.0 + sum(a**j for j in range(1, d + 1))
        seconds = self.cost(d, context) + (self.overhead if d else 0.0)
        return tokens / seconds if seconds > 0 else float("inf")

    def depth(self, context: float) -> int:
        if self.since_spec >= self.probe_every:
            return 1  # probe
        return max(range(self.max_depth + 1), key=lambda d: (self.goodput(d, context), d))

    def observe(self, depth: int, accepted: int, round_s: float, context: float) -> None:
        if depth == 0:
            self.since_spec += 1
            return
        self.since_spec = 0
        w = self.smoothing
        tried = accepted + 1 if accepted < depth else depth
        self.successes += w * (accepted - self.successes)
        self.trials += w * (tried - self.trials)
        extra = max(0.0, round_s - self.cost(depth, context))
        self.overhead += w * (extra - self.overhead)


def make_controller(name: str, max_depth: int, cost: Cost, probe_every: int = 16,
                    smoothing: float = 0.1) -> Controller:
    return CONTROLLERS[name](max_depth, cost, probe_every, smoothing)


def controller_for(draft, group) -> Controller:
    """A target's controller (the simulator's and the real backend's alike), costing rounds
    with the scenario's own time models at their means: the draft's tree ``d`` deep and the
    verify of its tokens; depth 0 is one decode step. ``draft``: the scenario's ``draft``,
    ``group``: the target's group."""
    tree = draft.tree
    step = group.decode_time if group.decode_time is not None else group.verify_time

    def cost(d: int, ctx: float) -> float:
        if d == 0:
            return step.mean(1, ctx, 0)
        return draft.mean_round(1, ctx, d) + group.verify_time.mean(tree.tokens_at(d) + 1, ctx, d)

    a = draft.adaptive
    return make_controller(a.policy, tree.depth, cost, a.probe_every, a.smoothing)
