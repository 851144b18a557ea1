"""The M-for-N draft fabric in the simulator: several draft engines, targets paired with
them by a :mod:`starsim.pairing` policy, servers that fail (``draft.fabric``)."""

from __future__ import annotations

import numpy as np
import simpy

from ..pairing import make_pairing
from ..rules import Seat
from ..scenario import Fabric as FabricConfig
from .draft import DraftEngine


class Fabric:
    """The servers (``engines``) and each target's :class:`~starsim.rules.Seat` on their board;
    ``failures`` end servers at their times."""

    def __init__(self, env: simpy.Environment, engines: list[DraftEngine], cfg: FabricConfig,
                 rng: np.random.Generator):
        self.env, self.engines = env, engines
        self.pairing = make_pairing(cfg.pairing, len(engines), rng)
        self.repair_queue = cfg.repair_queue
        self.seats: dict[int, Seat] = {}  # target -> its seat
        for f in cfg.failures:
            env.process(self._fail_at(f.server, f.at_s))

    @property
    def repairs(self) -> int:
        """Moves of a target to another server (a failure or saturation)."""
        return sum(s.repairs for s in self.seats.values())

    def _fail_at(self, server: int, at_s: float):
        yield self.env.timeout(at_s)
        self.pairing.alive[server] = False
        self.engines[server].fail()

    def _seat(self, target: int) -> Seat:
        seat = self.seats.get(target)
        if seat is None:
            seat = self.seats[target] = Seat(target, self.pairing, self.repair_queue)
        return seat

    def _engine(self, j: int | None) -> DraftEngine | None:
        return None if j is None else self.engines[j]

    def engine_for(self, target: int) -> DraftEngine | None:
        """The engine ``target`` uses for the request it starts now (None: every server is down)."""
        return self._engine(self._seat(target).begin())

    def after_failure(self, target: int) -> DraftEngine | None:
        """``target``'s server failed under it: another one, or None when none is left."""
        return self._engine(self._seat(target).pair())

    def served(self, target: int, engine: DraftEngine) -> None:
        """A reply from ``engine`` reached ``target``: the tasks waiting there now, as a real
        server's reply says (what a saturated server is left by)."""
        self.seats[target].served(len(engine.policy))
