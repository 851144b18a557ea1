"""The wire protocol: every message round-trips, every malformed frame raises ProtocolError."""

from __future__ import annotations

import ast
import asyncio
import socket
import struct
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

from starsim.errors import StarsimError
from starsim.real import protocol as P
from starsim.real.protocol import ProtocolError

RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 32000, size=5, dtype=np.int32)
HIDDEN = RNG.standard_normal((5, 16)).astype(np.float16)
TREE = RNG.integers(0, 32000, size=8, dtype=np.int32)
PARENTS = np.array([-1, 0, 0, 1, 1, 2, 3, -1], dtype=np.int32)
PROBS = RNG.random((4, 32000)).astype(np.float16)  # one row per node with children: the root and nodes 0-2
PROB_NODES = np.array([-1, 0, 1, 2], dtype=np.int32)

MESSAGES = {
    "hello": P.hello({"name": "t-0", "device": "cpu"}, token="secret"),
    "welcome": P.welcome(7),
    "request": P.draft_request(7, 3, IDS),
    "request_hidden": P.draft_request(7, 3, IDS, HIDDEN),
    "reply": P.draft_reply(7, 3, TREE, PARENTS),
    "reply_probs": P.draft_reply(7, 3, TREE, PARENTS, PROBS, PROB_NODES),
    "bye": P.bye(7, "done"),
    "error": P.error("bad token"),
    "ping": P.ping(1, np.arange(100, dtype=np.uint8)),
    "ack": P.ack(1, 100),
    "echo": P.echo(2, np.zeros(0, np.uint8)),
}


def _same(a: P.Message, b: P.Message) -> None:
    assert a.type == b.type
    assert {k: v for k, v in a.header.items() if v is not None} == {k: v for k, v in b.header.items() if v is not None}
    assert a.arrays.keys() == b.arrays.keys()
    for name, arr in a.arrays.items():
        assert b.arrays[name].dtype == arr.dtype and b.arrays[name].shape == arr.shape
        np.testing.assert_array_equal(b.arrays[name], arr)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_round_trip_every_message(name):
    msg = MESSAGES[name]
    out = P.decode(msg.encode())
    _same(msg, out)
    assert out.tag == msg.header.get("tag") and out.seq == msg.header.get("seq")
    assert out.type in P.MESSAGE_TYPES


def test_session_message_contents():
    hello = P.decode(MESSAGES["hello"].encode())
    assert hello.header["protocol"] == P.VERSION and hello.header["token"] == "secret"
    assert hello.header["target"] == {"name": "t-0", "device": "cpu"}
    req = P.decode(MESSAGES["request_hidden"].encode())
    assert req.arrays["token_ids"].dtype == np.int32 and req.arrays["hidden"].dtype == np.float16
    assert req.arrays["hidden"].shape == (5, 16)
    rep = P.decode(MESSAGES["reply_probs"].encode())
    assert set(rep.arrays) == {"token_ids", "parents", "draft_probs", "prob_nodes"}
    assert rep.dtypes["parents"] == "int32" and rep.arrays["draft_probs"].shape == (4, 32000)
    # constructors cast what they may: int64 ids that fit, float32 hidden states -> float16
    req = P.draft_request(1, 1, IDS.astype(np.int64), HIDDEN.astype(np.float32))
    assert req.arrays["token_ids"].dtype == np.int32 and req.arrays["hidden"].dtype == np.float16


def test_generic_encode_all_wire_dtypes_and_edge_shapes():
    arrays = {
        "u8": np.arange(7, dtype=np.uint8),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "i64": np.array([-(2**40), 2**40], dtype=np.int64),
        "f16": np.ones((3, 1), np.float16),
        "bf16": np.array([0x3F80, 0x4000], dtype=np.uint16),  # 1.0 and 2.0 as bfloat16 bits
        "f32": np.float32(2.5),  # 0-d
        "empty": np.zeros((0, 4), np.float32),
        "strided": np.arange(20, dtype=np.int32)[::3],
        "big_endian": np.arange(4, dtype=">i4"),
    }
    frame = P.encode(P.ECHO, {"seq": 9, "note": "x", "nested": {"a": [1, 2]}}, arrays, {"bf16": "bfloat16"})
    out = P.decode(frame)
    assert out.header == {"seq": 9, "tag": None, "note": "x", "nested": {"a": [1, 2]}}
    assert out.dtypes["bf16"] == "bfloat16" and out.arrays["bf16"].dtype == np.uint16
    for name, arr in arrays.items():
        assert out.arrays[name].shape == np.shape(arr)
        np.testing.assert_array_equal(out.arrays[name], arr)
    # a decoded message re-encodes to the same frame (the echo peer relies on it)
    assert out.encode() == frame
    # arrays are zero-copy views of the frame, each at an ALIGN-ed offset within the body
    base = np.frombuffer(frame, np.uint8).ctypes.data
    hlen = struct.unpack(">I", frame[4:8])[0]
    body = base + P.PREFIX_SIZE + hlen
    for arr in out.arrays.values():
        if arr.nbytes:
            assert body <= arr.ctypes.data < base + len(frame)
            assert (arr.ctypes.data - body) % P.ALIGN == 0
    assert not out.arrays["u8"].flags.writeable  # a view of immutable bytes


