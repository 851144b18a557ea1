"""The wire protocol between the draft server and its targets: versioned, length-prefixed frames.

A frame is a fixed 12-byte prefix, a msgpack header and a body of raw tensor bytes::

    offset  size  field
    0       3     magic b"SSD"
    3       1     protocol version (VERSION)
    4       4     header length H, u32 big-endian
    8       4     body length B, u32 big-endian
    12      H     header: one msgpack map
    12+H    B     body: the arrays' bytes, little-endian, C order, in header order

The header map holds ``type`` (one of MESSAGE_TYPES), ``tag`` and ``seq`` (int or nil),
``arrays`` (a list of ``{name, dtype, shape}`` descriptors, in body order) and the message's
other fields (string keys, plain msgpack values). Each array starts at the next multiple of
ALIGN bytes in the body (zero padding between arrays, none after the last), so a body read
into its own buffer gives aligned arrays. ``dtype`` is one of WIRE_DTYPES; ``bfloat16``
travels as its raw 16 bits (numpy has no bfloat16: such arrays decode as ``uint16`` and
``Message.dtypes`` says ``bfloat16``).

Nothing here executes code from the wire: no pickle, no ``torch.load``, no msgpack
extension hooks. Every frame is checked (magic, version, size limit, header shape, dtype
whitelist, byte counts) and a bad one raises :class:`ProtocolError`; a peer should drop
the connection on one. Decoding does not copy tensor bytes: arrays are ``np.frombuffer``
views of the received buffer (read-only when it is ``bytes``).

The messages of a StarSD session (target = target worker, server = draft server):

- ``HELLO`` target -> server: ``protocol`` (version), optional shared ``token``, ``target`` info.
- ``WELCOME`` server -> target: the assigned ``tag``, ``protocol``, the server's ``host_id``
  (equal for two processes on one boot of one host) and ``features``, the optional messages
  the server answers (``["clock"]``).
- ``CLOCK`` (feature ``clock``), target -> server, between WELCOME and the first
  DRAFT_REQUEST only: ``tag``, ``seq``, ``t_client`` (a finite number, the target's clock at
  sending); the server answers with a CLOCK that echoes ``seq`` and ``t_client`` and adds
  ``t_server``, its ``time.monotonic()`` when the probe arrived. The target estimates the
  offset between the two clocks from these (Cristian's method, see
  :class:`starsim.real.client.DraftClient`); it sends none when the host ids are equal. A
  CLOCK that is malformed, of the wrong tag, after a DRAFT_REQUEST or one too many
  (MAX_CLOCK_PROBES) closes the connection.
- ``DRAFT_REQUEST`` target -> server: ``tag``, ``seq``, ``token_ids`` int32 [n] (the tokens
  accepted since the last request), optional ``hidden`` float16 [n, hidden_size]; ``start:
  true`` on a request's first round, when ``token_ids`` is the whole context.
- ``DRAFT_REPLY`` server -> target: ``tag``, ``seq``, tree ``token_ids`` int32 [T], ``parents``
  int32 [T] (index of each node's parent, -1 for children of the root); when sampling,
  ``draft_probs`` float16 [R, vocab] and ``prob_nodes`` int32 [R] (the draft distribution at
  each node that has children, -1 for the root). A DRAFT_REQUEST header may carry
  ``temperature`` (0: greedy) and ``seed`` (the draft's sampling stream for that round).
- Multi-sequence rounds (feature ``seqs``), for a target that decodes a running batch of
  sequences and asks for all their trees in one round: a DRAFT_REQUEST whose header holds
  ``seqs``: ``[[sid, n_new, start], ...]`` (at most MAX_SEQS; ``sid`` the target's own
  sequence id, an int in [0, 2**63), unique in the request; ``n_new`` >= 1 the sequence's new
  tokens; ``start`` a bool, true when they are its whole context, false to extend the context
  the server holds for that sid on this tag) and optional ``free``: ``[sid, ...]`` (sequences
  that ended: the server drops their contexts and draft state; applied before ``seqs``, so a
  sid may be freed and started again in one request). ``token_ids`` int32 holds the sequences'
  new tokens concatenated in ``seqs`` order (empty only when ``seqs`` is). ``temperature``,
  ``seed``, ``depth`` and ``deadline_in_s`` apply to every sequence; sequence ``sid`` samples
  with :func:`seq_seed` (``seed``, ``sid``). The DRAFT_REPLY concatenates the trees in the
  same order: ``token_ids`` and ``parents`` (each tree's parents local to it), header
  ``trees`` (nodes per sequence) and ``new_tokens`` (a list: context tokens encoded per
  sequence); when sampling, ``draft_probs`` rows concatenated, ``prob_nodes`` local to each
  tree and header ``prob_rows`` (rows per sequence). The other reply stamps are as for one
  sequence (``kv_bytes``: every sequence the tag holds). Pipelining and EAGLE drafts do not
  take such requests (an ERROR). A target sends them only when the WELCOME lists ``seqs``.
- ``BYE`` either way: end of session (optional ``reason``); ``ERROR``: a refusal with a ``reason``.
- ``PING`` / ``ACK`` / ``ECHO``: link calibration (:mod:`starsim.calibrate.link`): a PING's
  payload is answered by a small ACK, an ECHO by the same message back.

Versions: VERSION numbers the frame layout and the meaning of existing messages; a peer
refuses frames of another version. Messages added since (CLOCK, multi-sequence rounds) are negotiated instead:
a target sends one only when the WELCOME lists its feature, so a target of this version
still works with a server that predates it (no clock estimate then) and the other way round.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..errors import StarsimError

MAGIC = b"SSD"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
PREFIX = struct.Struct(">3sBII")
PREFIX_SIZE = PREFIX.size  # 12
ALIGN = 8
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
MAX_NDIM = 32  # dimensions of an array on the wire (numpy's own limit is 64)
# Frames up to this size are joined into one buffer before sending (one segment, one syscall);
# larger ones go out with sendmsg straight from the arrays' memory.
JOIN_BELOW_BYTES = 64 * 1024

# wire name -> numpy storage (little-endian). bfloat16 is carried as its 16 raw bits.
WIRE_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("u1"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}
_INFER = {"u1": "uint8", "i4": "int32", "i8": "int64", "f2": "float16", "f4": "float32"}

HELLO = "HELLO"
WELCOME = "WELCOME"
DRAFT_REQUEST = "DRAFT_REQUEST"
DRAFT_REPLY = "DRAFT_REPLY"
BYE = "BYE"
ERROR = "ERROR"
PING = "PING"
ACK = "ACK"
ECHO = "ECHO"
CLOCK = "CLOCK"
MESSAGE_TYPES = frozenset({HELLO, WELCOME, DRAFT_REQUEST, DRAFT_REPLY, BYE, ERROR, PING, ACK, ECHO, CLOCK})
# optional messages a server answers, listed in its WELCOME's ``features``
FEATURES = ("clock", "seqs")
MAX_SEQS = 1024  # sequences in one multi-sequence DRAFT_REQUEST (and sids it frees)
MAX_SID = 2**63  # a sequence id is an int in [0, MAX_SID)
MAX_CLOCK_PROBES = 64  # per connection: bounds the handshake a peer can hold a comm thread in
_RESERVED = frozenset({"type", "arrays"})


class ProtocolError(StarsimError):
    """A frame that breaks the wire format (or a message that cannot be encoded in it)."""


@dataclass(eq=False)  # arrays do not compare to one bool
class Message:
    """One decoded (or to-be-encoded) message.

    ``header`` holds every header field except ``type`` and ``arrays`` (so ``tag`` and
    ``seq`` are in it); ``dtypes`` gives each array's wire dtype, which only differs from
    the numpy dtype for ``bfloat16`` (uint16 bits).
    """

    type: str
    header: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    # the frame's size as received (None: built here, not received)
    frame_bytes: int | None = field(default=None, compare=False)

    @property
    def tag(self) -> int | None:
        return self.header.get("tag")

    @property
    def seq(self) -> int | None:
        return self.header.get("seq")

    def buffers(self, max_bytes: int = MAX_MESSAGE_BYTES) -> list:
        """The frame as a list of buffers (no tensor copies), see :func:`encode_buffers`."""
        return encode_buffers(self.type, self.header, self.arrays, self.dtypes, max_bytes=max_bytes)

    def encode(self, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
        """The frame as one ``bytes`` object."""
        return b"".join(self.buffers(max_bytes))


# ---------------------------------------------------------------------------------------------
# encoding


def _pad(offset: int) -> int:
    return -offset % ALIGN


def _wire_dtype(name: str, arr: np.ndarray, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in WIRE_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {wanted!r} is not one of {sorted(WIRE_DTYPES)}")
        store = WIRE_DTYPES[wanted]
        if arr.dtype.kind != store.kind or arr.dtype.itemsize != store.itemsize:
            raise ProtocolError(f"array {name!r}: numpy dtype {arr.dtype} cannot be sent as {wanted}")
        return wanted
    wire = _INFER.get(f"{arr.dtype.kind}{arr.dtype.itemsize}")
    if wire is None:
        hint = " (pass dtypes={name: 'bfloat16'} for bfloat16 bits)" if arr.dtype == np.uint16 else ""
        allowed = sorted(WIRE_DTYPES)
        raise ProtocolError(f"array {name!r}: dtype {arr.dtype} is not a wire dtype{hint}; allowed {allowed}")
    return wire


def encode_buffers(
    msg_type: str,
    header: dict[str, Any] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    dtypes: dict[str, str] | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> list:
    """Encode a message as a list of buffers: prefix+header, then each array (and padding).

    The array buffers are views of the arrays' memory (a copy is made only for arrays that
    are not C-contiguous little-endian), so the list suits ``socket.sendmsg``; do not modify
    the arrays until the buffers are sent. Raises :class:`ProtocolError` for an unknown type,
    a reserved or non-string header key, an array of a dtype outside WIRE_DTYPES, or a frame
    larger than ``max_bytes``.
    """
    if msg_type not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg_type!r}; known: {sorted(MESSAGE_TYPES)}")
    header = dict(header or {})
    for key in header:
        if not isinstance(key, str):
            raise ProtocolError(f"header keys must be strings (got {key!r})")
        if key in _RESERVED:
            raise ProtocolError(f"header key {key!r} is reserved")
    for key in ("tag", "seq"):
        value = header.setdefault(key, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ProtocolError(f"header {key!r} must be an int or None (got {value!r})")
    dtypes = dtypes or {}
    descriptors, parts, offset = [], [], 0
    for name, arr in (arrays or {}).items():
        if not isinstance(name, str):
            raise ProtocolError(f"array names must be strings (got {name!r})")
        arr = np.asarray(arr)
        wire = _wire_dtype(name, arr, dtypes.get(name))
        if not (arr.flags.c_contiguous and arr.dtype == WIRE_DTYPES[wire]):
            arr = np.array(arr, dtype=WIRE_DTYPES[wire], order="C")  # byte-swapped or strided input
        pad = _pad(offset)
        if pad and arr.nbytes:
            parts.append(bytes(pad))
            offset += pad
        descriptors.append({"name": name, "dtype": wire, "shape": list(arr.shape)})
        if arr.nbytes:
            parts.append(memoryview(arr.reshape(-1).view(np.uint8)))
            offset += arr.nbytes
    header["type"] = msg_type
    header["arrays"] = descriptors
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"{msg_type} header cannot be packed: {e}") from None
    total = PREFIX_SIZE + len(packed) + offset
    if len(packed) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{msg_type} header is {len(packed)} bytes, more than {MAX_HEADER_BYTES}")
    if total > max_bytes:
        raise ProtocolError(f"{msg_type} frame is {total} bytes, more than the limit of {max_bytes}")
    return [PREFIX.pack(MAGIC, VERSION, len(packed), offset) + packed, *parts]


def encode(
    msg_type: str,
    header: dict[str, Any] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    dtypes: dict[str, str] | None = None,
    *,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> bytes:
    """Encode a message as one frame (``bytes``). See :func:`encode_buffers`."""
    return b"".join(encode_buffers(msg_type, header, arrays, dtypes, max_bytes=max_bytes))


# ---------------------------------------------------------------------------------------------
# decoding


def parse_prefix(prefix, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[int, int]:
    """Check the 12-byte prefix and return (header length, body length)."""
    if len(prefix) < PREFIX_SIZE:
        raise ProtocolError(f"truncated frame: {len(prefix)} bytes, the prefix alone is {PREFIX_SIZE}")
    magic, version, hlen, blen = PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a starsim peer")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {sorted(SUPPORTED_VERSIONS)})")
    if hlen == 0 or hlen > MAX_HEADER_BYTES:
        raise ProtocolError(f"header length {hlen} outside 1..{MAX_HEADER_BYTES}")
    if PREFIX_SIZE + hlen + blen > max_bytes:
        raise ProtocolError(f"frame of {PREFIX_SIZE + hlen + blen} bytes exceeds the limit of {max_bytes}")
    return hlen, blen


def _no_ext(code: int, data: bytes):
    raise ProtocolError(f"msgpack extension type {code} is not allowed in a header")


def _unpack_header(raw) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_no_ext, use_list=True)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"header is not valid msgpack: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    msg_type = header.get("type")
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    for key in ("tag", "seq"):
        value = header.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ProtocolError(f"{msg_type}: header {key!r} must be an int or nil (got {value!r})")
    return header


def _layout(msg_type: str, descriptors: Any) -> tuple[list[tuple[str, str, tuple[int, ...], int, int]], int]:
    """(name, wire dtype, shape, offset, count) per array, checked, and the body length they need."""
    if not isinstance(descriptors, list):
        raise ProtocolError(f"{msg_type}: header 'arrays' must be a list")
    out, seen, offset = [], set(), 0
    for d in descriptors:
        if not isinstance(d, dict) or set(d) != {"name", "dtype", "shape"}:
            raise ProtocolError(f"{msg_type}: array descriptor must be {{name, dtype, shape}}, got {d!r}")
        name, wire, shape = d["name"], d["dtype"], d["shape"]
        if not isinstance(name, str) or name in seen:
            raise ProtocolError(f"{msg_type}: array name {name!r} is not a string or is repeated")
        seen.add(name)
        if not isinstance(wire, str) or wire not in WIRE_DTYPES:
            raise ProtocolError(f"{msg_type}: array {name!r} has unknown dtype {wire!r}; allowed {sorted(WIRE_DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in shape):
            raise ProtocolError(f"{msg_type}: array {name!r} shape must be a list of non-negative ints, got {shape!r}")
        count = spread = 1
        for s in shape:
            count *= s
            spread *= max(s, 1)
        # numpy refuses a shape whose non-zero extents overflow, even for an empty array
        if len(shape) > MAX_NDIM or spread > 2**32:
            raise ProtocolError(f"{msg_type}: array {name!r} shape {shape[:8]!r} has over {MAX_NDIM} dimensions "
                                f"or extents beyond any frame")
        nbytes = count * WIRE_DTYPES[wire].itemsize
        if nbytes:
            offset += _pad(offset)
        out.append((name, wire, tuple(shape), offset, count))
        offset += nbytes
    return out, offset


def _decode_parts(header_raw, body) -> Message:
    header = _unpack_header(header_raw)
    msg_type = header.pop("type")
    layout, end = _layout(msg_type, header.pop("arrays", []))
    if end != len(body):
        raise ProtocolError(f"{msg_type}: arrays need {end} body bytes, the frame has {len(body)}")
    arrays, dtypes = {}, {}
    for name, wire, shape, offset, count in layout:
        arrays[name] = np.frombuffer(body, dtype=WIRE_DTYPES[wire], count=count, offset=offset if count else 0
                                     ).reshape(shape)
        dtypes[name] = wire
    return Message(msg_type, header, arrays, dtypes)


def decode(buf, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Decode one complete frame (``bytes``, ``bytearray`` or ``memoryview``).

    Arrays are views of ``buf`` (read-only for ``bytes``). Raises :class:`ProtocolError` for
    any malformed frame, including a truncated one or trailing bytes after it.
    """
    view = memoryview(buf)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    hlen, blen = parse_prefix(view[:PREFIX_SIZE], max_bytes)
    total = PREFIX_SIZE + hlen + blen
    if len(view) < total:
        raise ProtocolError(f"truncated frame: {len(view)} of {total} bytes")
    if len(view) > total:
        raise ProtocolError(f"{len(view) - total} trailing bytes after a {total}-byte frame")
    return _decode_parts(view[PREFIX_SIZE:PREFIX_SIZE + hlen], view[PREFIX_SIZE + hlen:])


