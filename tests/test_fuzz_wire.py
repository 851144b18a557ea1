"""Fuzzing the wire (issue 16): the frame decoder and a live draft server, fed random bytes
and mutated frames by Hypothesis.

The decoder must either return a message or raise ProtocolError, whatever the bytes (never
another exception, never a hang). A live server must close (or answer) each bad connection
and keep serving a real target, losslessly, with no thread left behind. Seeded; CI runs a
bounded number of examples, ``STARSIM_FUZZ_EXAMPLES=N`` runs more.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from starsim.real import protocol as P

EXAMPLES = int(os.environ.get("STARSIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# valid frames of every message type: what the mutations start from
VALID = [
    P.hello({"weight": 2.0}, "tok").encode(),
    P.welcome(3, host_id="h", features=["clock"]).encode(),
    P.clock(1, 2, 3.5, 4.5).encode(),
    P.draft_request(1, 2, np.arange(5, dtype=np.int32), np.ones((5, 4), np.float16)).encode(),
    P.draft_reply(1, 2, [5, 6, 7], [-1, 0, 0], np.full((2, 8), 0.125, np.float16), [-1, 0]).encode(),
    P.bye(1, "done").encode(),
    P.error("no").encode(),
    P.ping(1, np.zeros(64, np.uint8)).encode(),
    P.ack(1, 64).encode(),
    P.echo(1, np.zeros(9, np.uint8)).encode(),
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
                    st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                      st.dictionaries(st.text(max_size=8), kids, max_size=5)),
                      max_leaves=20)
dims = st.one_of(st.integers(0, 8), st.integers(-3, 2**64 - 1), values)
descriptor = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["token_ids", "parents", "hidden", "x"]), values),
                           "dtype": st.one_of(st.sampled_from(sorted(P.WIRE_DTYPES)), values),
                           "shape": st.one_of(st.lists(dims, max_size=70), values)}),
    values)
headers = st.one_of(
    values,
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(sorted(P.MESSAGE_TYPES)), values)},
                          optional={"tag": values, "seq": values, "arrays": st.one_of(st.lists(descriptor, max_size=4),
                                                                                      values),
                                    "start": values, "token": values, "target": values, "temperature": values,
                                    "seed": values, "depth": values, "deadline_in_s": values, "t_client": values}),
)


@st.composite
def frames(draw) -> bytes:
    """Random bytes, a valid frame cut or corrupted, or a well-formed prefix around a random header and body."""
    kind = draw(st.sampled_from(["bytes", "mutate", "header", "prefix"]))
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    base = bytearray(draw(st.sampled_from(VALID)))
    if kind == "mutate":
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
            i = draw(st.integers(0, max(len(base) - 1, 0)))
            if op == "flip" and base:
                base[i] ^= draw(st.integers(1, 255))
            elif op == "cut":
                del base[i:]
            elif op == "insert":
                base[i:i] = draw(st.binary(min_size=1, max_size=16))
            elif base:
                del base[i:i + draw(st.integers(1, 16))]
        return bytes(base)
    if kind == "header":
        try:
            raw = msgpack.packb(draw(headers), use_bin_type=True)
        except (OverflowError, ValueError, TypeError):
            raw = b"\xc1"  # never valid msgpack
        body = draw(st.binary(max_size=128))
        return P.PREFIX.pack(P.MAGIC, P.VERSION, len(raw), len(body)) + raw + body
    # a prefix whose lengths disagree with what follows
    hlen = draw(st.integers(0, 2**32 - 1))
    blen = draw(st.integers(0, 2**32 - 1))
    return P.PREFIX.pack(P.MAGIC, draw(st.sampled_from([P.VERSION, 0, 2, 255])), hlen, blen) + bytes(base[12:])


@FUZZ
@given(frames())
def test_decode_returns_a_message_or_raises_protocol_error(data):
    try:
        msg = P.decode(data)
    except P.ProtocolError:
        return
    assert msg.type in P.MESSAGE_TYPES
    for name, arr in msg.arrays.items():
        assert isinstance(arr, np.ndarray) and msg.dtypes[name] in P.WIRE_DTYPES


@FUZZ
@given(frames())
def test_recv_message_on_a_stream_returns_or_raises_protocol_error(data):
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        try:
            while P.recv_message(b) is not None:  # every frame in the stream, then its end
                pass
        except P.ProtocolError:
            pass


# ------------------------------------------------------------------ a live server

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402
from test_server import _raw  # noqa: E402

from starsim.net import parse_address  # noqa: E402
from starsim.real.client import DraftClient  # noqa: E402
from starsim.real.server import DraftServer, ServerLimits  # noqa: E402
from starsim.real.speculation import Drafter, speculative_generate, target_generate  # noqa: E402


@pytest.fixture(scope="module")
def live(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 4, 4, 16), limits=ServerLimits(timeout_s=30, handshake_timeout_s=2.0)) as server:
        yield server


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
@given(first=st.booleans(), frame=frames())
def test_a_live_server_closes_bad_connections_and_keeps_serving(live, quick_models, first, frame):
    hello = P.hello().encode() if first else b""  # after a good HELLO the frame reaches a comm thread
    _raw(live, hello + frame)  # the server must close (or answer) it: a timeout fails


ids_arrays = hnp.arrays(st.sampled_from([np.int32, np.int64, np.float16, np.uint8]),
                        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                        elements=None)
fields = st.dictionaries(st.sampled_from(["start", "temperature", "seed", "depth", "deadline_in_s", "seq", "tag",
                                          "t_client", "extra"]), values, max_size=4)


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 20))
@given(kind=st.sampled_from([P.DRAFT_REQUEST, P.CLOCK, P.DRAFT_REQUEST]), ids=ids_arrays, extra=fields,
       again=st.booleans())
def test_a_live_server_checks_each_field_of_a_tagged_request(live, kind, ids, extra, again):
    """Past the handshake, with the connection's own tag: a request (or clock probe) whose
    fields are random gets a reply or closes that connection, never a crashed thread."""
    with socket.create_connection(parse_address(live.address), timeout=10) as s:
        P.send_message(s, P.hello())
        welcome = P.recv_message(s)
        assert welcome is not None and welcome.type == P.WELCOME
        header = {"tag": welcome.tag, "seq": 1, "start": True, "t_client": 1.0}
        header.update(extra)
        try:
            frame = P.encode(kind, header, {"token_ids": ids} if ids.dtype.kind != "u" or ids.size else {})
        except (P.ProtocolError, OverflowError, ValueError, TypeError):
            return  # not encodable: the decoder fuzz above covers such bytes
        try:
            for _ in range(2 if again else 1):
                s.sendall(frame)
                reply = P.recv_message(s)
                if reply is None:
                    return  # closed: refused
                assert reply.type in (P.DRAFT_REPLY, P.CLOCK, P.ERROR), reply.type
                if reply.type == P.ERROR:
                    return
        except (OSError, P.ProtocolError):
            pass  # closed mid-exchange
    # whatever came, the server holds no thread for it once the connection is gone
    deadline = time.monotonic() + 10
    while live.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.connected == 0


def test_after_the_fuzzing_the_server_serves_a_real_target_losslessly(live, quick_models):
    """Runs after the live fuzzing above (pytest keeps a module's order)."""
    tok, target, _ = quick_models
    deadline = time.monotonic() + 30
    while (live.connected or live.pending) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.connected == 0 and live.pending == 0
    assert not [line for line in live.rejected if "internal error" in line]  # each refusal was a check's
    assert all(t.is_alive() for t in live._threads)  # the door and the engine
    assert sum(t.name.startswith("draft-comm") for t in threading.enumerate()) == 0
    client = DraftClient(live.address)
    ids = tok.encode(CODE_PROMPTS[0]).ids
    out, _ = speculative_generate(target, lambda new, start, seed=None, hidden=None: client.draft(new, start)[0],
                                  ids, 24)
    client.close()
    assert out == target_generate(target, ids, 24)
