"""The M-for-N draft fabric in the simulator: several draft engines, targets paired with
them by a :mod:`starsim.pairing` policy, servers that fail (``draft.fabric``)."""

from __future__ import annotations

import numpy as np
import simpy

from ..pairing import NoDraftServer, make_pairing
from ..scenario import Fabric as FabricConfig
from .draft import DraftEngine


class Fabric:
    def __init__(self, env: simpy.Environment, engines: list[DraftEngine], cfg: FabricConfig,
                 rng: np.random.Generator):
        self.env, self.engines = env, engines
        self.pairing = make_pairing(cfg.pairing, len(engines), rng)
        self.repair_queue = cfg.repair_queue
        self.of: dict[int, int] = {}  # target -> the server it is paired with
        self.repairs = 0  # a target moved to another server (failure or saturation)
        for f in cfg.failures:
            env.process(self._fail_at(f.server, f.at_s))

    def _fail_at(self, server: int, at_s: float):
        yield self.env.timeout(at_s)
        self.pairing.alive[server] = False
        self.engines[server].fail()

    def _pair(self, target: int, leave: bool) -> DraftEngine | None:
        cur = self.of.get(target)
        try:
            j = self.pairing.pair(target, cur, leave=leave and cur is not None)
        except NoDraftServer:
            self.of.pop(target, None)
            return None
        if cur is not None and j != cur:
            self.repairs += 1
        self.of[target] = j
        return self.engines[j]

    def engine_for(self, target: int) -> DraftEngine | None:
        """The engine ``target`` uses for the request it starts now (None: every server is down).
        It keeps its server unless that one is down or, with ``repair_queue``, saturated."""
        cur = self.of.get(target)
        if cur is None:
            return self._pair(target, False)
        saturated = self.repair_queue is not None and len(self.engines[cur].policy) > self.repair_queue
        if self.pairing.alive[cur] and not saturated:
            return self.engines[cur]
        return self._pair(target, True)

    def after_failure(self, target: int) -> DraftEngine | None:
        """``target``'s server failed under it: another one, or None when none is left."""
        return self._pair(target, True)