# ---------------------------------------------------------------------------------------------
# blocking sockets


def _recv_exact(sock: socket.socket, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            break
        got += n
    return got


def recv_message(
    sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES, body_buffer: bytearray | None = None
) -> Message | None:
    """Read one message from a blocking socket; ``None`` on a clean end of stream.

    The body is received into a fresh ``bytearray`` (arrays are writable views of it), or
    into ``body_buffer`` when given and large enough: then the arrays alias that buffer and
    are overwritten by the next call that uses it. A stream that ends inside a frame raises
    :class:`ProtocolError` (truncated); socket errors and timeouts propagate (``OSError``).
    """
    prefix = bytearray(PREFIX_SIZE)
    got = _recv_exact(sock, memoryview(prefix))
    if got == 0:
        return None
    if got < PREFIX_SIZE:
        raise ProtocolError(f"truncated frame: stream ended after {got} prefix bytes")
    hlen, blen = parse_prefix(prefix, max_bytes)
    header = bytearray(hlen)
    if _recv_exact(sock, memoryview(header)) < hlen:
        raise ProtocolError(f"truncated frame: stream ended inside a {hlen}-byte header")
    if body_buffer is not None and len(body_buffer) >= blen:
        body = memoryview(body_buffer)[:blen]
    else:
        body = memoryview(bytearray(blen))
    if _recv_exact(sock, body) < blen:
        raise ProtocolError(f"truncated frame: stream ended inside a {blen}-byte body")
    msg = _decode_parts(header, body)
    msg.frame_bytes = PREFIX_SIZE + hlen + blen
    return msg


def _sendmsg_all(sock: socket.socket, buffers: list) -> None:
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    if not hasattr(sock, "sendmsg"):  # Windows
        for v in views:
            sock.sendall(v)
        return
    while views:
        sent = sock.sendmsg(views[:512])
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0


def send_message(sock: socket.socket, msg: Message, max_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """Send one message on a blocking socket; returns the frame's size in bytes.

    Small frames (under JOIN_BELOW_BYTES) go out as one buffer; larger ones with ``sendmsg``
    straight from the arrays' memory.
    """
    return send_buffers(sock, msg.buffers(max_bytes))


def send_buffers(sock: socket.socket, buffers: list) -> int:
    """Send an already encoded frame (from :func:`encode_buffers`); returns its size."""
    total = sum(memoryview(b).nbytes for b in buffers)
    if total < JOIN_BELOW_BYTES:
        sock.sendall(b"".join(buffers))
    else:
        _sendmsg_all(sock, buffers)
    return total


# ---------------------------------------------------------------------------------------------
# asyncio streams


async def read_message(reader: asyncio.StreamReader, max_bytes: int = MAX_MESSAGE_BYTES) -> Message | None:
    """Read one message from an asyncio stream; ``None`` on a clean end of stream.

    The stream's limit does not apply (``readexactly`` is used). Arrays are read-only views.
    """
    try:
        prefix = await reader.readexactly(PREFIX_SIZE)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError(f"truncated frame: stream ended after {len(e.partial)} prefix bytes") from None
    hlen, blen = parse_prefix(prefix, max_bytes)
    try:
        header = await reader.readexactly(hlen)
        body = await reader.readexactly(blen) if blen else b""
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(f"truncated frame: stream ended {e.expected - len(e.partial)} bytes early") from None
    return _decode_parts(header, body)


async def write_message(writer: asyncio.StreamWriter, msg: Message, max_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """Write one message to an asyncio stream and drain; returns the frame's size in bytes.

    Large frames are handed to the transport as views of the arrays: do not modify them
    until the drain has returned.
    """
    buffers = msg.buffers(max_bytes)
    total = sum(memoryview(b).nbytes for b in buffers)
    if total < JOIN_BELOW_BYTES:
        writer.write(b"".join(buffers))
    else:
        writer.writelines(buffers)
    await writer.drain()
    return total


# ---------------------------------------------------------------------------------------------
# constructors


_INT32_MIN, _INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)


def _ids(name: str, values, length: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ProtocolError(f"{name} must be a 1-D integer array (got dtype {arr.dtype}, shape {arr.shape})")
    if length is not None and arr.shape[0] != length:
        raise ProtocolError(f"{name} has {arr.shape[0]} entries, expected {length}")
    if arr.dtype == np.int32:
        return arr
    if arr.size and (arr.min() < _INT32_MIN or arr.max() > _INT32_MAX):
        raise ProtocolError(f"{name} does not fit in int32")
    return arr.astype(np.int32)


def _halves(name: str, values, rows: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim < 1 or arr.shape[0] != rows or arr.dtype.kind != "f":
        raise ProtocolError(f"{name} must be a float array with {rows} rows (got dtype {arr.dtype}, shape {arr.shape})")
    return arr.astype(np.float16, copy=False)


def hello(target: dict[str, Any] | None = None, token: str | None = None) -> Message:
    """target -> server: the protocol version, an optional shared token and the target's info
    (plain values: name, device, model, ...)."""
    return Message(HELLO, {"protocol": VERSION, "token": token, "target": dict(target or {})})


def welcome(tag: int, **info: Any) -> Message:
    """server -> target: the tag this target's messages carry from now on (and ``info``:
    ``host_id``, ``features``)."""
    return Message(WELCOME, {"tag": tag, "protocol": VERSION, **info})


def clock(tag: int, seq: int, t_client: float, t_server: float | None = None) -> Message:
    """A clock probe (target -> server, ``t_server`` None) or its answer (server -> target)."""
    header = {"tag": tag, "seq": seq, "t_client": float(t_client)}
    if t_server is not None:
        header["t_server"] = float(t_server)
    return Message(CLOCK, header)


def clock_time(msg: Message, key: str) -> float:
    """A CLOCK's ``t_client`` or ``t_server``, checked: a finite number, no arrays with it."""
    value = msg.header.get(key)
    if msg.arrays or isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ProtocolError(f"CLOCK needs a finite number {key} and no arrays (got {value!r}, "
                            f"{len(msg.arrays)} arrays)")
    return float(value)


def draft_request(tag: int, seq: int, token_ids, hidden=None) -> Message:
    """target -> server: the ``n`` tokens accepted since the last request (int32 [n]) and,
    for EAGLE-type drafts, their hidden states (float16 [n, hidden_size])."""
    ids = _ids("token_ids", token_ids)
    arrays = {"token_ids": ids}
    if hidden is not None:
        h = _halves("hidden", hidden, ids.shape[0])
        if h.ndim != 2:
            raise ProtocolError(f"hidden must be [n, hidden_size], got shape {h.shape}")
        arrays["hidden"] = h
    return Message(DRAFT_REQUEST, {"tag": tag, "seq": seq}, arrays)


def draft_reply(tag: int, seq: int, token_ids, parents, draft_probs=None, prob_nodes=None) -> Message:
    """server -> target: the draft tree of ``T`` nodes: token ids (int32 [T]), the index of each
    node's parent (int32 [T], -1 under the root) and, for speculative sampling, the draft
    distributions the children were sampled from: ``draft_probs`` float16 [R, vocab], one row
    per node in ``prob_nodes`` int32 [R] (-1: the root)."""
    ids = _ids("token_ids", token_ids)
    par = _ids("parents", parents, ids.shape[0])
    if par.size and (par.min() < -1 or par.max() >= par.shape[0]):
        raise ProtocolError("parents must be -1 (root) or the index of another node")
    arrays = {"token_ids": ids, "parents": par}
    if draft_probs is not None:
        if prob_nodes is None:
            raise ProtocolError("draft_probs needs prob_nodes (the node of each row)")
        nodes = _ids("prob_nodes", prob_nodes)
        probs = _halves("draft_probs", draft_probs, nodes.shape[0])
        if probs.ndim != 2:
            raise ProtocolError(f"draft_probs must be [rows, vocab], got shape {probs.shape}")
        if nodes.size and (nodes.min() < -1 or nodes.max() >= ids.shape[0]):
            raise ProtocolError("prob_nodes must be -1 (root) or the index of a node")
        arrays["draft_probs"], arrays["prob_nodes"] = probs, nodes
    return Message(DRAFT_REPLY, {"tag": tag, "seq": seq}, arrays)


def seq_seed(seed: int | None, sid: int) -> int | None:
    """The sampling seed of sequence ``sid`` in a multi-sequence round seeded ``seed`` (None:
    unseeded): both sides can compute it, and sequences of one round draw independent streams."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, sid]).generate_state(1, np.uint64)[0])


def draft_request_seqs(tag: int, seq: int, seqs, token_ids, free=()) -> Message:
    """target -> server, a multi-sequence round: ``seqs`` = ``(sid, n_new, start)`` per sequence,
    ``token_ids`` their new tokens concatenated in that order, ``free`` the sids that ended."""
    entries = [[int(sid), int(n), bool(start)] for sid, n, start in seqs]
    ids = _ids("token_ids", token_ids)
    if sum(n for _, n, _ in entries) != ids.shape[0]:
        raise ProtocolError(f"seqs count {sum(n for _, n, _ in entries)} new tokens, token_ids has {ids.shape[0]}")
    header = {"tag": tag, "seq": seq, "seqs": entries}
    if free:
        header["free"] = [int(sid) for sid in free]
    return Message(DRAFT_REQUEST, header, {"token_ids": ids})


def draft_reply_seqs(tag: int, seq: int, trees) -> Message:
    """server -> target, a multi-sequence round's trees: ``(token_ids, parents, draft_probs,
    prob_nodes)`` per sequence (each as :func:`draft_reply` takes them, probs None when
    greedy), concatenated, with header ``trees`` and, when any has probs, ``prob_rows``."""
    parts = [draft_reply(tag, seq, *t).arrays for t in trees]
    arrays = {name: np.concatenate([a[name] for a in parts]) if parts else np.zeros(0, np.int32)
              for name in ("token_ids", "parents")}
    header = {"tag": tag, "seq": seq, "trees": [int(a["token_ids"].shape[0]) for a in parts]}
    with_probs = [a for a in parts if "draft_probs" in a]
    if with_probs:
        vocab = {a["draft_probs"].shape[1] for a in with_probs}
        if len(vocab) != 1:
            raise ProtocolError(f"draft_probs rows of different widths {sorted(vocab)}")
        width = vocab.pop()
        arrays["draft_probs"] = np.concatenate([a.get("draft_probs", np.zeros((0, width), np.float16))
                                                for a in parts])
        arrays["prob_nodes"] = np.concatenate([a.get("prob_nodes", np.zeros(0, np.int32)) for a in parts])
        header["prob_rows"] = [int(a["prob_nodes"].shape[0]) if "prob_nodes" in a else 0 for a in parts]
    return Message(DRAFT_REPLY, header, arrays)


def reply_trees(msg: Message, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """A multi-sequence DRAFT_REPLY split into its ``n`` trees ``(token_ids, parents,
    draft_probs, prob_nodes)`` (probs None without ``prob_rows``), checked: counts that add up,
    parents and prob nodes local to each tree."""
    sizes, rows = msg.header.get("trees"), msg.header.get("prob_rows")
    ids, par = msg.arrays.get("token_ids"), msg.arrays.get("parents")
    probs, nodes = msg.arrays.get("draft_probs"), msg.arrays.get("prob_nodes")

    def counts(v) -> bool:
        return (isinstance(v, list) and len(v) == n
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))

    if not counts(sizes) or ids is None or par is None or ids.ndim != 1 or par.shape != ids.shape \
            or sum(sizes) != ids.shape[0]:
        raise ProtocolError(f"a multi-sequence DRAFT_REPLY needs trees [{n} node counts] adding up to its "
                            f"token_ids and parents")
    if rows is not None and (not counts(rows) or probs is None or nodes is None or probs.ndim != 2
                             or nodes.ndim != 1 or probs.shape[0] != nodes.shape[0] or sum(rows) != nodes.shape[0]):
        raise ProtocolError(f"a multi-sequence DRAFT_REPLY's prob_rows must be [{n} row counts] adding up to "
                            f"its draft_probs and prob_nodes")
    out, at, row = [], 0, 0
    for i in range(n):
        t_ids, t_par = ids[at:at + sizes[i]], par[at:at + sizes[i]]
        if t_par.size and (t_par.min() < -1 or t_par.max() >= t_par.shape[0]):
            raise ProtocolError(f"tree {i}: parents must be -1 (root) or the index of a node of the same tree")
        t_probs = t_nodes = None
        if rows is not None:
            t_probs, t_nodes = probs[row:row + rows[i]], nodes[row:row + rows[i]]
            if t_nodes.size and (t_nodes.min() < -1 or t_nodes.max() >= t_ids.shape[0]):
                raise ProtocolError(f"tree {i}: prob_nodes must be -1 (root) or the index of a node of the same tree")
            row += rows[i]
        out.append((t_ids, t_par, t_probs, t_nodes))
        at += sizes[i]
    return out


def bye(tag: int | None = None, reason: str = "") -> Message:
    """End of session, either way."""
    return Message(BYE, {"tag": tag, "reason": reason})


def error(reason: str, tag: int | None = None) -> Message:
    """A refusal (bad token, unsupported request); the sender closes the connection after it."""
    return Message(ERROR, {"tag": tag, "reason": reason})


def ping(seq: int, payload: np.ndarray) -> Message:
    """Calibration: a uint8 payload that the peer answers with a small :func:`ack`."""
    return Message(PING, {"seq": seq}, {"payload": np.asarray(payload, dtype=np.uint8)})


def ack(seq: int | None, received_bytes: int) -> Message:
    """Calibration: the answer to a PING (header only)."""
    return Message(ACK, {"seq": seq, "received": received_bytes})


def echo(seq: int, payload: np.ndarray) -> Message:
    """Calibration: a uint8 payload that the peer sends back unchanged."""
    return Message(ECHO, {"seq": seq}, {"payload": np.asarray(payload, dtype=np.uint8)})
