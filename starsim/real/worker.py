"""A target worker: runs requests with a target model, drafts from a draft server, and
writes the same record rows as the simulator (:mod:`starsim.records`).

Times are ``time.monotonic() - clock0`` on the worker's host. The draft server's timestamps
(sent back in each reply, on the server's clock) are mapped onto that clock with the
client's estimated offset (exactly 0 on one host; see :class:`~starsim.real.client.DraftClient`),
so they line up to within :attr:`TargetWorker.clock_error_s`. If the draft
server goes away (a refused or broken connection, a timeout), the worker falls back to
plain autoregressive decoding for the rest of the run and finishes its requests; the
rows say from when (``draft = -1``, no tree) and :attr:`TargetWorker.fallback_at` holds
the time.

With a draft fabric (``draft.fabric``: several draft servers), a :class:`FabricClient`
pairs the worker with one server at a time: at a request's start (a failed or, with
``repair_queue``, saturated server is left then), and at once when its connection fails
mid-request, when the worker resends its whole context (``start: true``) to the new server,
which holds none of its state. Only with every server down does it fall back as above.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..pairing import Pairing
from ..records import Recorder, Records, RequestRow, RoundWriter
from ..rules import Seat, emitted, token_due
from ..streams import Stream, rng_for
from . import protocol as P
from .client import DraftClient, local_times
from .resources import FREE, Turn
from .speculation import TreeDraft, Verifier

log = logging.getLogger("starsim.target")


class FabricClient:
    """A target's side of an M-for-N draft fabric: its :class:`~starsim.rules.Seat` (the
    server it is paired with, when it keeps it, when it leaves it: the simulator's rule), one
    connection per server it has used, and the connection failures that make it pair again.

    ``pairing`` works over the fabric's load board (shared by every target; ``lock`` guards
    it); ``connect(address)`` opens a :class:`DraftClient`; ``repairs`` counts the moves to
    another server.
    """

    def __init__(self, index: int, addresses: list[str], pairing: Pairing, lock, connect,
                 repair_queue: int | None = None, seats=None):
        self.index, self.addresses, self.lock, self.connect = index, list(addresses), lock, connect
        self.seat = Seat(index, pairing, repair_queue)
        # seats[index]: the server this target is paired with (-1: none), on the shared board, so
        # that the run can give back the load of a target process that was killed
        self.seats = seats
        self.clients: dict[int, DraftClient] = {}
        self.tags: list[tuple[int, int]] = []  # (server, tag) of every connection, for the draft intervals
        self.down = False  # every server down (or unreachable): no speculation from here on
        self._failed = 0  # connections failed since the last served round

    @property
    def server(self) -> int | None:
        return self.seat.server

    @property
    def repairs(self) -> int:
        return self.seat.repairs

    def connect_all(self) -> None:
        """Open a connection to every server now (start-up, before the run's clock starts)."""
        for j in range(len(self.addresses)):
            self._client(j)

    def _client(self, j: int) -> DraftClient:
        c = self.clients.get(j)
        if c is None:
            c = self.clients[j] = self.connect(self.addresses[j])
            self.tags.append((j, c.tag))
        return c

    def _drop(self, j: int | None) -> None:
        c = self.clients.pop(j, None) if j is not None else None
        if c is not None:
            c.close()

    def _moved(self, before: int | None) -> int | None:
        """After the seat moved (or not): the board's copy, the log line; the server now."""
        j = self.seat.server
        if self.seats is not None:
            self.seats[self.index] = -1 if j is None else j
        if j is None:
            self.down = True
        elif before is not None and j != before:
            log.info("target %d: draft server %d -> %d", self.index, before, j)
        return j

    def _pair(self, leave: bool) -> int | None:
        before = self.seat.server
        with self.lock:
            self.seat.pair(leave)
        return self._moved(before)

    def _connected(self, j: int | None) -> DraftClient | None:
        """The connection to server ``j``; one that cannot be opened counts as a failure, and
        the target pairs again (after more failures in a row than servers, it gives up)."""
        while j is not None:
            try:
                return self._client(j)
            except (P.ProtocolError, OSError) as e:
                log.warning("target %d: cannot connect to draft server %d (%s)", self.index, j, e)
                self._drop(j)
                j = self._give_up() if self._fail() else self._pair(True)
        return None

    def _fail(self) -> bool:
        self._failed += 1
        return self._failed > len(self.addresses)

    def _give_up(self) -> None:
        with self.lock:
            self.seat.leave()
        self._moved(None)

    def begin(self) -> DraftClient | None:
        """At a request's start: the client of the server to use (None: every server is down)."""
        if self.down:
            return None
        before = self.seat.server
        with self.lock:
            self.seat.begin()
        return self._connected(self._moved(before))

    def repair(self) -> DraftClient | None:
        """The connection to the paired server failed mid-request: the client of another live
        server (the same one, reconnected, when it is the only live one; None: none left)."""
        self._drop(self.server)
        if self._fail():
            self._give_up()
            return None
        return self._connected(self._pair(True))

    def served(self, header: dict) -> None:
        """A reply came from the paired server: note its queue length."""
        self._failed = 0
        q = header.get("queue_len", 0)
        self.seat.served(q if isinstance(q, int) and not isinstance(q, bool) else 0)

    def close(self) -> None:
        """The session ends: unpair and close every connection."""
        with self.lock:
            self.seat.leave()
        if self.seats is not None:
            self.seats[self.index] = -1
        for j in list(self.clients):
            self._drop(j)

@dataclass(frozen=True)
class WorkerOptions:
    """A target worker's options from the run it belongs to, each defaulting to a plain star's:
    the ``device`` name its rows give, its model's end-of-sequence ids (``eos``: one id,
    several, or None), sampling (``temperature``, 0: greedy; ``seed``: one stream per
    request), its TPOT objective (``tpot_slo_s``: a deadline policy on the server needs when
    the next token is due) and the draft engine its rows name when there is one server
    (``draft_index``: the simulator numbers a one_for_one run's engines by target)."""

    device: str = "cpu"
    eos: Any = None
    temperature: float = 0.0
    seed: int = 0
    tpot_slo_s: float | None = None
    draft_index: int = 0


@dataclass
class _Request:
    """One request's state as :meth:`TargetWorker.run_request` goes through its rounds."""

    prompt: list[int]
    output_tokens: int
    verifier: Verifier
    rng: np.random.Generator
    turn: Turn
    rows: RoundWriter
    t_first: float
    out: list[int]  # the tokens generated so far
    new: list[int]  # the tokens the draft has not seen yet
    start: bool = True  # the next draft request carries the whole context
    sent: list = field(default_factory=list)  # the features sent this request (EAGLE): a new fabric server gets all
    pending: list = field(default_factory=list)  # EAGLE features of tokens decoded without speculation, unsent


class TargetWorker:
    """One target: runs requests with its model against a draft server (or a fabric of them),
    recording the simulator's rows (see the module docstring)."""

    def __init__(self, index: int, model, client: DraftClient | None, clock0: float,
                 options: WorkerOptions = WorkerOptions(), *, fabric: FabricClient | None = None, controller=None,
                 unit=FREE):
        """The target's index, model, draft client and clock, its ``options``, and the run's
        collaborators it uses: a draft ``fabric`` (several draft servers, the client of the
        paired one taken at each request's start: ``client`` is then None until the first
        request), an adaptive ``controller`` (:mod:`starsim.adaptive`: the depth of each
        round, 0 = one plain step) and the ``unit``'s turns, held around each prefill, verify
        and decode step (a resources.UnitLock when other roles share this target's unit: they
        take turns, as in the simulator)."""
        self.index, self.model, self.client, self.clock0 = index, model, client, clock0
        self.fabric, self.controller, self.unit = fabric, controller, unit
        self.device, self.draft_index = options.device, options.draft_index
        eos = options.eos
        self.eos = frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)
        self.temperature, self.seed, self.tpot_slo_s = options.temperature, options.seed, options.tpot_slo_s
        self.rec = Recorder()  # rows as tuples, built by keyword: sent to the parent as they are
        self.rounds, self.requests, self.intervals = self.rec.rounds, self.rec.requests, self.rec.intervals
        self.outputs: list[dict] = []  # per finished request: request, target, prompt, output (token ids)
        self.fallback_at: float | None = None
        # server clock - ours, and its error bound, for the callers' reports (None: no server)
        first = client if fabric is None else next(iter(fabric.clients.values()), None)
        self.clock_offset_s: float | None = getattr(first, "clock_offset_s", None)
        self.clock_error_s: float | None = getattr(first, "clock_error_s", None)

    def now(self) -> float:
        return time.monotonic() - self.clock0

    def run_request(self, rid: int, prompt: list[int], output_tokens: int, t_arrival: float = 0.0) -> list[int]:
        """Generate ``output_tokens`` tokens (fewer at end of sequence) for ``prompt``: the
        prefill, then rounds (:meth:`_round`) until the request is done.

        The unit is this target's from each verify's start until its next request is out
        (resources.Turn), and around the prefill and each plain step."""
        rng = rng_for(self.seed, Stream.SAMPLING, rid)
        if self.fabric is not None:
            self.client = self.fabric.begin()
            if self.client is None and self.fallback_at is None:
                self._lost("every draft server of the fabric is down")
        v = Verifier(self.model, self.temperature, rng, hidden=bool(self.client and self.client.needs_hidden))
        req = RequestRow(request=rid, target=self.index, prompt_tokens=len(prompt), output_tokens=output_tokens,
                         t_arrival=t_arrival, t_start=self.now())
        with Turn(self.unit) as turn:  # given back here if the request ends with an exception
            turn.take()
            t_prefill = self.now()
            out = [v.prefill(prompt)]
            t_first = req.t_first_token = self.now()
            self.rec.interval_writer(engine=f"target-{self.index}", device=self.device, kind="prefill",
                                     packed=False)(target=self.index, start=t_prefill, end=t_first)
            rows = RoundWriter(self.rec, target=self.index, request=rid, engine=f"target-{self.index}",
                               device=self.device, packed=False)
            r = _Request(prompt, output_tokens, v, rng, turn, rows, t_first, out, new=prompt + out)
            while len(out) < output_tokens and out[-1] not in self.eos:
                out += self._round(r)
        req.generated_tokens, req.t_finish = len(out), self.now()
        self.requests.append(req.row())
        self.outputs.append({"request": rid, "target": self.index, "prompt": list(prompt), "output": out})
        return out

    def _round(self, r: _Request) -> list[int]:
        """One round of the request: a draft and its verify, or one plain step (no draft, or
        adaptive depth 0); the tokens it emitted (none when the draft server was lost: the
        next round goes on with another one, or without)."""
        ctx = len(r.prompt) + len(r.out)
        ctl = self.controller
        d = ctl.depth(ctx) if ctl is not None and self.client is not None else None
        if self.client is None or d == 0:
            return self._plain_step(r, d, ctx)
        t_send = self.now()
        drafted = self._draft(r, d, t_send)
        if drafted is None:
            return []
        return self._verify(r, *drafted, t_send=t_send, d=d, ctx=ctx)

    def _draft(self, r: _Request, d: int | None, t_send: float) -> tuple[TreeDraft, dict] | None:
        """The round's draft request (a tree ``d`` deep; None: the server's own depth) and its
        reply: (tree, header); None when the server is lost (:meth:`_draft_lost`)."""
        v = r.verifier
        # the next token is due when the request would fall behind its TPOT objective
        due = None if self.tpot_slo_s is None else token_due(r.t_first, self.tpot_slo_s, len(r.out)) - t_send
        if r.pending:
            v.features, r.pending = np.concatenate([*r.pending, v.features]), []
        try:
            shallower = d if d is not None and d < self.controller.max_depth else None
            tree, hdr = self.client.draft(r.new, r.start, self.temperature, int(r.rng.integers(2**63)), v.features,
                                          deadline_in_s=due, depth=shallower, sent=r.turn.give)
        except (P.ProtocolError, OSError) as e:
            r.turn.give()
            self._draft_lost(r, e)
            return None
        if v.hidden:
            r.sent.append(v.features)
        return tree, hdr

    def _draft_lost(self, r: _Request, why: Exception) -> None:
        """The draft server failed mid-request: with a fabric, another server gets the whole
        context; with none left, the request goes on without speculation."""
        v = r.verifier
        if self.fabric is not None:
            self.client = self.fabric.repair()
            if self.client is not None:
                r.new, r.start = r.prompt + r.out, True
                if v.hidden:
                    v.features, r.sent = np.concatenate([*r.sent, v.features]), []
                return
        self._lost(why)
        v.hidden = False  # no draft to feed any more

    def _verify(self, r: _Request, tree: TreeDraft, hdr: dict, *, t_send: float, d: int | None,
                ctx: int) -> list[int]:
        """Verify the round's tree (once the unit is this target's) and write its rows; the
        tokens it emitted."""
        server = self.draft_index
        if self.fabric is not None:
            self.fabric.served(hdr)
            server = self.fabric.server
        t_arrive = self.now()
        r.turn.take()  # the verify starts when the unit is this target's
        t_verify = self.now()
        res = r.verifier.verify(tree)
        t_end = self.now()
        kept = self._until_eos(res.emitted[: emitted(res.accepted, len(r.out), r.output_tokens)])
        # the server's timestamps, moved onto our clock
        srv = local_times(hdr, self.client.clock_offset_s, self.clock0)
        if hdr.get("pipelined"):  # the tree was drafted ahead: the round began when it was queued
            t_send = min(t_send, srv["t_enqueue"])
        r.rows.tree(draft=server, tree_tokens=res.tree_tokens, depth=max(tree.depths, default=0),
                    bytes_down=self.client.bytes_down)
        r.rows.round(t_send=t_send, t_draft_arrive=srv["t_arrive"], t_enqueue=srv["t_enqueue"],
                     t_draft_start=srv["t_draft_start"], t_draft_end=srv["t_draft_end"],
                     t_reply_send=srv["t_reply_send"], t_target_arrive=t_arrive,
                     t_verify_start=t_verify, t_verify_end=t_end, context_tokens=ctx,
                     new_tokens=int(hdr["new_tokens"]), accepted=res.accepted, emitted=len(kept),
                     bytes_up=self.client.bytes_up, draft_kv_bytes=int(hdr["kv_bytes"]))
        r.new, r.start = res.emitted, False
        if self.controller is not None:
            self.controller.observe(d, res.accepted, t_end - t_send, ctx)
        return kept

    def _plain_step(self, r: _Request, d: int | None, ctx: int) -> list[int]:
        """One token without speculation (no draft, or adaptive depth ``d`` 0); the token."""
        v = r.verifier
        if d == 0 and v.hidden:
            r.pending.append(v.features)  # the draft gets them with the next request
        r.turn.take()
        t0 = self.now()
        emitted = [v.step()]
        t_end = self.now()
        r.turn.give()
        r.rows.decode(t_verify_start=t0, t_verify_end=t_end, context_tokens=ctx)
        if d == 0:  # the draft sees these tokens with the next request
            r.new = r.new + emitted
            self.controller.observe(0, 0, t_end - t0, ctx)
        return emitted

    def _lost(self, why) -> None:
        self.fallback_at = self.now()
        log.warning("target %d: draft server lost (%s); decoding autoregressively from %.3f s",
                    self.index, why, self.fallback_at)
        self.client = None

    def _until_eos(self, tokens: list[int]) -> list[int]:
        """``tokens`` up to and including the first end-of-sequence id (the request ends there)."""
        for j, t in enumerate(tokens):
            if t in self.eos:
                return tokens[: j + 1]
        return tokens

    def close(self) -> None:
        if self.fabric is not None:
            self.fabric.close()
        elif self.client is not None:
            self.client.close()


def assemble_records(parts: list[dict], meta: dict, draft_intervals: list[tuple] = ()) -> Records:
    """One run's tables from the workers' rows (dicts with ``rounds``, ``requests``,
    ``intervals``, as :class:`TargetWorker` holds them, and a serving target's ``steps``) and
    the draft server's intervals.

    The run ends with the last recorded work (not with the processes' shutdown after it);
    ``meta["t_end"]`` is kept only when nothing was recorded.
    """
    rec = Recorder()
    for part in parts:
        rec.rounds += [tuple(row) for row in part["rounds"]]
        rec.requests += [tuple(row) for row in part["requests"]]
        rec.intervals += [tuple(row) for row in part["intervals"]]
        if part.get("steps") is not None:
            rec.steps = (rec.steps or []) + [tuple(row) for row in part["steps"]]
    rec.intervals += list(draft_intervals)
    if rec.intervals:
        # a request's finish too: stamped apart from its last interval's end, it can come out a
        # few ns later, and a request finishing after the run's end would fall out of its window
        finished = [row[-1] for row in rec.requests if math.isfinite(row[-1])]
        meta = {**meta, "t_end": max(max(row[-1] for row in rec.intervals), *finished)}
    return rec.finish(meta)
