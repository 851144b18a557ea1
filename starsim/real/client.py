"""The target's side of its connection to a draft server (:class:`DraftClient`), and
:func:`host_id`, which tells both sides whether they share a clock.

``HELLO``/``WELCOME``, clock probes when the server is on another host, then one
``DRAFT_REQUEST`` per round (the tokens emitted since the last one; ``start: true`` with the
whole context on a request's first round) answered by a ``DRAFT_REPLY`` tree; or, for a target
that decodes a running batch of sequences, one multi-sequence round (:meth:`DraftClient.draft_seqs`)
with every sequence's tree.

Clocks: the server stamps replies with its ``time.monotonic()``. Processes on one boot of
one host share that clock (equal :func:`host_id`); otherwise the client estimates
``clock_offset_s`` = server clock - its clock, with the bound ``clock_error_s``, from CLOCK
probes at connect (Cristian's method).
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
import uuid

import numpy as np

from ..net import parse_address
from . import protocol as P
from .speculation import TreeDraft, tree_depths

log = logging.getLogger("starsim.draft_server")
CLOCK_PROBES = 8


@functools.cache
def host_id() -> str:
    """Equal for two processes exactly when they share one monotonic clock: hostname + the
    kernel's boot id (monotonic time restarts at boot). Without a readable boot id, hostname +
    a per-process uuid: processes then count as on different hosts and measure their offset
    (never wrongly assumed equal)."""
    host = socket.gethostname()
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{host}/{boot or 'process-' + uuid.uuid4().hex}"


SERVER_STAMPS = ("t_arrive", "t_enqueue", "t_draft_start", "t_draft_end", "t_reply_send")


def local_times(hdr: dict, clock_offset_s: float, clock0: float) -> dict[str, float]:
    """A DRAFT_REPLY's server timestamps (:data:`SERVER_STAMPS`) on the target's clock:
    seconds since ``clock0`` of its ``time.monotonic()``, through the client's
    ``clock_offset_s`` (server clock - ours)."""
    return {k: hdr[k] - clock_offset_s - clock0 for k in SERVER_STAMPS}


def _options(req, temperature: float, seed: int | None, deadline_in_s: float | None, depth: int | None) -> None:
    """A DRAFT_REQUEST's optional header fields: sampling, a deadline, a shallower tree."""
    if temperature > 0:
        req.header.update(temperature=float(temperature), seed=seed)
    if deadline_in_s is not None:
        req.header["deadline_in_s"] = float(deadline_in_s)
    if depth is not None:
        req.header["depth"] = int(depth)


def _tree(token_ids, parents, probs, nodes, temperature: float) -> TreeDraft:
    """A received tree, checked: parents before children and, when sampled, a probability row
    for every node that has children."""
    tokens, parents = token_ids.tolist(), parents.tolist()
    if any(p >= i for i, p in enumerate(parents)):
        raise P.ProtocolError("tree nodes must come after their parents")
    depths = tree_depths(parents)
    if temperature > 0 and tokens:
        if probs is None or nodes is None or probs.ndim != 2 or probs.shape[0] != nodes.shape[0]:
            raise P.ProtocolError("a sampled draft needs draft_probs [rows, vocab] and prob_nodes [rows]")
        if not set(parents) <= set(nodes.tolist()):
            raise P.ProtocolError("draft_probs has no row for a node that has children")
    return TreeDraft(tokens, parents, depths, probs, None if nodes is None else nodes.tolist())


