"""The draft server under floods and churn (issue 16): idle and half-open connections hold no
thread, silent handshakes time out, connections over the limits are refused with a reason,
and real targets keep being served, losslessly, through all of it."""

from __future__ import annotations

import resource
import socket
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS, wait_for  # noqa: E402

from starsim.net import parse_address  # noqa: E402
from starsim.real import protocol as P  # noqa: E402
from starsim.real.client import DraftClient  # noqa: E402
from starsim.real.server import DraftServer, ServerLimits  # noqa: E402
from starsim.real.speculation import Drafter, speculative_generate, target_generate  # noqa: E402

IDLE = 1000


def _remote(client: DraftClient):
    return lambda new, start, seed=None, hidden=None: client.draft(new, start)[0]


def _lossless(target, tok, client: DraftClient, i: int = 0, n: int = 24) -> None:
    ids = tok.encode(CODE_PROMPTS[i % len(CODE_PROMPTS)]).ids
    out, rounds = speculative_generate(target, _remote(client), ids, n)
    assert rounds and out == target_generate(target, ids, n)


def _fds(n: int) -> None:
    """Room for ``n`` more descriptors in this process (both ends of each connection are here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"needs {n} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _connect(server: DraftServer) -> socket.socket:
    return socket.create_connection(parse_address(server.address), timeout=10)


def test_a_thousand_idle_connections_hold_no_thread_and_a_real_target_is_served(quick_models):
    """1,000 connections that never speak (and some that stop inside their HELLO) cost no
    thread: the server runs its door and engine threads plus one per real target. A real
    target connecting in the middle of the flood completes its rounds losslessly; the silent
    ones are closed after the handshake timeout."""
    tok, target, draft = quick_models
    _fds(4 * IDLE)
    base = threading.active_count()
    with DraftServer(Drafter(draft, 4, 4, 16), limits=ServerLimits(handshake_timeout_s=3.0, timeout_s=30)) as server:
        assert threading.active_count() == base + 2  # the door and the engine
        rss0 = _rss_mb()
        idle = [_connect(server) for _ in range(IDLE - 50)]
        for _ in range(50):  # half-open: a prefix cut short, or a header that never ends
            s = _connect(server)
            s.sendall(P.hello().encode()[:7] if len(idle) % 2 else P.PREFIX.pack(P.MAGIC, P.VERSION, 100, 0))
            idle.append(s)
        wait_for(lambda: server.pending == IDLE, timeout=20)
        assert threading.active_count() == base + 2
        # both ends of 1,000 connections and their handshake buffers (16 KiB each at most)
        assert _rss_mb() - rss0 < 64, (rss0, _rss_mb())
        client = DraftClient(server.address)  # a real target, in the middle of the flood
        assert server.connected == 1 and threading.active_count() == base + 3
        _lossless(target, tok, client)
        client.close()
        wait_for(lambda: server.connected == 0, timeout=20)
        assert threading.active_count() == base + 2
        wait_for(lambda: server.pending == 0, timeout=20)  # the silent ones timed out
        assert server.timed_out == IDLE and server.refused == 0
        assert not server.rejected  # timing out is not a bad message
        for s in idle[:20]:  # each was told why before it was closed
            s.settimeout(5)
            got = s.recv(4096)
            assert b"no HELLO within 3 s" in got
        for s in idle:
            s.close()
        DraftClient(server.address).close()  # and the door is still open


def test_over_max_pending_is_closed_at_once_and_the_door_reopens(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 2, 2, 4), limits=ServerLimits(max_pending=8, handshake_timeout_s=1.0)) as server:
        socks = [_connect(server) for _ in range(20)]
        wait_for(lambda: server.pending == 8 and server.refused == 12, timeout=20)
        with pytest.raises((P.ProtocolError, OSError)):  # no room for a handshake now
            DraftClient(server.address, timeout_s=5).close()
        told = 0
        for s in socks:
            s.settimeout(5)
            try:
                told += b"draft server busy: 8 connections waiting for a handshake" in s.recv(4096)
            except OSError:
                pass
        assert told >= 12
        wait_for(lambda: server.pending == 0, timeout=20)
        DraftClient(server.address).close()  # room again once the silent ones timed out
        for s in socks:
            s.close()


def test_over_max_targets_is_refused_with_a_reason(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 2, 2, 4), limits=ServerLimits(max_targets=2)) as server:
        a, b = DraftClient(server.address), DraftClient(server.address)
        with pytest.raises(P.ProtocolError, match="draft server full: 2 targets connected"):
            DraftClient(server.address)
        assert server.refused == 1 and server.connected == 2
        a.close()
        wait_for(lambda: server.connected == 1, timeout=20)
        c = DraftClient(server.address)
        assert c.tag == 2  # the refused one took no tag
        b.close()
        c.close()


def test_a_trickled_hello_does_not_extend_the_handshake_timeout(quick_models):
    """A peer sending its HELLO a byte at a time is closed at the deadline counted from connecting."""
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 2, 2, 4), limits=ServerLimits(handshake_timeout_s=1.0)) as server:
        s = _connect(server)
        frame = P.hello().encode()
        t0, closed = time.monotonic(), False
        for byte in frame[:-1]:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if server.timed_out:
                closed = True
                break
        assert closed and server.timed_out == 1
        assert time.monotonic() - t0 < 3.0
        s.close()


def test_churn_bursts_kills_and_slow_readers(quick_models):
    """Bursts of targets connecting and leaving at once, targets killed mid-round (before
    reading their reply), slow readers and real targets, together: every real target's output
    is lossless, and at the end no tag, context, thread or connection is left behind."""
    tok, target, draft = quick_models
    base = threading.active_count()
    with DraftServer(Drafter(draft, 4, 4, 16), limits=ServerLimits(timeout_s=30)) as server:
        ids = tok.encode(CODE_PROMPTS[1]).ids
        errors: list[BaseException] = []

        def real(i):
            client = DraftClient(server.address)
            _lossless(target, tok, client, i)
            client.close()

        def hello_bye(_):
            DraftClient(server.address).close()

        def killed(_):  # asks for a tree, then vanishes without reading it
            client = DraftClient(server.address)
            P.send_message(client.sock, _start(client, ids))
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.sock.close()  # a reset, as a killed process's socket

        def slow(_):  # reads its replies late
            client = DraftClient(server.address)
            P.send_message(client.sock, _start(client, ids))
            time.sleep(0.5)
            rep = P.recv_message(client.sock)
            assert rep is not None and rep.type == P.DRAFT_REPLY
            client.close()

        def run(fn, i):
            try:
                fn(i)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        for wave in range(3):
            kinds = [real, hello_bye, hello_bye, killed, killed, slow, hello_bye, real]
            threads = [threading.Thread(target=run, args=(fn, wave + i)) for i, fn in enumerate(kinds)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        assert not errors, errors
        wait_for(lambda: server.connected == 0 and not server.drafter.tags and not server.contexts, timeout=20)
        assert not server.weights
        assert threading.active_count() == base + 2
        client = DraftClient(server.address)  # and it serves as before
        _lossless(target, tok, client, 2)
        client.close()


def _start(client: DraftClient, ids: list[int]) -> P.Message:
    req = P.draft_request(client.tag, 1, ids)
    req.header["start"] = True
    return req
