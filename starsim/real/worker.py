"""A target worker: runs requests with a target model, drafts from a draft server, and
writes the same record rows as the simulator (:mod:`starsim.records`).

Times are ``time.monotonic() - clock0`` on the worker's host. The draft server's timestamps
(sent back in each reply, on the server's clock) are mapped onto that clock with the
client's estimated offset (exactly 0 on one host; see :class:`~starsim.real.server.DraftClient`),
so they line up to within :attr:`TargetWorker.clock_error_s`. If the draft
server goes away (a refused or broken connection, a timeout), the worker falls back to
plain autoregressive decoding for the rest of the run and finishes its requests; the
rows say from when (``draft = -1``, no tree) and :attr:`TargetWorker.fallback_at` holds
the time.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..records import Recorder, Records
from . import protocol as P
from .server import DraftClient
from .spec import Verifier

log = logging.getLogger("starsim.target")
NAN = math.nan


class TargetWorker:
    def __init__(self, index: int, model, client: DraftClient | None, clock0: float, device: str = "cpu",
                 eos=None, temperature: float = 0.0, seed: int = 0, tpot_slo_s: float | None = None):
        self.index, self.model, self.client, self.clock0 = index, model, client, clock0
        # end-of-sequence ids: one id, several (some models have a list), or none
        self.device = device
        self.eos = frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)
        # sampling: one random stream per request, so a request's tokens do not depend on
        # which target ran it after which other request
        self.temperature, self.seed = temperature, seed
        self.tpot_slo_s = tpot_slo_s  # a deadline policy on the server needs when the next token is due
        self.rounds: list[tuple] = []
        self.requests: list[tuple] = []
        self.intervals: list[tuple] = []  # (engine, device, kind, target, start, end)
        self.outputs: list[dict] = []  # per finished request: request, target, prompt, output (token ids)
        self.fallback_at: float | None = None
        # server clock - ours, and its error bound, for the callers' reports (None: no server)
        self.clock_offset_s: float | None = getattr(client, "clock_offset_s", None)
        self.clock_error_s: float | None = getattr(client, "clock_error_s", None)

    def now(self) -> float:
        return time.monotonic() - self.clock0

    def _interval(self, kind: str, start: float, end: float) -> None:
        self.intervals.append((f"target-{self.index}", self.device, kind, self.index, start, end))

    def run_request(self, rid: int, prompt: list[int], output_tokens: int, t_arrival: float = 0.0) -> list[int]:
        """Generate ``output_tokens`` tokens (fewer at end of sequence) for ``prompt``."""
        rng = np.random.default_rng([self.seed, rid])
        v = Verifier(self.model, self.temperature, rng, hidden=bool(self.client and self.client.needs_hidden))
        t_start = self.now()
        out = [v.prefill(prompt)]
        t_first = self.now()
        self._interval("prefill", t_start, t_first)
        new, start, r_i = prompt + out, True, 0
        while len(out) < output_tokens and out[-1] not in self.eos:
            ctx = len(prompt) + len(out)
            if self.client is not None:
                t_send = self.now()
                # the next token is due when the request would fall behind its TPOT objective
                due = None if self.tpot_slo_s is None else t_first + self.tpot_slo_s * len(out) - t_send
                try:
                    tree, hdr = self.client.draft(new, start, self.temperature, int(rng.integers(2**63)), v.features,
                                                  deadline_in_s=due)
                except (P.ProtocolError, OSError) as e:
                    self.fallback_at = self.now()
                    log.warning("target %d: draft server lost (%s); decoding autoregressively from %.3f s",
                                self.index, e, self.fallback_at)
                    self.client = None
                    v.hidden = False  # no draft to feed any more
                    continue
                t_arrive = self.now()
                r = v.verify(tree)
                t_end = self.now()
                self._interval("verify", t_arrive, t_end)
                emitted = self._until_eos(r.emitted[: output_tokens - len(out)])
                # the server's timestamps, moved onto our clock
                srv = [hdr[k] - self.client.clock_offset_s - self.clock0
                       for k in ("t_arrive", "t_enqueue", "t_draft_start", "t_draft_end", "t_reply_send")]
                self.rounds.append((
                    self.index, rid, r_i, 0, t_send, *srv, t_arrive, t_arrive, t_end, ctx, int(hdr["new_tokens"]),
                    r.tree_tokens, max(tree.depths, default=0), r.accepted, len(emitted),
                    self.client.bytes_up, self.client.bytes_down, int(hdr["kv_bytes"]),
                ))
                new, start = r.emitted, False
            else:  # autoregressive: one token per step, no draft
                t0 = self.now()
                emitted = [v.step()]
                t_end = self.now()
                self._interval("decode", t0, t_end)
                self.rounds.append((self.index, rid, r_i, -1, NAN, NAN, NAN, NAN, NAN, NAN, NAN, t0, t_end, ctx, 0,
                                    0, 0, 0, 1, 0, 0, 0))
            out += emitted
            r_i += 1
        self.requests.append((rid, self.index, len(prompt), output_tokens, len(out), t_arrival, t_start, t_first,
                              self.now()))
        self.outputs.append({"request": rid, "target": self.index, "prompt": list(prompt), "output": out})
        return out

    def _until_eos(self, tokens: list[int]) -> list[int]:
        """``tokens`` up to and including the first end-of-sequence id (the request ends there)."""
        for j, t in enumerate(tokens):
            if t in self.eos:
                return tokens[: j + 1]
        return tokens

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def assemble_records(parts: list[dict], meta: dict, draft_intervals: list[tuple] = ()) -> Records:
    """One run's tables from the workers' rows (dicts with ``rounds``, ``requests``,
    ``intervals``, as :class:`TargetWorker` holds them) and the draft server's intervals.

    The run ends with the last recorded work (not with the processes' shutdown after it);
    ``meta["t_end"]`` is kept only when nothing was recorded.
    """
    rec = Recorder()
    for part in parts:
        rec.rounds += [tuple(row) for row in part["rounds"]]
        rec.requests += [tuple(row) for row in part["requests"]]
        rec.intervals += [tuple(row) for row in part["intervals"]]
    rec.intervals += list(draft_intervals)
    if rec.intervals:
        meta = {**meta, "t_end": max(row[-1] for row in rec.intervals)}
    return rec.finish(meta)
