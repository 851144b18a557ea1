"""The draft server's door: admission, in one thread, whatever arrives.

A new connection holds no thread until its HELLO is in. The door thread accepts connections
and reads the HELLOs of up to ``max_pending`` of them at once (non-blocking, at most
MAX_HELLO_BYTES each), and closes any that has not sent its whole HELLO
``handshake_timeout_s`` after it connected; connections beyond ``max_pending`` are closed at
once. A HELLO with the right token and a valid weight opens the target's session (a tag and
a thread), up to ``max_targets`` of them; beyond that it is answered by ERROR "draft server
full". So the door buffers at most ``max_pending x MAX_HELLO_BYTES`` for handshakes.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from dataclasses import dataclass, field

from ..net import parse_address
from . import protocol as P
from .request_checks import weight
from .resources import pin

log = logging.getLogger("starsim.draft_server")
# a HELLO frame is small (a token and a target's info): a connection that has not completed
# its handshake holds only this much buffer
MAX_HELLO_BYTES = 16 * 1024


@dataclass(eq=False)
class Pending:
    """A connection whose HELLO is not all in yet (the door thread reads it)."""

    conn: socket.socket
    peer: object
    deadline: float  # monotonic: closed unheard after this
    buf: bytearray = field(default_factory=bytearray)
    need: int = P.PREFIX_SIZE  # bytes of the frame known so far to be due: the prefix, then all of it


class Door:
    """Admission for :class:`~starsim.real.server.DraftServer` (a mixin: the server is one
    object, its door, engine and connections threads of it).

    Owns the listening socket (``sock``, ``address``), the handshakes under way and the counts
    of connections closed unheard: ``refused`` (over ``max_pending`` or ``max_targets``) and
    ``timed_out`` (no HELLO within ``handshake_timeout_s``). Reads from the server ``limits``,
    ``token``, ``cpus`` and ``stop``; hands a whole, checked HELLO to its ``_open_session``,
    and a bad one to its ``_reject``.
    """

    def _open_door(self, bind: str) -> None:
        host, port = parse_address(bind)
        # a deep accept queue (the kernel caps it at net.core.somaxconn): with Python's default
        # of 128, a burst of connects overflows it while the door waits for the GIL, and each
        # dropped SYN costs its client a retransmit of a second or more
        self.sock = socket.create_server((host, port), backlog=4096)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.refused = self.timed_out = 0
        self._pending: dict[socket.socket, Pending] = {}  # the door thread's: handshakes under way

    @property
    def pending(self) -> int:
        """Connections whose handshake is under way now (no thread each)."""
        return len(self._pending)

    def _door_loop(self) -> None:
        """Accept connections and read their HELLOs without a thread each (see the module
        docstring): a connection gets its comm thread once its handshake is done."""
        pin(self.cpus)
        sel = selectors.DefaultSelector()
        try:
            self.sock.setblocking(False)
            sel.register(self.sock, selectors.EVENT_READ, None)
        except (OSError, ValueError):  # closed before this thread began: nothing to serve
            sel.close()
            return
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
                self._close_late(sel)
        finally:
            for p in pending.values():
                p.conn.close()
            sel.close()

    def _close_late(self, sel) -> None:
        """Close the connections that sent no whole HELLO within ``handshake_timeout_s``."""
        now, wait = time.monotonic(), self.limits.handshake_timeout_s
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self._forget(sel, p)
            self.timed_out += 1
            self._tell(p.conn, f"no HELLO within {wait:g} s")
            p.conn.close()
            if self.timed_out == 1 or self.timed_out % 100 == 0:
                log.warning("closed %d connections that sent no HELLO within %g s", self.timed_out, wait)

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
            most = self.limits.max_pending
            if len(self._pending) >= most:
                self._refuse(conn, f"draft server busy: {most} connections waiting for a handshake")
                continue
            conn.setblocking(False)
            p = Pending(conn, peer, time.monotonic() + self.limits.handshake_timeout_s)
            self._pending[conn] = p
            sel.register(conn, selectors.EVENT_READ, p)

    def _forget(self, sel, p: Pending) -> None:
        sel.unregister(p.conn)
        del self._pending[p.conn]

    def _read_hello(self, sel, p: Pending) -> None:
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
        """A whole HELLO: check it (token, weight), then open the target's session (a new tag
        and its comm thread, which sends the WELCOME), or ERROR "draft server full" beyond
        max_targets."""
        try:
            conn.settimeout(self.limits.handshake_timeout_s)
            if hello.type != P.HELLO:
                raise P.ProtocolError(f"expected HELLO first, got {hello.type}")
            if self.token is not None and hello.header.get("token") != self.token:
                P.send_message(conn, P.error("bad token"))
                raise P.ProtocolError("bad token")
            w = weight(hello.header.get("target"))
        except (P.ProtocolError, OSError) as e:
            self._reject(conn, peer, None, e)
            return
        if not self._open_session(conn, peer, w):
            self._refuse(conn, f"draft server full: {self.limits.max_targets} targets connected")

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