def test_buffers_do_not_copy_contiguous_arrays():
    big = np.arange(1 << 16, dtype=np.float32)
    bufs = P.encode_buffers(P.ECHO, {}, {"x": big})
    assert np.shares_memory(np.frombuffer(bufs[-1], np.uint8), big)
    assert b"".join(bufs) == P.encode(P.ECHO, {}, {"x": big})


# ---------------------------------------------------------------------------------------------
# malformed frames


def _frame(header, body: bytes = b"", magic: bytes = b"SSD", version: int = 1, raw_header: bytes | None = None):
    packed = raw_header if raw_header is not None else msgpack.packb(header, use_bin_type=True)
    return struct.pack(">3sBII", magic, version, len(packed), len(body)) + packed + body


GOOD = P.draft_request(1, 2, IDS, HIDDEN).encode()


@pytest.mark.parametrize(
    "frame, match",
    [
        (b"XYZ" + GOOD[3:], "bad magic"),
        (GOOD[:3] + bytes([2]) + GOOD[4:], "unsupported protocol version"),
        (GOOD[:3] + bytes([0]) + GOOD[4:], "unsupported protocol version"),
        (GOOD[:5], "truncated"),
        (GOOD[:-1], "truncated"),
        (GOOD[:20], "truncated"),
        (GOOD + b"\0", "trailing"),
        (struct.pack(">3sBII", b"SSD", 1, 10, 2**32 - 1) + b"x" * 30, "exceeds the limit"),
        (struct.pack(">3sBII", b"SSD", 1, 0, 0), "header length"),
        (_frame([1, 2, 3]), "must be a map"),
        (_frame(None, raw_header=b"\xc1"), "not valid msgpack"),
        (_frame(None, raw_header=msgpack.packb({"type": "BYE"}) + b"\x01"), "not valid msgpack"),
        (_frame({"type": "RUN_CODE", "arrays": []}), "unknown message type"),
        (_frame({"arrays": []}), "unknown message type"),
        (_frame({"type": "BYE", "tag": "x", "arrays": []}), "'tag' must be an int"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "float64", "shape": [1]}]}, b"\0" * 8),
         "unknown dtype"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "object", "shape": [1]}]}, b"\0" * 8),
         "unknown dtype"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "int32", "shape": [3]}]}, b"\0" * 8),
         "body bytes"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "int32", "shape": [1]}]}, b"\0" * 8),
         "body bytes"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "int32", "shape": [-1]}]}), "shape"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "int32", "shape": 4}]}, b"\0" * 16), "shape"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "uint8", "shape": [1], "extra": 1}]}, b"\0"),
         "descriptor"),
        (_frame({"type": "ECHO", "arrays": [{"name": "x", "dtype": "uint8", "shape": [1]}] * 2}, b"\0" * 2),
         "repeated"),
        (_frame({"type": "ECHO", "arrays": {"x": 1}}), "must be a list"),
        (_frame(None, raw_header=msgpack.packb({"type": "BYE", "x": msgpack.ExtType(5, b"evil")})), "extension"),
    ],
)
def test_malformed_frames_raise(frame, match):
    with pytest.raises(ProtocolError, match=match):
        P.decode(frame)


def test_protocol_error_is_a_starsim_error():
    assert issubclass(ProtocolError, StarsimError)


