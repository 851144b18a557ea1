"""The run's requests, shared by its target processes: the next one a target takes (the
run-wide counter under the simulator's rules) and those each target holds in progress (so that
a killed process's requests are still in the table)."""

from __future__ import annotations

from ..records import RequestRow
from ..rules import closed_loop_turn


def next_request(job, issued, served: int) -> tuple[int, int] | None:
    """A target's next request (``job``: its :class:`~starsim.real.execute.TargetJob`), having
    ``served`` some: (its id, from the run's shared counter ``issued``; the index of its
    prompt), or None when it has none: a closed loop's turn
    (:func:`starsim.rules.closed_loop_turn`, the simulator's rule), an open loop's schedule
    spent (its arrivals are within the budget already)."""
    with issued.get_lock():
        n = issued.value
        if job.arrivals is None:
            i = closed_loop_turn(served, len(job.prompts), job.repeat, n, job.budget)
        else:
            i = n if n < len(job.arrivals) else None
        if i is None:
            return None
        issued.value = n + 1
    return n, i



class InProgress:
    """Each target's requests in progress, in shared memory (``slots`` per target; request id
    -1: a free slot), so that the requests of a target process that was killed are still in
    the requests table."""

    FIELDS = ("request", "prompt_tokens", "output_tokens", "t_arrival")

    def __init__(self, ctx, n_targets: int, slots: int = 1):
        self.slots = slots
        self.array = ctx.Array("d", [-1.0, 0.0, 0.0, 0.0] * (n_targets * slots))

    def _at(self, index: int, rid: int) -> int:
        """The offset of target ``index``'s slot holding request ``rid`` (-1: a free one)."""
        w = len(self.FIELDS)
        for k in range(self.slots):
            at = w * (index * self.slots + k)
            if self.array[at] == rid:
                return at
        raise ValueError(f"target {index} holds no request {rid} in progress")

    def take(self, index: int, req: RequestRow) -> None:
        at = self._at(index, -1)
        self.array[at: at + len(self.FIELDS)] = [getattr(req, f) for f in self.FIELDS]

    def clear(self, index: int, rid: int) -> None:
        self.array[self._at(index, rid)] = -1

    def lost(self, index: int) -> list[RequestRow]:
        """The requests target ``index`` had taken, unfinished."""
        w, out = len(self.FIELDS), []
        for k in range(self.slots):
            at = w * (index * self.slots + k)
            got = dict(zip(self.FIELDS, self.array[at: at + w]))
            if got["request"] >= 0:
                out.append(RequestRow(request=int(got["request"]), target=index,
                                      prompt_tokens=int(got["prompt_tokens"]),
                                      output_tokens=int(got["output_tokens"]), t_arrival=got["t_arrival"]))
        return sorted(out, key=lambda r: r.request)
