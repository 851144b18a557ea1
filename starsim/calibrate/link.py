"""``starsim calibrate link``: measure a real TCP path with the real backend's wire protocol.

Three measurements, all over one TCP connection with ``TCP_NODELAY`` (the peer is a remote
``starsim calibrate link --serve``, or a peer on loopback started for the measurement):

1. **RTT of small messages**: an empty ECHO and its echo, many times (median, p10, p90).
2. **Time by message size**: a PING with a payload of S bytes answered by a small ACK, for
   S log-spaced from 64 B to 16 MiB. (1) and (2) run after a warm-up, interleaved in one
   order shuffled by the seed, so that drift affects both alike. A robust fit of the
   per-size medians to ``t(S) = rtt + bytes * 8 / bandwidth_bps`` gives the bandwidth.
3. **Serialization**: encode (constructor + frame) and decode times of the protocol's real
   messages: DRAFT_REQUEST for each number of new tokens, with and without float16 hidden
   states, and DRAFT_REPLY for each tree size.

Every time includes the Python socket and framing work at both ends: that is what the
real backend pays too (so the small-message latency already holds the encode/decode of a
tiny frame, a few microseconds; a scenario that adds ``parse_time`` on top counts that part
twice, which only matters on loopback). Timing values are medians over repeats; spreads
are p10/p90. The result says where it came from (host, peer, versions, date, parameters).

How the numbers map onto a scenario (:func:`suggest_link_yaml`):

- ``latency_s`` = p10 of the small-message RTT / 2 (one way, the quiet path);
- ``jitter`` = lognormal with the mean and cv of ``max(rtt - p10, 0) / 2`` (the one-way
  excess) over the RTTs up to their p99 (``rtt.max_s`` keeps the worst), so
  ``latency_s + jitter.mean`` is about half the mean RTT;
- ``bandwidth_bps`` = the fitted slope (``null``, i.e. unlimited, if the fit finds none);
- ``draft.parse_time`` / ``draft.serialize_time`` = median decode time of a typical
  DRAFT_REQUEST / median encode time of a typical DRAFT_REPLY, as constants.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StarsimError
from ..net import format_address, parse_address
from ..real import protocol
from ..real.protocol import MAX_MESSAGE_BYTES, Message, ProtocolError

DEFAULT_SIZES: tuple[int, ...] = tuple(2**k for k in range(6, 25))  # 64 B .. 16 MiB
DEFAULT_TREE_TOKENS: tuple[int, ...] = (16, 32, 64)
DEFAULT_NEW_TOKENS: tuple[int, ...] = (1, 4, 16, 64)
SCHEMA = 1
_MIB = float(1 << 20)


# ---------------------------------------------------------------------------------------------
# the peer


def _drain_and_close(conn: socket.socket, limit: int = 1 << 20) -> None:
    """Half-close, then read what the client still sends (up to ``limit`` bytes, 1 s): closing
    with unread data would reset the connection and could lose the ERROR just sent."""
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(1.0)
    seen = 0
    while seen < limit:
        chunk = conn.recv(65536)
        if not chunk:
            break
        seen += len(chunk)


class LinkServer:
    """A TCP peer for link calibration: answers PING with ACK and ECHO with the same message.

    One thread accepts (polling a stop flag every 0.2 s) and one thread serves each
    connection until the client says BYE or closes. Use :meth:`start` / :meth:`close` (or a
    ``with`` block) to run it in the background, or :meth:`serve_forever` in the foreground.
    The bound address (with the real port when binding port 0) is :attr:`address`.
    """

    def __init__(self, bind: str = "127.0.0.1:0", max_bytes: int = MAX_MESSAGE_BYTES):
        host, port = parse_address(bind)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._sock = socket.create_server((host, port), family=family, backlog=16)
        except OSError as e:
            raise StarsimError(f"cannot listen on {bind}: {e}") from None
        self._sock.settimeout(0.2)
        bound = self._sock.getsockname()
        self.address = format_address(bound[0], bound[1])
        self.max_bytes = max_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: list[tuple[threading.Thread, socket.socket]] = []

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Accept and serve connections until :meth:`close` is called or ``stop`` is set;
        then close every connection and wait for their threads."""
        try:
            while not (self._stop.is_set() or (stop is not None and stop.is_set())):
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True, name="starsim-link")
                t.start()
                self._conns = [(th, c) for th, c in self._conns if th.is_alive()] + [(t, conn)]
        finally:
            self._sock.close()
            for _, conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its thread
            for t, _ in self._conns:
                t.join(timeout=5.0)
            self._conns = []

    def _serve_connection(self, conn: socket.socket) -> None:
        body = bytearray(0)  # reused for PING payloads, so the peer does not time allocation
        with conn:
            try:
                while True:
                    msg = protocol.recv_message(conn, self.max_bytes, body_buffer=body)
                    if msg is None or msg.type == protocol.BYE:
                        return
                    if msg.type == protocol.PING:
                        received = sum(a.nbytes for a in msg.arrays.values())
                        if received > len(body):  # grow before the ACK, so the cost lands on this PING
                            body = bytearray(received + 4096)
                        protocol.send_message(conn, protocol.ack(msg.seq, received))
                    elif msg.type == protocol.ECHO:
                        protocol.send_message(conn, msg, self.max_bytes)
                    else:
                        protocol.send_message(conn, protocol.error(f"a link peer does not answer {msg.type}"))
                        return
            except ProtocolError as e:
                try:
                    protocol.send_message(conn, protocol.error(str(e)))
                    _drain_and_close(conn)
                except OSError:
                    pass
            except OSError:
                pass  # the client went away (or close() shut the socket down)

    def start(self) -> LinkServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="starsim-link-accept")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, close all connections and join every thread this server started."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._sock.close()

    def __enter__(self) -> LinkServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(
    bind: str = "127.0.0.1:0",
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> str:
    """Run a link peer in the foreground until ``stop`` is set or Ctrl-C; returns its address.

    ``ready(address)`` is called once the socket is bound (the CLI prints the address there,
    which matters with port 0). The peer only answers calibration messages; bind to a
    non-loopback address only on a network you trust.
    """
    server = LinkServer(bind, max_bytes)
    if ready is not None:
        ready(server.address)
    try:
        server.serve_forever(stop)
    except KeyboardInterrupt:
        pass
    return server.address


_PEER_CODE = (
    "import sys\n"
    "from starsim.calibrate.link import serve\n"
    "serve('127.0.0.1:0', ready=lambda a: print('starsim-link-peer', a, flush=True), max_bytes=int(sys.argv[1]))\n"
)


@contextlib.contextmanager
def _peer_process(max_bytes: int, timeout_s: float) -> Iterator[str]:
    """A link peer in a child Python process on loopback; yields its address, then stops it."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this very starsim
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen([sys.executable, "-c", _PEER_CODE, str(max_bytes)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True)
    watchdog = threading.Timer(timeout_s, proc.kill)  # a child that never prints is killed
    watchdog.daemon = True
    watchdog.start()
    try:
        line = proc.stdout.readline().split()
        watchdog.cancel()
        watchdog.join()
        if len(line) != 2 or line[0] != "starsim-link-peer":
            proc.kill()
            err = proc.communicate(timeout=timeout_s)[1].strip().splitlines()
            raise StarsimError(f"the loopback link peer did not start: {err[-1] if err else 'no output'}")
        yield line[1]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# ---------------------------------------------------------------------------------------------
# measuring


def _stats(ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    s = np.asarray(ns, dtype=float) * 1e-9
    return {
        "median_s": float(np.median(s)),
        "p10_s": float(np.percentile(s, 10)),
        "p90_s": float(np.percentile(s, 90)),
        "mean_s": float(s.mean()),
        "min_s": float(s.min()),
        "max_s": float(s.max()),
    }


def _expect(msg: Message | None, msg_type: str, peer: str) -> Message:
    if msg is None:
        raise StarsimError(f"link peer {peer} closed the connection")
    if msg.type == protocol.ERROR:
        raise StarsimError(f"link peer {peer} refused: {msg.header.get('reason')}")
    if msg.type != msg_type:
        raise StarsimError(f"link peer {peer} answered {msg.type}, expected {msg_type}")
    return msg


def _round_trip(sock: socket.socket, buffers: list, reply_type: str, peer: str, max_bytes: int) -> tuple[int, Message]:
    t0 = time.perf_counter_ns()
    protocol.send_buffers(sock, buffers)
    reply = protocol.recv_message(sock, max_bytes)
    t1 = time.perf_counter_ns()
    return t1 - t0, _expect(reply, reply_type, peer)


def _fit(nbytes: np.ndarray, seconds: np.ndarray) -> dict[str, Any]:
    """Robust fit of t = a + b * bytes on relative residuals (soft-L1), a, b >= 0."""
    from scipy.optimize import least_squares

    x = nbytes / _MIB
    a_rows = np.column_stack([np.ones_like(x), x]) / seconds[:, None]
    p0 = np.linalg.lstsq(a_rows, np.ones_like(seconds), rcond=None)[0]
    p0 = np.maximum(p0, [seconds.min() * 1e-3, 1e-12])
    res = least_squares(
        lambda p: (p[0] + p[1] * x) / seconds - 1.0, p0, bounds=([0.0, 0.0], [np.inf, np.inf]),
        loss="soft_l1", f_scale=0.05, x_scale="jac",
    )
    a, b = (float(v) for v in res.x)
    pred = a + b * x
    bandwidth = 8.0 * _MIB / b if b > 1e-15 else None
    return {
        "model": "t = rtt_s + bytes * 8 / bandwidth_bps (robust soft-L1 fit of per-size medians, relative residuals)",
        "rtt_s": a,
        "bandwidth_bps": bandwidth,
        "mape": float(np.mean(np.abs(pred - seconds) / seconds)),
        "points": int(len(x)),
    }


def _time_calls(fn: Callable[[], Any], repeats: int) -> np.ndarray:
    out = np.empty(repeats, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(repeats):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out


def _serialization_row(
    name: str, make: Callable[[], Message], repeats: int, extra: dict[str, Any]
) -> dict[str, Any]:
    msg = make()
    frame = msg.encode()
    array_bytes = sum(a.nbytes for a in msg.arrays.values())
    for _ in range(max(3, repeats // 10)):  # warm-up
        protocol.decode(make().encode())
    enc = _time_calls(lambda: make().encode(), repeats)
    dec = _time_calls(lambda: protocol.decode(frame), repeats)
    row: dict[str, Any] = {"message": name, **extra, "bytes": len(frame), "array_bytes": array_bytes,
                           "overhead_bytes": len(frame) - array_bytes, "repeats": repeats}
    for label, ns in (("encode", enc), ("decode", dec)):
        st = _stats(ns)
        for key in ("median_s", "p10_s", "p90_s"):
            row[f"{label}_{key}"] = st[key]
    return row


def measure_serialization(
    hidden_size: int = 4096,
    tree_tokens: Sequence[int] = DEFAULT_TREE_TOKENS,
    new_tokens: Sequence[int] = DEFAULT_NEW_TOKENS,
    repeats: int = 200,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Encode and decode times of DRAFT_REQUEST (per new-token count, with hidden states
    float16 [n, hidden_size] when hidden_size > 0, and without) and DRAFT_REPLY (per tree
    size). ``encode`` = the constructor (:func:`protocol.draft_request` / ``draft_reply``)
    plus the frame as bytes; ``decode`` = :func:`protocol.decode` of that frame."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in new_tokens:
        ids = rng.integers(0, 32000, size=n, dtype=np.int32)
        variants = [False] + ([True] if hidden_size > 0 else [])
        for with_hidden in variants:
            h = rng.standard_normal((n, hidden_size)).astype(np.float16) if with_hidden else None
            rows.append(_serialization_row(
                protocol.DRAFT_REQUEST, lambda ids=ids, h=h: protocol.draft_request(1, 1, ids, h), repeats,
                {"new_tokens": int(n), "hidden_size": int(hidden_size) if with_hidden else 0, "tree_tokens": None},
            ))
    for t in tree_tokens:
        ids = rng.integers(0, 32000, size=t, dtype=np.int32)
        parents = np.array([rng.integers(-1, i) if i else -1 for i in range(t)], dtype=np.int32)
        rows.append(_serialization_row(
            protocol.DRAFT_REPLY, lambda ids=ids, p=parents: protocol.draft_reply(1, 1, ids, p), repeats,
            {"new_tokens": None, "hidden_size": 0, "tree_tokens": int(t)},
        ))
    return rows


def _provenance(peer: str, kind: str) -> dict[str, Any]:
    import msgpack

    from ..version import __version__

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "msgpack": ".".join(str(v) for v in msgpack.version),
        "starsim": __version__,
        "protocol_version": protocol.VERSION,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "peer": peer,
        "peer_kind": kind,
    }


def measure(
    peer: str | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 20,
    seed: int = 0,
    hidden_size: int = 4096,
    tree_tokens: Sequence[int] = DEFAULT_TREE_TOKENS,
    new_tokens: Sequence[int] = DEFAULT_NEW_TOKENS,
    *,
    rtt_repeats: int = 500,
    serialization_repeats: int = 200,
    loopback: str = "process",
    timeout_s: float = 30.0,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> dict[str, Any]:
    """Measure a TCP path and the protocol's serialization cost; returns a plain dict.

    ``peer`` is ``"host:port"`` of a running ``starsim calibrate link --serve``; ``None`` starts
    a peer on loopback and stops it before returning: in a separate Python process when
    ``loopback="process"`` (like a real draft server; costs an interpreter start), or a
    :class:`LinkServer` thread in this process when ``loopback="thread"`` (faster to start,
    but both ends then share one GIL, which adds to every round trip).
    ``sizes`` are PING payload sizes in bytes, each timed ``repeats`` times in an order
    shuffled by ``seed``; ``rtt_repeats`` small ECHOs give the RTT. The dict holds
    ``provenance``, ``parameters``, ``rtt``, ``transfer`` (``rows`` per size and ``fit``),
    ``link`` (the scenario values), ``serialization`` (``rows``) and ``typical`` (the rows
    behind parse/serialize time). Raises :class:`StarsimError` when the peer cannot be
    reached or does not speak the protocol.
    """
    sizes = sorted({int(s) for s in sizes})
    if len(sizes) < 2 or sizes[0] < 0:
        raise StarsimError(f"link: need at least two distinct non-negative sizes (got {sizes})")
    if sizes[-1] + 4096 > max_bytes:
        raise StarsimError(f"link: size {sizes[-1]} is over the message limit of {max_bytes} bytes")
    if repeats < 1 or rtt_repeats < 2 or serialization_repeats < 1:
        raise StarsimError("link: repeats, rtt_repeats and serialization_repeats must be positive")
    params = {
        "sizes": sizes, "repeats": int(repeats), "rtt_repeats": int(rtt_repeats), "seed": int(seed),
        "hidden_size": int(hidden_size), "tree_tokens": [int(t) for t in tree_tokens],
        "new_tokens": [int(n) for n in new_tokens], "serialization_repeats": int(serialization_repeats),
        "tcp_nodelay": True, "loopback": loopback if peer is None else None,
    }
    if loopback not in ("process", "thread"):
        raise StarsimError(f"link: loopback must be 'process' or 'thread' (got {loopback!r})")
    with contextlib.ExitStack() as stack:
        if peer is not None:
            address, kind = peer, "remote (starsim calibrate link --serve)"
        elif loopback == "thread":
            server = stack.enter_context(LinkServer("127.0.0.1:0", max_bytes))
            address, kind = server.address, "loopback, in-process thread"
        else:
            address, kind = stack.enter_context(_peer_process(max_bytes, timeout_s)), "loopback, separate process"
        result = _measure_path(address, sizes, repeats, rtt_repeats, seed, timeout_s, max_bytes)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        serial = measure_serialization(hidden_size, tree_tokens, new_tokens, serialization_repeats, seed)
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {
        "kind": "link_profile",
        "schema": SCHEMA,
        "provenance": _provenance(address, kind),
        "parameters": params,
        **result,
        "serialization": {
            "what": "encode = constructor + frame bytes; decode = protocol.decode (zero-copy views)",
            "rows": serial,
        },
    }
    out["typical"] = _typical(out)
    return out


def _measure_path(
    address: str, sizes: list[int], repeats: int, rtt_repeats: int, seed: int, timeout_s: float, max_bytes: int
) -> dict[str, Any]:
    host, port = parse_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise StarsimError(f"cannot connect to link peer {address}: {e}") from None
    rng = np.random.default_rng(seed)
    gc_was_enabled = gc.isenabled()
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            gc.disable()
            small = protocol.echo(0, np.zeros(0, np.uint8)).buffers(max_bytes)
            frames = []
            for i, s in enumerate(sizes):
                payload = np.frombuffer(rng.bytes(s), dtype=np.uint8)
                frames.append(protocol.ping(i, payload).buffers(max_bytes))
            frame_bytes = [sum(memoryview(b).nbytes for b in f) for f in frames]
            # warm-up: small echoes, then every size ascending (the peer grows its buffer once)
            for _ in range(max(10, rtt_repeats // 10)):
                _round_trip(sock, small, protocol.ECHO, address, max_bytes)
            for i in range(len(sizes)):
                _round_trip(sock, frames[i], protocol.ACK, address, max_bytes)
            # (a) small ECHOs (index -1) and (b) PINGs by size, interleaved in one shuffled
            # schedule so that drift (CPU clocks, other traffic) affects both alike
            order = np.concatenate([np.full(rtt_repeats, -1), np.repeat(np.arange(len(sizes)), repeats)])
            rng.shuffle(order)
            rtt_list: list[int] = []
            samples: list[list[int]] = [[] for _ in sizes]
            for i in order:
                if i < 0:
                    rtt_list.append(_round_trip(sock, small, protocol.ECHO, address, max_bytes)[0])
                    continue
                ns, reply = _round_trip(sock, frames[i], protocol.ACK, address, max_bytes)
                if reply.header.get("received") != sizes[i]:
                    raise StarsimError(f"link peer {address} acknowledged {reply.header.get('received')} bytes, "
                                       f"sent {sizes[i]}")
                samples[i].append(ns)
            protocol.send_message(sock, protocol.bye(reason="calibration done"))
        except (ProtocolError, OSError) as e:
            raise StarsimError(f"link measurement with {address} failed: {e}") from None
        finally:
            if gc_was_enabled:
                gc.enable()
    rtt_ns = np.array(rtt_list)
    rtt = {"message_bytes": sum(memoryview(b).nbytes for b in small), "repeats": int(rtt_repeats), **_stats(rtt_ns)}
    rows = []
    for s, nb, ns in zip(sizes, frame_bytes, samples):
        st = _stats(ns)
        rows.append({"payload_bytes": s, "bytes": nb, "repeats": len(ns), "median_s": st["median_s"],
                     "p10_s": st["p10_s"], "p90_s": st["p90_s"],
                     "throughput_bps": 8.0 * nb / st["median_s"] if st["median_s"] > 0 else None})
    fit = _fit(np.array([r["bytes"] for r in rows], float), np.array([r["median_s"] for r in rows], float))
    for r in rows:
        r["fit_s"] = fit["rtt_s"] + (r["bytes"] * 8.0 / fit["bandwidth_bps"] if fit["bandwidth_bps"] else 0.0)
    rtt_s = rtt_ns * 1e-9
    rtt_s = rtt_s[rtt_s <= np.percentile(rtt_s, 99)]  # one scheduler hiccup would set the cv alone
    excess = np.maximum(rtt_s - rtt["p10_s"], 0.0) / 2.0
    jmean = float(excess.mean())
    jitter: dict[str, Any] | float = 0.0
    if jmean > 0:
        jitter = {"kind": "lognormal", "mean": jmean, "cv": float(excess.std() / jmean)}
    link = {"latency_s": rtt["p10_s"] / 2.0, "bandwidth_bps": fit["bandwidth_bps"], "jitter": jitter}
    return {"rtt": rtt, "transfer": {"what": "PING of payload_bytes + small ACK, time at the sender", "rows": rows,
                                     "fit": fit}, "link": link}


def _nearest(rows: list[dict[str, Any]], key: str, want: int, **match: Any) -> dict[str, Any] | None:
    cands = [r for r in rows if r.get(key) is not None and all(r.get(k) == v for k, v in match.items())]
    if not cands:
        return None
    return min(cands, key=lambda r: (abs(math.log(r[key] / want)), r[key]))


def _typical(
    result: dict[str, Any], new_tokens: int = 4, tree_tokens: int = 64, hidden: bool = True
) -> dict[str, Any]:
    rows = result["serialization"]["rows"]
    hs = result["parameters"]["hidden_size"] if hidden else 0
    req = _nearest(rows, "new_tokens", new_tokens, message=protocol.DRAFT_REQUEST, hidden_size=hs)
    if req is None:
        req = _nearest(rows, "new_tokens", new_tokens, message=protocol.DRAFT_REQUEST, hidden_size=0)
    rep = _nearest(rows, "tree_tokens", tree_tokens, message=protocol.DRAFT_REPLY)
    return {"draft_request": req, "draft_reply": rep}


# ---------------------------------------------------------------------------------------------
# output


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def default_profile_name(result: dict[str, Any]) -> str:
    """A file name for the profile: ``link-HOST-loopback.yaml`` or ``link-HOST-to-PEERHOST.yaml``."""
    prov = result["provenance"]
    host = prov["hostname"].split(".")[0] or "host"
    if prov["peer_kind"].startswith("loopback"):
        where = "loopback"
    else:
        where = "to-" + parse_address(prov["peer"])[0].replace(":", "_")
    return f"link-{host}-{where}.yaml"


def write_link_profile(result: dict[str, Any], path: str | Path) -> Path:
    """Write the result of :func:`measure` as YAML (parent folders created); returns the path."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = result["provenance"]
    head = (f"# starsim link profile: {prov['hostname']} -> {prov['peer']} ({prov['peer_kind']}), "
            f"{prov['date_utc']}, starsim {prov['starsim']}\n"
            "# scenario snippet: see `suggest` below (or starsim.calibrate.link.suggest_link_yaml)\n")
    body = yaml.safe_dump(_plain({**result, "suggest": suggest_link_yaml(result)}), sort_keys=False, width=100)
    path.write_text(head + body)
    return path


def _num(x: float) -> str:
    """3 significant digits, always a YAML float (PyYAML reads ``2e-05`` without a dot as a string)."""
    text = f"{x:.3g}"
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e")
    return text


def _us(s: float) -> str:
    return f"{s * 1e6:.1f} us"


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


QUICK = {"sizes": tuple(4**k for k in range(3, 12)), "repeats": 5, "rtt_repeats": 100, "serialization_repeats": 30}
"""Fewer sizes (64 B .. 4 MiB, by 4x) and repeats: a first look in a couple of seconds."""


def format_result(result: dict[str, Any]) -> str:
    """A human summary of :func:`measure`'s result: RTT, bandwidth, time by size, serialization."""
    prov, rtt, fit = result["provenance"], result["rtt"], result["transfer"]["fit"]
    bw = fit["bandwidth_bps"]
    lines = [
        f"link {prov['hostname']} -> {prov['peer']} ({prov['peer_kind']}), {prov['date_utc']}",
        f"RTT (small message, {rtt['repeats']} round trips): median {_us(rtt['median_s'])}, "
        f"p10 {_us(rtt['p10_s'])}, p90 {_us(rtt['p90_s'])}",
        f"bandwidth (fit of time by size): {'unlimited' if not bw else f'{bw / 1e9:.2f} Gb/s'}, "
        f"fixed part {_us(fit['rtt_s'])}, MAPE {fit['mape'] * 100:.1f}% over {fit['points']} sizes",
        "",
        f"  {'payload':>9s} {'median':>11s} {'p10':>11s} {'p90':>11s} {'Gb/s':>7s}",
    ]
    for r in result["transfer"]["rows"]:
        gbps = r["throughput_bps"] / 1e9 if r["throughput_bps"] else float("nan")
        lines.append(f"  {_size(r['payload_bytes']):>9s} {_us(r['median_s']):>11s} {_us(r['p10_s']):>11s} "
                     f"{_us(r['p90_s']):>11s} {gbps:7.2f}")
    lines += ["", "protocol serialization (median per message):",
              f"  {'message':14s} {'content':34s} {'bytes':>9s} {'encode':>10s} {'decode':>10s}"]
    for r in result["serialization"]["rows"]:
        if r["message"] == protocol.DRAFT_REQUEST:
            what = f"{r['new_tokens']} tokens" + (f" + hidden x{r['hidden_size']} fp16" if r["hidden_size"] else "")
        else:
            what = f"tree of {r['tree_tokens']} nodes"
        lines.append(f"  {r['message']:14s} {what:34s} {r['bytes']:9,d} {_us(r['encode_median_s']):>10s} "
                     f"{_us(r['decode_median_s']):>10s}")
    return "\n".join(lines)


def suggest_link_yaml(
    result: dict[str, Any], new_tokens: int = 4, tree_tokens: int = 64, hidden: bool = True
) -> str:
    """The scenario lines the measurement supports, as YAML text to paste.

    ``link`` goes under each ``targets:`` entry that uses this path; ``parse_time`` and
    ``serialize_time`` go under ``draft:``, as constants at a typical size: a DRAFT_REQUEST
    of ``new_tokens`` (with hidden states when ``hidden`` and they were measured) and a
    DRAFT_REPLY of ``tree_tokens`` nodes (the nearest measured rows). A commented
    ``payload`` line gives this protocol's framing overhead. The text parses as one YAML
    mapping (``link``, ``parse_time``, ``serialize_time``).
    """
    prov, rtt, fit, link = result["provenance"], result["rtt"], result["transfer"]["fit"], result["link"]
    typical = _typical(result, new_tokens, tree_tokens, hidden)
    req, rep = typical["draft_request"], typical["draft_reply"]
    sizes = result["parameters"]["sizes"]
    bw = link["bandwidth_bps"]
    jitter = link["jitter"]
    if isinstance(jitter, dict):
        jit = f"{{kind: lognormal, mean: {_num(jitter['mean'])}, cv: {_num(jitter['cv'])}}}"
    else:
        jit = "0.0"
    lines = [
        f"# Measured by `starsim calibrate link` on {prov['hostname']} to {prov['peer']} ({prov['peer_kind']}),",
        f"# {prov['date_utc']}, starsim {prov['starsim']}, protocol v{prov['protocol_version']}.",
        f"# Small-message RTT: median {_us(rtt['median_s'])} (p10 {_us(rtt['p10_s'])}, p90 {_us(rtt['p90_s'])});",
        f"# bandwidth fit over {_size(sizes[0])}..{_size(sizes[-1])}: MAPE {fit['mape'] * 100:.1f}%.",
        "# Under each `targets:` entry that uses this path:",
        "link:",
        f"  latency_s: {_num(link['latency_s'])}        # one way: half the p10 small-message RTT",
        f"  bandwidth_bps: {'null' if bw is None else _num(bw)}    # fitted",
        f"  jitter: {jit}   # one-way excess over latency_s",
    ]
    if req is not None and rep is not None:
        token_bytes = 4
        hid = 2 * req["hidden_size"]
        lines.append(
            f"# payload: {{header_bytes: {req['overhead_bytes']}, token_bytes: {token_bytes}, "
            f"hidden_bytes_per_token: {hid}, tree_mask: false}}  # this protocol's framing (parents, no mask)"
        )
    lines.append("# Under `draft:` (the draft server's communication thread; constants at a typical size):")
    if req is not None:
        what = f"{req['new_tokens']} tokens" + (f" + hidden [{req['new_tokens']}, {req['hidden_size']}] float16"
                                                 if req["hidden_size"] else "")
        lines.append(f"parse_time: {_num(req['decode_median_s'])}   # decode DRAFT_REQUEST, {what} "
                     f"({req['bytes']:,} B), median")
    if rep is not None:
        lines.append(f"serialize_time: {_num(rep['encode_median_s'])}   # encode DRAFT_REPLY, "
                     f"{rep['tree_tokens']}-node tree ({rep['bytes']:,} B), median")
    return "\n".join(lines) + "\n"