def test_size_limit_is_configurable_both_ways():
    frame = P.ping(1, np.zeros(1000, np.uint8)).encode()
    P.decode(frame)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        P.decode(frame, max_bytes=500)
    with pytest.raises(ProtocolError, match="more than the limit"):
        P.ping(1, np.zeros(1000, np.uint8)).encode(max_bytes=500)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: P.encode(P.ECHO, {}, {"x": np.zeros(2, np.float64)}), "not a wire dtype"),
        (lambda: P.encode(P.ECHO, {}, {"x": np.zeros(2, np.uint16)}), "bfloat16"),
        (lambda: P.encode(P.ECHO, {}, {"x": np.array([object()])}), "not a wire dtype"),
        (lambda: P.encode(P.ECHO, {}, {"x": np.zeros(2, np.int32)}, {"x": "bfloat16"}), "cannot be sent as"),
        (lambda: P.encode(P.ECHO, {}, {"x": np.zeros(2, np.int32)}, {"x": "pickle"}), "not one of"),
        (lambda: P.encode("EXEC"), "unknown message type"),
        (lambda: P.encode(P.BYE, {"type": "x"}), "reserved"),
        (lambda: P.encode(P.BYE, {"arrays": []}), "reserved"),
        (lambda: P.encode(P.BYE, {1: "x"}), "strings"),
        (lambda: P.encode(P.BYE, {"seq": 1.5}), "int or None"),
        (lambda: P.encode(P.BYE, {"when": object()}), "cannot be packed"),
        (lambda: P.draft_request(1, 1, IDS, HIDDEN[:3]), "rows"),
        (lambda: P.draft_request(1, 1, IDS, HIDDEN[:, 0]), r"\[n, hidden_size\]"),
        (lambda: P.draft_request(1, 1, [2**40]), "int32"),
        (lambda: P.draft_request(1, 1, [[1, 2]]), "1-D integer"),
        (lambda: P.draft_reply(1, 1, TREE, PARENTS[:4]), "expected 8"),
        (lambda: P.draft_reply(1, 1, TREE, np.full(8, 9, np.int32)), "parents"),
        (lambda: P.draft_reply(1, 1, TREE, PARENTS, PROBS), "needs prob_nodes"),
        (lambda: P.draft_reply(1, 1, TREE, PARENTS, PROBS, PROB_NODES[:2]), "with 2 rows"),
        (lambda: P.draft_reply(1, 1, TREE, PARENTS, PROBS, np.array([-1, 0, 1, 8], np.int32)), "prob_nodes"),
    ],
)
def test_unencodable_messages_raise(build, match):
    with pytest.raises(ProtocolError, match=match):
        build()


def test_no_pickle_or_torch_load_anywhere():
    # the module imports nothing that can execute code from the wire
    src = Path(P.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute):
            assert node.attr not in ("loads", "load", "Unpickler"), f"unexpected call to .{node.attr}"
    assert imported <= {"__future__", "asyncio", "socket", "struct", "dataclasses", "typing", "msgpack", "numpy"}
    # object arrays cannot be encoded, and a frame cannot ask for them
    with pytest.raises(ProtocolError):
        P.encode(P.ECHO, {}, {"x": np.array([{"a": 1}], dtype=object)})


# ---------------------------------------------------------------------------------------------
# sockets and streams


def test_blocking_sockets_round_trip_small_and_large():
    a, b = socket.socketpair()
    large = P.draft_request(1, 5, np.arange(64, dtype=np.int32), RNG.standard_normal((64, 4096)).astype(np.float16))
    assert len(large.encode()) > P.JOIN_BELOW_BYTES  # goes out with sendmsg from the arrays
    sender = threading.Thread(target=lambda: [P.send_message(a, m) for m in (MESSAGES["reply"], large)])
    with a, b:
        sender.start()
        got = P.recv_message(b)
        _same(MESSAGES["reply"], got)
        assert got.frame_bytes == len(MESSAGES["reply"].encode())  # its size on the wire
        got = P.recv_message(b)
        sender.join()
        _same(large, got)
        assert got.frame_bytes == len(large.encode())
        assert got.arrays["hidden"].flags.writeable  # received into a fresh bytearray
        assert got.arrays["hidden"].ctypes.data % P.ALIGN == 0
        # into a reusable body buffer: arrays alias it
        buf = bytearray(1 << 20)
        P.send_message(a, MESSAGES["ping"])
        got = P.recv_message(b, body_buffer=buf)
        assert np.shares_memory(got.arrays["payload"], np.frombuffer(buf, np.uint8))
        _same(MESSAGES["ping"], got)
        # a frame over the receiver's limit is refused from its prefix alone
        P.send_message(a, MESSAGES["ping"])
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            P.recv_message(b, max_bytes=64)
    # clean end of stream -> None; end inside a frame -> truncated
    a, b = socket.socketpair()
    with a, b:
        a.close()
        assert P.recv_message(b) is None
    a, b = socket.socketpair()
    with a, b:
        a.sendall(GOOD[: len(GOOD) // 2])
        a.close()
        with pytest.raises(ProtocolError, match="truncated"):
            P.recv_message(b)


def test_asyncio_streams_round_trip_and_truncation():
    async def main():
        got: list = []

        async def handle(reader, writer):
            while (msg := await P.read_message(reader)) is not None:
                got.append(msg)
                await P.write_message(writer, msg)
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = [MESSAGES["request_hidden"], MESSAGES["reply_probs"], MESSAGES["bye"]]
        echoed = []
        for m in sent:
            n = await P.write_message(writer, m)
            assert n == len(m.encode())
            echoed.append(await P.read_message(reader))
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return sent, got, echoed

    sent, got, echoed = asyncio.run(main())
    for m, g, e in zip(sent, got, echoed):
        _same(m, g)
        _same(m, e)

    async def truncated():
        reader = asyncio.StreamReader()
        reader.feed_data(GOOD[:30])
        reader.feed_eof()
        with pytest.raises(ProtocolError, match="truncated"):
            await P.read_message(reader)
        empty = asyncio.StreamReader()
        empty.feed_eof()
        assert await P.read_message(empty) is None

    asyncio.run(truncated())
