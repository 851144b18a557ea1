"""The draft server, as StarSD builds it, and the target's side of its connection.

:class:`DraftServer` decouples communication from inference: one thread per connected
target receives, checks and answers its messages, and one engine thread owns the draft
model (a :class:`~starsim.real.speculation.Drafter`) and takes tasks from a queue under the
same policy registry as the simulator (at most one outstanding task per target, since a
target waits for its reply). A target gets a tag on connect; its draft KV cache lives
under that tag and is freed when its connection ends, however it ends. With ``batch_max >
1`` the engine drafts up to that many waiting tasks at once (:meth:`Drafter.draft_batch`,
the simulator's ``draft.batch``), after waiting up to ``batch_window_s`` for more when
fewer are waiting; each batch is one busy interval.

A frame that is malformed, oversized, out of order or from the wrong tag gets a log line
and closes that connection; the server keeps serving the others.

Floods: a new connection holds no thread until its HELLO is in. One door thread reads the
HELLOs of up to ``max_pending`` connections at once (non-blocking, at most MAX_HELLO_BYTES
each) and closes any that has not sent its whole HELLO ``handshake_timeout_s`` after it
connected; connections beyond ``max_pending`` are closed at once. A target that completes
its handshake gets a thread, up to ``max_targets`` of them; beyond that its HELLO is answered
by ERROR "draft server full". So the server runs at most ``max_targets + 2`` threads (the
door, the engine and one per target) and buffers at most ``max_pending x MAX_HELLO_BYTES``
for handshakes, whatever arrives. Nothing from the network
is unpickled or ``torch.load``-ed: frames are decoded by :mod:`starsim.real.protocol`.

:class:`DraftClient` is the target's side: ``HELLO``/``WELCOME``, clock probes when the
server is on another host, then one ``DRAFT_REQUEST`` per round (the tokens emitted since
the last one; ``start: true`` with the whole context on a request's first round) answered
by a ``DRAFT_REPLY`` tree.

Clocks: the server stamps replies with its ``time.monotonic()`` (through
:meth:`DraftServer._now`). Processes on one boot of one host share that clock (equal
:func:`host_id`); otherwise the client estimates ``clock_offset_s`` = server clock - its
clock, with the bound ``clock_error_s``, from CLOCK probes at connect (Cristian's method).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..draft_state import DraftCaches, PipelineStats, take_batch
from ..net import parse_address
from ..policies import make_policy
from . import protocol as P
from .resources import FREE, pin
from .speculation import Drafter, TreeDraft, tree_depths

log = logging.getLogger("starsim.draft_server")
CLOCK_PROBES = 8
# Connection limits (see DraftServer): a HELLO frame is small (a token and a target's info);
# a connection that has not completed its handshake holds no thread, only this much buffer.
MAX_HELLO_BYTES = 16 * 1024
MAX_TARGETS = 256
MAX_PENDING = 1024
HANDSHAKE_TIMEOUT_S = 5.0
MAX_REJECTED_LINES = 1000  # the newest rejection lines kept (a flood must not grow them without bound)


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


class Busy(NamedTuple):
    """A busy interval of the draft engine, on the server's clock: one task or one batch
    (``tag``: its first task's; ``new_tokens``: the context tokens it encoded)."""

    tag: int
    start: float
    end: float
    new_tokens: int


class Eviction(NamedTuple):
    """A tag's draft cache dropped for draft memory, ``at`` the start of the round it made room for."""

    tag: int
    at: float


@dataclass
class _Task:
    target: int  # the tag (policies order tasks by ``target``)
    context: list[int]
    temperature: float = 0.0
    seed: int | None = None
    hidden: list | None = None  # EAGLE: the target's features, one row per context token, in chunks
    done: threading.Event = field(default_factory=threading.Event)
    tree: TreeDraft | None = None
    new_tokens: int = 0
    start: float = 0.0
    end: float = 0.0
    error: str | None = None
    deadline: float = math.inf  # on the server's clock: when the target's next token is due (edf)
    depth: int | None = None  # a shallower tree than the drafter's (adaptive speculation); None: the full one
    # pipelined drafting: a tree drafted ahead (``pre``) for the context plus ``path``, the last
    # tree's main path; ``taken``: the engine popped it; ``missed``: the target did not accept
    # that path (its draft time is wasted); ``cancelled``: missed before the engine took it
    pre: bool = False
    path: list[int] | None = None
    taken: bool = False
    missed: bool = False
    cancelled: bool = False
    t_enqueue: float = 0.0


@dataclass(eq=False)
class _Pending:
    """A connection whose HELLO is not all in yet (the door thread reads it)."""

    conn: socket.socket
    peer: object
    deadline: float  # monotonic: closed unheard after this
    buf: bytearray = field(default_factory=bytearray)
    need: int = P.PREFIX_SIZE  # bytes of the frame known so far to be due: the prefix, then all of it


def main_path(tree: TreeDraft) -> list[int]:
    """The tokens of a tree's most likely path: its deepest level's first node (levels are
    breadth first, best first) and that node's ancestors, root side first."""
    if not tree.tokens:
        return []
    deepest = max(tree.depths)
    node = tree.depths.index(deepest)
    path = []
    while node >= 0:
        path.append(tree.tokens[node])
        node = tree.parents[node]
    return path[::-1]


def subtree(tree: TreeDraft, token: int) -> TreeDraft | None:
    """The part of ``tree`` under its root child ``token`` (None: no such child), rooted there:
    what a pipelined tree drafted before the bonus token was known offers once it is."""
    top = next((i for i, (p, t) in enumerate(zip(tree.parents, tree.tokens)) if p < 0 and t == token), None)
    if top is None:
        return None
    keep, index = [], {}
    for i, p in enumerate(tree.parents):  # parents come first: one pass finds every descendant
        if p == top or p in index:
            index[i] = len(keep)
            keep.append(i)
    parents = [-1 if tree.parents[i] == top else index[tree.parents[i]] for i in keep]
    return TreeDraft([tree.tokens[i] for i in keep], parents, [tree.depths[i] - 1 for i in keep])


def _sampling(header: dict) -> tuple[float, int | None]:
    """A DRAFT_REQUEST's ``temperature`` (0: greedy) and ``seed``, checked."""
    t, seed = header.get("temperature", 0.0), header.get("seed")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1e3:
        raise P.ProtocolError(f"temperature must be a number in [0, 1000], got {t!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise P.ProtocolError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return float(t), seed


def _weight(info) -> float:
    """A target's weight for the wfq policy, from its HELLO's ``target`` info (default 1)."""
    w = (info or {}).get("weight", 1.0) if isinstance(info, dict) else 1.0
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1e6 or w != w:
        raise P.ProtocolError(f"weight must be a number in (0, 1e6), got {w!r}")
    return float(w)


def _depth(header: dict, most: int) -> int | None:
    """A DRAFT_REQUEST's ``depth`` (adaptive speculation: a tree 1..``most`` deep; None: the full tree)."""
    d = header.get("depth")
    if d is None:
        return None
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= most:
        raise P.ProtocolError(f"depth must be an integer in 1..{most}, got {d!r}")
    return d


def _deadline_in(header: dict) -> float:
    """Seconds from now until the target's next token is due (``deadline_in_s``; inf: none)."""
    d = header.get("deadline_in_s")
    if d is None:
        return math.inf
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not -1e6 < d < 1e6:
        raise P.ProtocolError(f"deadline_in_s must be a number of seconds, got {d!r}")
    return float(d)


class DraftServer:
    """Serve draft trees to many targets over TCP (see the module docstring)."""

    def __init__(
        self,
        drafter: Drafter,
        bind: str = "127.0.0.1:0",
        policy: str = "fifo",
        token: str | None = None,
        max_bytes: int = P.MAX_MESSAGE_BYTES,
        vocab_size: int | None = None,
        timeout_s: float = 60.0,
        batch_max: int = 1,
        batch_window_s: float = 0.0,
        memory_bytes: int | None = None,
        pipeline: bool = False,
        max_targets: int = MAX_TARGETS,
        max_pending: int = MAX_PENDING,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        cpus: frozenset[int] | None = None,
        unit=FREE,
    ):
        """Sixteen parameters: the drafter and the address, then one per server option (the
        scenario's draft policy, batching, memory and pipelining; security and limits; the
        declared cores and the unit's turns), each with the default a plain star uses."""
        if batch_max < 1 or not batch_window_s >= 0 or (memory_bytes is not None and memory_bytes < 1):
            raise ValueError(f"batch_max must be >= 1, batch_window_s >= 0 and memory_bytes >= 1 or None, got "
                             f"{batch_max}, {batch_window_s}, {memory_bytes}")
        if max_targets < 1 or max_pending < 1 or not 0 < handshake_timeout_s < math.inf:
            raise ValueError(f"max_targets and max_pending must be >= 1 and handshake_timeout_s a positive number, "
                             f"got {max_targets}, {max_pending}, {handshake_timeout_s}")
        self.drafter, self.token, self.max_bytes, self.timeout_s = drafter, token, max_bytes, timeout_s
        self.max_targets, self.max_pending, self.handshake_timeout_s = max_targets, max_pending, handshake_timeout_s
        # declared resources (starsim.real.resources): every thread of this server runs on
        # ``cpus``; ``unit`` is held around each draft (other roles on the draft's unit wait)
        self.cpus, self.unit = cpus, unit
        self.affinity: list[int] = []  # the engine's cores, as it runs
        # batched drafting (the simulator's draft.batch): up to batch_max waiting tasks in one
        # Drafter.draft_batch; with fewer waiting, wait up to batch_window_s for more first
        self.batch_max, self.batch_window_s = batch_max, batch_window_s
        # draft memory (the simulator's draft.memory_bytes): the tags' draft caches, least
        # recently used first; over the capacity, the oldest are dropped (a dropped tag's next
        # request encodes its whole context again)
        self.memory_bytes = memory_bytes
        self.evictions: list[Eviction] = []
        self._dropped: list[int] = []  # tags evicted for the batch being drafted
        # pipelined drafting (the simulator's draft.pipeline): after a greedy tree, the engine
        # drafts the next one for the context plus that tree's main path; a target whose next
        # request is that path and a bonus token among the new tree's root children gets the
        # subtree under it at once (a hit); otherwise the pipelined tree is dropped (a miss)
        self.pipeline = pipeline
        self._pre: dict[int, _Task] = {}  # tag -> its pipelined task
        self.pipeline_stats = PipelineStats()
        cfg = drafter.model.config
        self.vocab_size = vocab_size or cfg.vocab_size
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        # K and V of every layer, in the model's dtype: what one cached token costs the draft
        self.kv_bytes_per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * drafter.model.dtype.itemsize
        # which tags' caches to keep under memory_bytes: the simulator's bookkeeping (the
        # drafter holds the tensors and computes its own new tokens)
        self.caches = DraftCaches(bytes_per_token=self.kv_bytes_per_token, capacity_bytes=memory_bytes,
                                  on_evict=self._evict)
        host, port = parse_address(bind)
        # a deep accept queue (the kernel caps it at net.core.somaxconn): with Python's default
        # of 128, a burst of connects overflows it while the door waits for the GIL, and each
        # dropped SYN costs its client a retransmit of a second or more
        self.sock = socket.create_server((host, port), backlog=4096)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.weights: dict[int, float] = {}  # tag -> weight, from each target's HELLO (wfq)
        self.queue = make_policy(policy, self.weights)
        self.cv = threading.Condition()
        self.stop = threading.Event()
        self.intervals: list[Busy] = []  # the engine's busy time
        self.rejected: deque[str] = deque(maxlen=MAX_REJECTED_LINES)  # a line per connection closed for a bad message
        # connections closed unheard: over max_pending or max_targets (refused), or no HELLO
        # within handshake_timeout_s (timed_out)
        self.refused = self.timed_out = 0
        self.contexts: dict[int, list[int]] = {}
        self.hiddens: dict[int, list[np.ndarray]] = {}  # EAGLE drafts: the features behind each tag's context
        self._next_tag = 0
        self._threads: list[threading.Thread] = []  # the door's and the engine's
        self._comm: set[threading.Thread] = set()  # one per connected target, gone when it ends
        self._pending: dict[socket.socket, _Pending] = {}  # the door thread's: handshakes under way
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

    @property
    def pending(self) -> int:
        """Connections whose handshake is under way now (no thread each)."""
        return len(self._pending)

    def __enter__(self) -> DraftServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _now(self) -> float:
        """The server's clock, for every timestamp it sends (replies, clock probes) or records
        (``intervals``): one place, so that a test can shift it."""
        return time.monotonic()

    # ------------------------------------------------------------------ threads

    def _door_loop(self) -> None:
        """Accept connections and read their HELLOs without a thread each (see the module
        docstring): a connection gets its comm thread once its handshake is done."""
        pin(self.cpus)
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        pending = self._pending  # this thread's alone: the connections whose HELLO it reads
        try:
            while not self.stop.is_set():
                for key, _ in sel.select(0.2):
                    if key.data is None:
                        if not self._accept(sel):
                            return
                        continue
                    try:
                        self._read_hello(sel, key.data)
                    except Exception as e:  # noqa: BLE001 - a bug met by one handshake must not close the door
                        log.exception("handshake of %s", key.data.peer)
                        if key.data.conn in pending:
                            self._forget(sel, key.data)
                        self._reject(key.data.conn, key.data.peer, None, f"internal error: {type(e).__name__}: {e}")
                now = time.monotonic()
                for p in [p for p in pending.values() if p.deadline <= now]:
                    self._forget(sel, p)
                    self.timed_out += 1
                    self._tell(p.conn, f"no HELLO within {self.handshake_timeout_s:g} s")
                    p.conn.close()
                    if self.timed_out == 1 or self.timed_out % 100 == 0:
                        log.warning("closed %d connections that sent no HELLO within %g s",
                                    self.timed_out, self.handshake_timeout_s)
        finally:
            for p in pending.values():
                p.conn.close()
            sel.close()

    def _accept(self, sel) -> bool:
        """Take every connection waiting on the listening socket; False: the socket is closed."""
        while True:
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection now (%s); %d waiting for a handshake", e,
                                len(self._pending))
                    time.sleep(0.05)  # the connection waits in the backlog until a descriptor frees
                    return True
                return not self.sock.fileno() < 0 and not self.stop.is_set()
            if len(self._pending) >= self.max_pending:
                self._refuse(conn, f"draft server busy: {self.max_pending} connections waiting for a handshake")
                continue
            conn.setblocking(False)
            p = _Pending(conn, peer, time.monotonic() + self.handshake_timeout_s)
            self._pending[conn] = p
            sel.register(conn, selectors.EVENT_READ, p)

    def _forget(self, sel, p: _Pending) -> None:
        sel.unregister(p.conn)
        del self._pending[p.conn]

    def _read_hello(self, sel, p: _Pending) -> None:
        """Read what a pending connection sent (never past its HELLO frame: what follows is its
        comm thread's); on a whole HELLO, admit it."""
        try:
            data = p.conn.recv(p.need - len(p.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._forget(sel, p)
            self._reject(p.conn, p.peer, None, e)
            return
        if not data:  # closed before a whole HELLO: nothing said, nothing to log
            self._forget(sel, p)
            p.conn.close()
            return
        p.buf += data
        try:
            if p.need == P.PREFIX_SIZE and len(p.buf) == P.PREFIX_SIZE:
                hlen, blen = P.parse_prefix(p.buf, MAX_HELLO_BYTES)
                p.need += hlen + blen
            if len(p.buf) < p.need:
                return
            self._forget(sel, p)
            hello = P.decode(p.buf, MAX_HELLO_BYTES)
        except P.ProtocolError as e:
            if p.conn in self._pending:
                self._forget(sel, p)
            self._reject(p.conn, p.peer, None, e)
            return
        self._admit(p.conn, p.peer, hello)

    def _admit(self, conn: socket.socket, peer, hello) -> None:
        """A whole HELLO: check it (token, weight), then a new tag and the target's comm thread
        (which sends the WELCOME), or ERROR "draft server full" beyond max_targets."""
        try:
            conn.settimeout(self.handshake_timeout_s)
            if hello.type != P.HELLO:
                raise P.ProtocolError(f"expected HELLO first, got {hello.type}")
            if self.token is not None and hello.header.get("token") != self.token:
                P.send_message(conn, P.error("bad token"))
                raise P.ProtocolError("bad token")
            weight = _weight(hello.header.get("target"))
        except (P.ProtocolError, OSError) as e:
            self._reject(conn, peer, None, e)
            return
        with self.cv:
            full = len(self._comm) >= self.max_targets
            if not full:
                tag, self._next_tag = self._next_tag, self._next_tag + 1
                self.weights[tag] = weight
                t = threading.Thread(target=self._serve, args=(conn, peer, tag), daemon=True,
                                     name=f"draft-comm-{tag}")
                self._comm.add(t)
                self._conns.add(conn)
        if full:
            self._refuse(conn, f"draft server full: {self.max_targets} targets connected")
            return
        t.start()

    def _tell(self, conn: socket.socket, reason: str) -> None:
        """An ERROR to a connection being closed unheard, if its send buffer takes it at once."""
        try:
            conn.setblocking(False)
            conn.send(P.error(reason).encode())
        except OSError:
            pass

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        """Close a connection over a limit, telling it why."""
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:
            log.warning("%s: refused %d connections so far", reason, self.refused)
        self._tell(conn, reason)
        conn.close()

    def _reject(self, conn: socket.socket, peer, tag: int | None, e: Exception | str) -> None:
        """Close a connection for a bad message (or a broken socket), with a line in ``rejected``."""
        line = f"{peer} tag {tag}: {e}; connection closed"
        self.rejected.append(line)
        log.warning(line)
        conn.close()

    def _engine_loop(self) -> None:
        # The only thread that touches the draft model: tasks and frees come through the queue.
        self.affinity = pin(self.cpus)
        while True:
            with self.cv:
                while not self.queue and not self.stop.is_set():
                    self.cv.wait(0.2)
                if self.stop.is_set():
                    return
                if self.batch_window_s > 0 and len(self.queue) < self.batch_max:
                    until = time.monotonic() + self.batch_window_s  # fewer waiting than a batch: wait for more
                    while len(self.queue) < self.batch_max and not self.stop.is_set():
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self.cv.wait(left)
                    if self.stop.is_set():
                        return
                tasks = take_batch(self.queue, self.batch_max)  # as the simulator forms a batch
                for t in tasks:
                    t.taken = True
            batch = []
            for task in tasks:
                if task.context is None:  # a free request: the tag's session ended
                    self.drafter.free(task.target)
                    self.caches.free(task.target)
                    task.done.set()
                else:
                    batch.append(task)
            for task in batch:  # room first, as the simulator evicts at a round's start
                self.caches.take(task.target, len(task.context))
            if len(batch) == 1:
                self._draft_one(batch[0])
            elif batch:
                self._draft_batch(batch)
            # stamped with the start of the round they made room for (as the simulator's)
            self.evictions += [Eviction(tag=tag, at=batch[0].start) for tag in self._dropped]
            self._dropped = []
            if self.pipeline:
                for task in batch:
                    self._after(task)

    def _pipelinable(self, task: _Task) -> bool:
        return (task.tree is not None and task.tree.tokens and task.error is None and task.temperature == 0
                and not self.drafter.needs_hidden)

    def _follow(self, task: _Task) -> None:
        """Queue ``task``'s target's next tree, for its context plus ``task``'s main path (lock held)."""
        path = main_path(task.tree)
        nxt = _Task(task.target, task.context + path, pre=True, path=path, depth=task.depth, deadline=task.deadline)
        nxt.t_enqueue = self._now()
        self._pre[task.target] = nxt
        self.queue.push(nxt)
        self.cv.notify()

    def _after(self, task: _Task) -> None:
        """Pipelining, after the engine drafted ``task`` (engine thread): a missed pipelined
        tree's time is wasted; a plain tree gets its successor queued."""
        with self.cv:
            if task.pre:
                if task.missed:
                    self.pipeline_stats.wasted_s += task.end - task.start
            elif self._pipelinable(task) and task.target in self.contexts:
                self._follow(task)

    def _take_pipelined(self, tag: int, ids: list[int]) -> tuple[TreeDraft, _Task] | None:
        """A DRAFT_REQUEST's tokens ``ids`` against the tag's pipelined tree: (the subtree the
        target gets, the pipelined task) on a hit, None on a miss or without one (comm thread)."""
        with self.cv:
            pre = self._pre.pop(tag, None)
        if pre is None:
            return None
        if len(ids) == len(pre.path) + 1 and ids[:-1] == pre.path:  # the whole path accepted
            give_up = time.monotonic() + self.timeout_s
            while not pre.done.wait(0.2) and not self.stop.is_set() and time.monotonic() < give_up:
                pass
            sub = subtree(pre.tree, ids[-1]) if pre.done.is_set() and pre.tree is not None else None
            if sub is not None and sub.tokens:
                with self.cv:
                    self.pipeline_stats.hits += 1
                    pre.context = pre.context + ids[-1:]
                    pre.tree = sub
                    if self._pipelinable(pre):
                        self._follow(pre)  # and the next one, from where this one goes
                return sub, pre
        with self.cv:
            self._drop(pre)
        return None

    def _drop(self, pre: _Task) -> None:
        """A pipelined tree missed (lock held): dropped if the engine has not taken it, else its
        draft time is wasted (now, or by :meth:`_after` when it ends)."""
        self.pipeline_stats.misses += 1
        pre.missed = True
        if not pre.taken:
            pre.cancelled = True  # dropped before it cost anything
        elif pre.done.is_set():
            self.pipeline_stats.wasted_s += pre.end - pre.start

    def _evict(self, tag: int) -> None:
        """``tag``'s draft cache is dropped for draft memory (engine thread)."""
        self.drafter.free(tag)
        self._dropped.append(tag)

    def _draft_one(self, task: _Task) -> None:
        with self.unit:
            task.start = self._now()
            try:
                task.tree, task.new_tokens = self.drafter.draft(task.target, task.context, task.temperature,
                                                                task.seed, task.hidden, task.depth, not task.pre)
            except Exception as e:  # noqa: BLE001 - a failed draft is reported to that target only
                task.error = f"draft failed: {type(e).__name__}: {e}"
            task.end = self._now()
        self.intervals.append(Busy(tag=task.target, start=task.start, end=task.end, new_tokens=task.new_tokens))
        task.done.set()

    def _draft_batch(self, tasks: list[_Task]) -> None:
        """Several tasks in one :meth:`Drafter.draft_batch`: each gets the batch's start and end,
        and the draft one busy interval (the first task's tag, the batch's new tokens), as in the
        simulator. If the batch fails, each task is drafted again alone, so that only a task
        that fails by itself reports an error (to its own target)."""
        with self.unit:
            start = self._now()
            self._batch(tasks)
            end = self._now()
        self.intervals.append(Busy(tag=tasks[0].target, start=start, end=end,
                                   new_tokens=sum(t.new_tokens for t in tasks)))
        for t in tasks:
            t.start, t.end = start, end
            t.done.set()

    def _batch(self, tasks: list[_Task]) -> None:
        """Draft ``tasks`` in one batch; if it fails, one by one (see :meth:`_draft_batch`)."""
        try:
            done = self.drafter.draft_batch([(t.target, t.context, t.temperature, t.seed, t.hidden, t.depth,
                                              not t.pre) for t in tasks])
        except Exception:  # noqa: BLE001 - retried one by one below
            log.warning("batched draft of %d tasks failed; drafting them one by one", len(tasks), exc_info=True)
            done = None
        if done is not None:
            for t, (tree, new) in zip(tasks, done):
                t.tree, t.new_tokens = tree, new
            return
        for t in tasks:
            try:
                t.tree, t.new_tokens = self.drafter.draft(t.target, t.context, t.temperature, t.seed, t.hidden,
                                                          t.depth, not t.pre)
            except Exception as e:  # noqa: BLE001 - a failed draft is reported to that target only
                t.error = f"draft failed: {type(e).__name__}: {e}"

    def _submit(self, task: _Task) -> _Task:
        with self.cv:
            self.queue.push(task)
            self.cv.notify()
        give_up = time.monotonic() + self.timeout_s
        while not task.done.wait(0.2):  # wake up to notice a server that is stopping
            if self.stop.is_set():
                task.error = "draft server stopping"
                break
            if time.monotonic() > give_up:
                task.error = f"no draft within {self.timeout_s} s"
                break
        return task

    def _hidden(self, msg, n: int, before: list | None) -> list | None:
        """The context's features after this request, in chunks (EAGLE drafts; a chunk per request,
        so a round copies only its own rows); None for a token-only draft."""
        if not self.drafter.needs_hidden:
            return None
        h = msg.arrays.get("hidden")
        width = self.drafter.model.config.hidden_size
        if h is None or msg.dtypes.get("hidden") != "float16" or h.shape != (n, width):
            raise P.ProtocolError(f"this draft needs hidden float16 [{n}, {width}] with each DRAFT_REQUEST")
        return [h] if before is None else [*before, h]

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
                msg = P.recv_message(conn, self.max_bytes)
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

    def _context(self, msg, tag: int) -> tuple[list[int], list[int], list | None]:
        """A DRAFT_REQUEST's tokens checked and added to the tag's context (a whole new one with
        ``start``); the tokens, the context and its features (EAGLE), now the tag's."""
        ids = msg.arrays.get("token_ids")
        if ids is None or ids.ndim != 1 or ids.size == 0 or msg.dtypes.get("token_ids") not in ("int32", "int64"):
            raise P.ProtocolError("DRAFT_REQUEST needs a non-empty 1-d int32 token_ids")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise P.ProtocolError(f"token ids outside the vocabulary (0..{self.vocab_size - 1})")
        new = ids.tolist()
        if msg.header.get("start"):
            context = new
            hidden = self._hidden(msg, ids.size, None)
        elif tag in self.contexts:
            context = self.contexts[tag] + new
            hidden = self._hidden(msg, ids.size, self.hiddens.get(tag))
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
        temperature, seed = _sampling(msg.header)
        t_enqueue = self._now()
        deadline, depth = t_arrive + _deadline_in(msg.header), _depth(msg.header, self.drafter.depth)
        hit = None
        if self.pipeline and not msg.header.get("start"):
            hit = self._take_pipelined(tag, ids)
        elif self.pipeline:
            with self.cv:  # a new request: a pipelined tree of the last one is of no use
                old = self._pre.pop(tag, None)
                if old is not None:
                    self._drop(old)
        if hit is not None:  # drafted while the target verified: the stamps are its
            tree, task = hit
            t_arrive = t_enqueue = task.t_enqueue
        else:
            task = self._submit(_Task(tag, context, temperature, seed, hidden, deadline=deadline, depth=depth))
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
        P.send_message(conn, reply, self.max_bytes)

    def _release(self, tag: int) -> None:
        """The tag's connection ended, however: its pipelined tree, context and weight go, and
        the engine thread frees its draft state."""
        with self.cv:
            old = self._pre.pop(tag, None)
            if old is not None:
                self._drop(old)
        self.weights.pop(tag, None)
        self.contexts.pop(tag, None)
        self.hiddens.pop(tag, None)
        if not self.stop.is_set():
            self._submit(_Task(tag, None))


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
            self.same_host = self.server_host_id == host_id()
            if self.same_host:
                # one clock: the offset is exactly 0; probes would only add their jitter to it
                self.clock_offset_s, self.clock_error_s = 0.0, 0.0
            elif "clock" in (w.header.get("features") or ()):
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
        if temperature > 0:
            req.header.update(temperature=float(temperature), seed=seed)
        if deadline_in_s is not None:
            req.header["deadline_in_s"] = float(deadline_in_s)
        if depth is not None:
            req.header["depth"] = int(depth)
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
        tokens = rep.arrays["token_ids"].tolist()
        parents = rep.arrays["parents"].tolist()
        if any(p >= i for i, p in enumerate(parents)):
            raise P.ProtocolError("tree nodes must come after their parents")
        depths = tree_depths(parents)
        probs, nodes = rep.arrays.get("draft_probs"), rep.arrays.get("prob_nodes")
        if temperature > 0 and tokens:
            if probs is None or nodes is None or probs.ndim != 2 or probs.shape[0] != nodes.shape[0]:
                raise P.ProtocolError("a sampled draft needs draft_probs [rows, vocab] and prob_nodes [rows]")
            if not set(parents) <= set(nodes.tolist()):
                raise P.ProtocolError("draft_probs has no row for a node that has children")
        self.bytes_down = rep.frame_bytes  # the reply's frame size
        if self.delay_down is not None:
            time.sleep(self.delay_down(self.bytes_down))
        return TreeDraft(tokens, parents, depths, probs, None if nodes is None else nodes.tolist()), rep.header

    def close(self) -> None:
        try:
            P.send_message(self.sock, P.bye(self.tag, "done"))
        except OSError:
            pass
        self.sock.close()
