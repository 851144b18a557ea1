"""Device units: where each instance runs, and contention when instances share a unit."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from ..distributions import timing_sampler
from ..scenario import Scenario, parse_device_ref
from ..streams import Stream, rng_for


class DeviceUnit:
    """One accelerator. ``resource`` is None when nobody competes for it (no SimPy
    request/release on the hot path); otherwise co-located work queues FIFO for a slot.
    ``host``: the pool's shared cores, when the pool has ``cores`` (processor sharing): the
    work of whoever holds a slot, and message work, which holds none, share them.
    ``handover``: draws the time a slot takes to pass to a holder that waited for it (None: none)."""

    def __init__(self, name: str, slots: int):
        self.name = name
        self.slots = slots
        self.users = 0
        self.resource: simpy.Resource | None = None
        self.host: SharedCores | None = None
        self.handover: Callable[..., float] | None = None

    def acquire(self, env: simpy.Environment):
        """Generator: a slot of the unit (``resource`` must be set); returns its request, to
        release. A holder that had to wait starts ``handover`` later: the slot passes on only
        once the one before has let go and the waiting process runs (a real run's turn is a
        lock between processes on one core, and its waiter must be woken and scheduled)."""
        req = self.resource.request()
        waited = not req.triggered  # a free slot is granted at once
        yield req
        if waited and self.handover is not None:
            yield env.timeout(self.handover(0.0, 0.0, 0.0))
        return req

    @property
    def free(self) -> bool:
        """Nothing to share: a task's time is its own (the simulator's fast path)."""
        return self.resource is None and self.host is None


class SharedCores:
    """Processor sharing over ``cores`` identical cores: with ``k`` tasks running, each
    progresses at ``min(1, cores / k)`` of its own speed, so a task's duration is the time
    it needs alone on a core, stretched while more tasks than cores run (CPU processes on
    one host, as a real run on one machine has them)."""

    def __init__(self, env: simpy.Environment, cores: int):
        self.env, self.cores = env, cores
        self.jobs: dict[int, list] = {}  # job id -> [work left (s on one core), done event]
        self.last = env.now
        self._next_id = 0
        self._gen = 0  # schedules made stale by a later arrival or departure

    def _rate(self) -> float:
        k = len(self.jobs)
        return 1.0 if k <= self.cores else self.cores / k

    def _advance(self) -> None:
        now = self.env.now
        if self.jobs and now > self.last:
            done = (now - self.last) * self._rate()
            for job in self.jobs.values():
                job[0] -= done
        self.last = now

    def _schedule(self) -> None:
        self._gen += 1
        if not self.jobs:
            return
        jid, job = min(self.jobs.items(), key=lambda kv: kv[1][0])
        gen = self._gen
        ev = self.env.timeout(max(job[0], 0.0) / self._rate())
        ev.callbacks.append(lambda _e: self._finish(gen, jid))

    def _finish(self, gen: int, jid: int) -> None:
        if gen != self._gen:
            return
        self._advance()
        # the job this wake-up was for, and any that finish at the same time
        done = [j for j, job in self.jobs.items() if j == jid or job[0] <= 1e-12]
        for j in done:
            self.jobs.pop(j)[1].succeed()
        self._schedule()

    def run(self, work: float):
        """Hold a share of the cores until ``work`` seconds of one core's time are done."""
        self._advance()
        ev = self.env.event()
        self.jobs[self._next_id] = [work, ev]
        self._next_id += 1
        self._schedule()
        yield ev


def build_units(env: simpy.Environment, scenario: Scenario, users: list[str]) -> dict[str, DeviceUnit]:
    """Create the units named in ``users`` (one entry per engine/target that runs there)."""
    units: dict[str, DeviceUnit] = {}
    hosts: dict[str, SharedCores] = {}
    for name in users:
        if name not in units:
            pool, _ = parse_device_ref(name)
            dev = scenario.devices[pool]
            units[name] = DeviceUnit(name, dev.slots)
            if dev.cores is not None:  # the pool's units share its cores
                if pool not in hosts:
                    hosts[pool] = SharedCores(env, dev.cores)
                units[name].host = hosts[pool]
        units[name].users += 1
    for i, u in enumerate(units.values()):
        if u.users > u.slots:  # turns on the unit; with a host, whoever holds it runs on a share of the cores
            u.resource = simpy.Resource(env, capacity=u.slots)
            pool, unit = parse_device_ref(u.name)
            spec = scenario.devices[pool].handover_time
            if spec is not None:
                u.handover = timing_sampler(spec.for_instance(unit or 0), rng_for(scenario.seed, Stream.HANDOVER, i))
    return units