class DraftClient:
    """A target's connection to a draft server.

    After connecting: ``same_host`` (the server shares this process's monotonic clock),
    ``clock_offset_s`` (server clock - this process's ``time.monotonic()``) and
    ``clock_error_s`` (a bound on the offset's error; None when the server cannot be probed:
    one that predates CLOCK, whose clock is then assumed equal, as before).
    """

    def __init__(self, address: str, token: str | None = None, timeout_s: float = 60.0, info: dict | None = None,
                 delay_up=None, delay_down=None, clock_probes: int = CLOCK_PROBES):
        # delay_up / delay_down: ``nbytes -> seconds`` of an emulated link, slept before a
        # request leaves and after a reply arrives (None: the real path only)
        if not 1 <= clock_probes <= P.MAX_CLOCK_PROBES:
            raise ValueError(f"clock_probes must be in 1..{P.MAX_CLOCK_PROBES}, got {clock_probes}")
        self.delay_up, self.delay_down = delay_up, delay_down
        host, port = parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            P.send_message(self.sock, P.hello(info or {}, token))
            w = P.recv_message(self.sock)
            if w is None or w.type != P.WELCOME:
                raise P.ProtocolError(f"expected WELCOME, got {None if w is None else w.type}: "
                                      f"{None if w is None else w.header.get('reason')}")
            self.tag = w.tag
            self.needs_hidden = bool(w.header.get("needs_hidden", False))
            self.server_host_id = w.header.get("host_id")
            self.features = frozenset(f for f in (w.header.get("features") or ()) if isinstance(f, str))
            self.same_host = self.server_host_id == host_id()
            if self.same_host:
                # one clock: the offset is exactly 0; probes would only add their jitter to it
                self.clock_offset_s, self.clock_error_s = 0.0, 0.0
            elif "clock" in self.features:
                self.clock_offset_s, self.clock_error_s = self._probe_clock(clock_probes)
            else:
                log.warning("draft server %s cannot be asked for its clock; assuming it equals ours", address)
                self.clock_offset_s, self.clock_error_s = 0.0, None
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self.bytes_up = self.bytes_down = 0  # frame sizes of the last round

    def _probe_clock(self, k: int) -> tuple[float, float]:
        """(offset, error bound) from ``k`` probes: the server stamped each between our send
        (t0) and our receipt (t1), so offset = t_server - (t0 + t1) / 2 is off by at most
        (t1 - t0) / 2; the fastest probe gives the tightest bound (queueing only adds delay)."""
        best = (math.inf, 0.0)  # (rtt, offset)
        for seq in range(k):
            t0 = time.monotonic()
            P.send_message(self.sock, P.clock(self.tag, seq, t0))
            rep = P.recv_message(self.sock)
            t1 = time.monotonic()
            if rep is None or rep.type != P.CLOCK or rep.seq != seq or rep.header.get("t_client") != t0:
                kind = None if rep is None else rep.type
                raise P.ProtocolError(f"expected the answer to CLOCK probe {seq}, got {kind}")
            best = min(best, (t1 - t0, P.clock_time(rep, "t_server") - (t0 + t1) / 2))
        rtt, offset = best
        return offset, rtt / 2

    def draft(self, token_ids: list[int], start: bool = False, temperature: float = 0.0,
              seed: int | None = None, hidden=None, deadline_in_s: float | None = None,
              depth: int | None = None, sent=None) -> tuple[TreeDraft, dict]:
        """Send the tokens since the last request (the whole context when ``start``); returns
        the tree and the reply's header (its times on the server's clock: subtract
        ``clock_offset_s`` for this process's ``time.monotonic()``).
        ``temperature > 0``: the draft samples its tree with ``seed`` and sends its probabilities.
        ``deadline_in_s``: seconds until this target's next token is due (a deadline policy's key).
        ``depth``: a shallower tree than the server's (adaptive speculation).
        ``sent``: called once the request is out, before waiting for the reply."""
        self.seq += 1
        if self.needs_hidden and hidden is None:
            raise P.ProtocolError("this draft server's draft is an EAGLE head: send the target's hidden states")
        req = P.draft_request(self.tag, self.seq, np.asarray(token_ids, dtype=np.int32),
                              hidden if self.needs_hidden else None)
        if start:
            req.header["start"] = True
        _options(req, temperature, seed, deadline_in_s, depth)
        rep = self._round(req, sent)
        tree = _tree(rep.arrays["token_ids"], rep.arrays["parents"], rep.arrays.get("draft_probs"),
                     rep.arrays.get("prob_nodes"), temperature)
        self._arrived(rep)
        return tree, rep.header

    def draft_seqs(self, seqs: list[tuple[int, list[int], bool]], free=(), temperature: float = 0.0,
                   seed: int | None = None, sent=None, *, deadline_in_s: float | None = None,
                   depth: int | None = None) -> tuple[list[TreeDraft], dict]:
        """One multi-sequence round (feature ``seqs``): ``seqs`` = ``(sid, tokens, start)`` per
        sequence to draft (the tokens since that sid's last round, or its whole context when
        ``start``); ``free``: sids that ended (dropped by the server before ``seqs`` are read).
        Returns a tree per sequence, in ``seqs`` order, and the reply's header (``new_tokens``
        a list; times as :meth:`draft`'s). Sampling (``temperature > 0``): sequence ``sid``
        draws with :func:`~starsim.real.protocol.seq_seed` (``seed``, ``sid``). ``sent``,
        ``deadline_in_s`` and ``depth`` as for :meth:`draft`."""
        if "seqs" not in self.features:
            raise P.ProtocolError("this draft server does not take multi-sequence requests (no 'seqs' feature)")
        self.seq += 1
        ids = [np.asarray(t, dtype=np.int32).reshape(-1) for _, t, _ in seqs]
        req = P.draft_request_seqs(self.tag, self.seq, [(sid, len(t), start) for (sid, _, start), t in zip(seqs, ids)],
                                   np.concatenate(ids) if ids else np.zeros(0, np.int32), free)
        _options(req, temperature, seed, deadline_in_s, depth)
        rep = self._round(req, sent)
        trees = [_tree(*t, temperature) for t in P.reply_trees(rep, len(seqs))]
        new = rep.header.get("new_tokens")
        if not isinstance(new, list) or len(new) != len(seqs):
            raise P.ProtocolError(f"a multi-sequence DRAFT_REPLY needs new_tokens for its {len(seqs)} sequences")
        self._arrived(rep)
        return trees, rep.header

    def _round(self, req, sent) -> P.Message:
        """Send a DRAFT_REQUEST (after the emulated uplink's delay) and receive its DRAFT_REPLY."""
        buffers = req.buffers()
        if self.delay_up is not None:
            time.sleep(self.delay_up(sum(memoryview(b).nbytes for b in buffers)))
        self.bytes_up = P.send_buffers(self.sock, buffers)
        if sent is not None:
            sent()
        rep = P.recv_message(self.sock)
        if rep is None or rep.type != P.DRAFT_REPLY or rep.seq != self.seq:
            kind = None if rep is None else rep.type
            reason = None if rep is None else rep.header.get("reason")
            raise P.ProtocolError(f"expected DRAFT_REPLY {self.seq}, got {kind} ({reason})")
        return rep

    def _arrived(self, rep: P.Message) -> None:
        """A reply's frame size, and the emulated downlink's delay for it."""
        self.bytes_down = rep.frame_bytes  # the reply's frame size
        if self.delay_down is not None:
            time.sleep(self.delay_down(self.bytes_down))

    def close(self) -> None:
        try:
            P.send_message(self.sock, P.bye(self.tag, "done"))
        except OSError:
            pass
        self.sock.close()
