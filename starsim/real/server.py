"""The draft server, as StarSD builds it.

:class:`DraftServer` decouples communication from inference, in three kinds of thread:

- the door (:mod:`starsim.real.door`): accepts connections and reads their HELLOs without a
  thread each, refusing what is over its limits;
- one per connected target (here): receives, checks (:mod:`starsim.real.request_checks`)
  and answers its messages;
- the engine (:mod:`starsim.real.draft_engine`): owns the draft model (a
  :class:`~starsim.real.speculation.Drafter`) and takes tasks from a queue under the same
  policy registry as the simulator, batching and pipelining them as the scenario says.

A target gets a tag when its HELLO is admitted; its draft KV cache lives under that tag and
is freed when its connection ends, however it ends. A target that decodes many sequences
asks for all their trees in one multi-sequence request (feature ``seqs``, see
:mod:`starsim.real.protocol`): each sequence's context and draft state then live under
``(tag, sid)``, freed when the target says the sequence ended or its connection ends. So the server runs at most
``max_targets + 2`` threads (the door, the engine and one per target) whatever arrives.

A frame that is malformed, oversized, out of order or from the wrong tag gets a log line
and closes that connection; the server keeps serving the others. Nothing from the network
is unpickled or ``torch.load``-ed: frames are decoded by :mod:`starsim.real.protocol`.

The target's side is :class:`~starsim.real.client.DraftClient`. Clocks: the server stamps
replies with its ``time.monotonic()`` (through :meth:`DraftServer._now`); a client on
another host measures its offset (see :mod:`starsim.real.client`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque

import numpy as np

from . import protocol as P
from . import request_checks as check
from .client import host_id
from .door import Door
from .draft_engine import DraftEngine, Part, Task
from .resources import FREE, pin
from .server_options import ServerLimits, ServerOptions
from .speculation import Drafter

log = logging.getLogger("starsim.draft_server")
MAX_REJECTED_LINES = 1000  # the newest rejection lines kept (a flood must not grow them without bound)


class DraftServer(Door, DraftEngine):
    """Serve draft trees to many targets over TCP (see the module docstring): one object, its
    admission and engine written as the mixins :class:`~starsim.real.door.Door` and
    :class:`~starsim.real.draft_engine.DraftEngine`, its connections' threads here, all under
    the one lock ``cv``."""

    def __init__(self, drafter: Drafter, bind: str = "127.0.0.1:0", *, options: ServerOptions = ServerOptions(),
                 limits: ServerLimits = ServerLimits(), token: str | None = None, vocab_size: int | None = None,
                 cpus: frozenset[int] | None = None, unit=FREE):
        """``options``: the scenario's draft policy, batching, memory and pipelining;
        ``limits``: what the server allows; ``token``: a secret targets must present;
        ``vocab_size``: token ids a request may hold (default: the draft's vocabulary).
        Declared resources (:mod:`starsim.real.resources`): every thread of this server runs on
        ``cpus``; ``unit`` is held around each draft (other roles on the draft's unit wait)."""
        self.token, self.limits = token, limits
        self.cpus, self.unit = cpus, unit
        self.vocab_size = vocab_size or drafter.model.config.vocab_size
        self.cv = threading.Condition()
        self.stop = threading.Event()
        self.weights: dict[int, float] = {}  # tag -> weight, from each target's HELLO (wfq)
        self._init_engine(drafter, options, self.weights)
        self._open_door(bind)
        self.rejected: deque[str] = deque(maxlen=MAX_REJECTED_LINES)  # a line per connection closed for a bad message
        # tag (or (tag, sid) for a multi-sequence target's sequence) -> its context
        self.contexts: dict[int | tuple[int, int], list[int]] = {}
        self.sids: dict[int, set[int]] = {}  # tag -> the sequences it holds (multi-sequence requests)
        self.hiddens: dict[int, list[np.ndarray]] = {}  # EAGLE drafts: the features behind each tag's context
        self._next_tag = 0
        self._threads: list[threading.Thread] = []  # the door's and the engine's
        self._comm: set[threading.Thread] = set()  # one per connected target, gone when it ends
        self._conns: set[socket.socket] = set()
        self.host_id = host_id()

    # ------------------------------------------------------------------ life

    def start(self) -> DraftServer:
        for fn in (self._door_loop, self._engine_loop):
            t = threading.Thread(target=fn, daemon=True, name=f"draft-{fn.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self.stop.set()
        with self.cv:
            self.cv.notify_all()
        self.sock.close()
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.cv:
            threads = self._threads + list(self._comm)
        for t in threads:
            if t.ident is not None:  # a comm thread admitted a moment ago may not have started
                t.join(timeout=5)

    @property
    def connected(self) -> int:
        """Targets connected now (each holds one comm thread)."""
        with self.cv:
            return len(self._comm)

    def __enter__(self) -> DraftServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _now(self) -> float:
        """The server's clock, for every timestamp it sends (replies, clock probes) or records
        (``intervals``): one place, so that a test can shift it."""
        return time.monotonic()

    # ------------------------------------------------------------------ sessions

    def _open_session(self, conn: socket.socket, peer, weight: float) -> bool:
        """A new tag and a comm thread for an admitted connection; False: ``max_targets`` are
        connected already (the door refuses it)."""
        with self.cv:
            if len(self._comm) >= self.limits.max_targets:
                return False
            tag, self._next_tag = self._next_tag, self._next_tag + 1
            self.weights[tag] = weight
            t = threading.Thread(target=self._serve, args=(conn, peer, tag), daemon=True, name=f"draft-comm-{tag}")
            self._comm.add(t)
            self._conns.add(conn)
        t.start()
        return True

    def _reject(self, conn: socket.socket, peer, tag: int | None, e: Exception | str) -> None:
        """Close a connection for a bad message (or a broken socket), with a line in ``rejected``."""
        line = f"{peer} tag {tag}: {e}; connection closed"
        self.rejected.append(line)
        log.warning(line)
        conn.close()

    def _serve(self, conn: socket.socket, peer, tag: int) -> None:
        """One target's connection after its HELLO (its own thread): the WELCOME, then its messages until BYE,
        a closed connection or a bad message (logged, and only this connection closed)."""
        try:
            pin(self.cpus)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            P.send_message(conn, P.welcome(tag, host_id=self.host_id, features=list(P.FEATURES),
                                           needs_hidden=self.drafter.needs_hidden))
            conn.settimeout(None)  # a target may think for a while between rounds
            probes = 0  # clock probes answered; None once the first DRAFT_REQUEST came
            while not self.stop.is_set():
                msg = P.recv_message(conn, self.limits.max_bytes)
                t_arrive = self._now()
                if msg is None or msg.type == P.BYE:
                    return
                if msg.type == P.CLOCK and probes is not None:
                    probes = self._clock_probe(conn, msg, tag, probes, t_arrive)
                    continue
                if msg.type != P.DRAFT_REQUEST:
                    after = " (clock probes only before the first request)" if msg.type == P.CLOCK else ""
                    raise P.ProtocolError(f"expected DRAFT_REQUEST, got {msg.type}{after}")
                if msg.tag != tag:
                    raise P.ProtocolError(f"request for tag {msg.tag} on the connection of tag {tag}")
                probes = None
                if "seqs" in msg.header:
                    self._answer_seqs(conn, msg, tag, t_arrive)
                else:
                    self._answer(conn, msg, tag, t_arrive)
        except (P.ProtocolError, OSError) as e:
            if not (self.stop.is_set() and isinstance(e, OSError)):  # close() shut it: not a bad message
                self._reject(conn, peer, tag, e)
        except Exception as e:  # noqa: BLE001 - a bug met by one connection closes that one only
            log.exception("serving %s tag %s", peer, tag)
            self._reject(conn, peer, tag, f"internal error: {type(e).__name__}: {e}")
        finally:
            self._release(tag)
            conn.close()
            with self.cv:
                self._conns.discard(conn)
                self._comm.discard(threading.current_thread())

    def _clock_probe(self, conn: socket.socket, msg, tag: int, probes: int, t_arrive: float) -> int:
        """Answer a CLOCK probe with the arrival time on this server's clock; probes answered."""
        if msg.tag != tag or not isinstance(msg.seq, int):
            raise P.ProtocolError(f"CLOCK needs tag {tag} and an int seq (got {msg.tag}, {msg.seq})")
        t_client = P.clock_time(msg, "t_client")
        probes += 1
        if probes > P.MAX_CLOCK_PROBES:
            raise P.ProtocolError(f"more than {P.MAX_CLOCK_PROBES} CLOCK probes")
        P.send_message(conn, P.clock(tag, msg.seq, t_client, t_arrive))
        return probes

    def _hidden(self, msg, n: int, before: list | None) -> list | None:
        """The context's features after this request, in chunks (EAGLE drafts; a chunk per request,
        so a round copies only its own rows); None for a token-only draft."""
        if not self.drafter.needs_hidden:
            return None
        h = check.hidden(msg, n, self.drafter.model.config.hidden_size)
        return [h] if before is None else [*before, h]

    def _context(self, msg, tag: int) -> tuple[list[int], list[int], list | None]:
        """A DRAFT_REQUEST's tokens checked and added to the tag's context (a whole new one with
        ``start``); the tokens, the context and its features (EAGLE), now the tag's."""
        new = check.token_ids(msg, self.vocab_size)
        if msg.header.get("start"):
            context = new
            hidden = self._hidden(msg, len(new), None)
        elif tag in self.contexts:
            context = self.contexts[tag] + new
            hidden = self._hidden(msg, len(new), self.hiddens.get(tag))
        else:
            raise P.ProtocolError("the first DRAFT_REQUEST of a request must say start: true")
        self.contexts[tag] = context
        if hidden is not None:
            self.hiddens[tag] = hidden
        return new, context, hidden

    def _answer(self, conn: socket.socket, msg, tag: int, t_arrive: float) -> None:
        """A DRAFT_REQUEST: its tree (the pipelined one on a hit, else drafted now) and the
        server's timestamps, sent back."""
        ids, context, hidden = self._context(msg, tag)
        temperature, seed = check.sampling(msg.header)
        t_enqueue = self._now()
        deadline, depth = t_arrive + check.deadline_in(msg.header), check.depth(msg.header, self.drafter.depth)
        hit = None
        if self.options.pipeline and not msg.header.get("start"):
            hit = self._take_pipelined(tag, ids)
        elif self.options.pipeline:
            self._drop_pipelined(tag)  # a new request: a pipelined tree of the last one is of no use
        if hit is not None:  # drafted while the target verified: the stamps are its
            tree, task = hit
            t_arrive = t_enqueue = task.t_enqueue
        else:
            task = self._submit(Task(tag, context, temperature, seed, hidden, deadline=deadline, depth=depth))
            if task.error:
                P.send_message(conn, P.error(task.error, tag))
                raise P.ProtocolError(task.error)
            tree = task.tree
        reply = P.draft_reply(tag, msg.seq, tree.tokens, tree.parents, tree.probs, tree.prob_nodes)
        # the server's timestamps, on its own clock (a target on another host maps them
        # with its clock offset); queue_len: tasks waiting in the policy queue now (a
        # fabric's target leaves a saturated server by it)
        with self.cv:
            waiting = len(self.queue)
        reply.header.update(t_arrive=t_arrive, t_enqueue=t_enqueue, t_draft_start=task.start,
                            t_draft_end=task.end, new_tokens=task.new_tokens,
                            kv_bytes=len(context) * self.kv_bytes_per_token, queue_len=waiting,
                            t_reply_send=self._now())
        if hit is not None:
            reply.header["pipelined"] = True
        P.send_message(conn, reply, self.limits.max_bytes)

    def _answer_error(self, conn: socket.socket, tag: int, reason: str) -> None:
        """Answer an ERROR with ``reason`` and close the connection (through ProtocolError)."""
        P.send_message(conn, P.error(reason, tag))
        raise P.ProtocolError(reason)

    def _seq_contexts(self, msg, tag: int, seed: int | None) -> tuple[list[Part], list[tuple[int, int]]]:
        """A multi-sequence request checked and applied to the tag's sequences: its ``free``
        first (contexts dropped), then each sequence's new tokens added to its context (a whole
        new one with ``start``); the parts to draft (sampling with :func:`~starsim.real.protocol.seq_seed`
        of ``seed``) and the keys whose draft state goes."""
        entries, free = check.seqs(msg, self.vocab_size)
        known = self.sids.setdefault(tag, set())
        if unknown := [sid for sid in free if sid not in known]:
            raise P.ProtocolError(f"free names sequence {unknown[0]}, which this connection does not hold")
        left = known - set(free)
        if unknown := [sid for sid, start, _ in entries if not start and sid not in left]:
            raise P.ProtocolError(f"sequence {unknown[0]} is not held on this connection: its first request "
                                  f"must say start")
        for sid in free:
            known.discard(sid)
            self.contexts.pop((tag, sid), None)
        parts = []
        for sid, start, new in entries:
            key = (tag, sid)
            context = new if start else self.contexts[key] + new
            self.contexts[key] = context
            known.add(sid)
            parts.append(Part(key, context, P.seq_seed(seed, sid)))
        return parts, [(tag, sid) for sid in free]

    def _answer_seqs(self, conn: socket.socket, msg, tag: int, t_arrive: float) -> None:
        """A multi-sequence DRAFT_REQUEST: one task holding a part per sequence, drafted in one
        round, its trees sent back concatenated with the server's timestamps."""
        if self.options.pipeline:
            self._answer_error(conn, tag, "pipelining is not supported with multi-sequence requests")
        if self.drafter.needs_hidden:
            self._answer_error(conn, tag, "multi-sequence requests are not supported with an EAGLE draft")
        temperature, seed = check.sampling(msg.header)
        parts, free = self._seq_contexts(msg, tag, seed)
        t_enqueue = self._now()
        deadline, depth = t_arrive + check.deadline_in(msg.header), check.depth(msg.header, self.drafter.depth)
        task = self._submit(Task(tag, None, temperature, seed, deadline=deadline, depth=depth, parts=parts,
                                 free=free))
        if task.error:
            self._answer_error(conn, tag, task.error)
        reply = P.draft_reply_seqs(tag, msg.seq, [(p.tree.tokens, p.tree.parents, p.tree.probs, p.tree.prob_nodes)
                                                  for p in parts])
        with self.cv:
            waiting = len(self.queue)
        held = sum(len(self.contexts[(tag, sid)]) for sid in self.sids[tag])
        reply.header.update(t_arrive=t_arrive, t_enqueue=t_enqueue, t_draft_start=task.start,
                            t_draft_end=task.end, new_tokens=[p.new_tokens for p in parts],
                            kv_bytes=held * self.kv_bytes_per_token, queue_len=waiting,
                            t_reply_send=self._now())
        P.send_message(conn, reply, self.limits.max_bytes)

    def _release(self, tag: int) -> None:
        """The tag's connection ended, however: its pipelined tree, contexts (its own and its
        sequences') and weight go, and the engine thread frees their draft state."""
        self._drop_pipelined(tag)
        self.weights.pop(tag, None)
        self.contexts.pop(tag, None)
        self.hiddens.pop(tag, None)
        keys = [(tag, sid) for sid in self.sids.pop(tag, ())]
        for key in keys:
            self.contexts.pop(key, None)
        if not self.stop.is_set():
            self._submit(Task(tag, None, free=keys))
