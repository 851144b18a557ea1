"""What a target's HELLO and DRAFT_REQUESTs must hold, checked by the draft server: each
function returns the value it checked or raises :class:`~starsim.real.protocol.ProtocolError`
naming it (the server then closes that connection only)."""

from __future__ import annotations

import math

import numpy as np

from . import protocol as P


def weight(info) -> float:
    """A target's weight for the wfq policy, from its HELLO's ``target`` info (default 1)."""
    w = (info or {}).get("weight", 1.0) if isinstance(info, dict) else 1.0
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1e6 or w != w:
        raise P.ProtocolError(f"weight must be a number in (0, 1e6), got {w!r}")
    return float(w)


def token_ids(msg, vocab_size: int) -> list[int]:
    """A DRAFT_REQUEST's ``token_ids``: non-empty, 1-d, integers in the vocabulary."""
    ids = msg.arrays.get("token_ids")
    if ids is None or ids.ndim != 1 or ids.size == 0 or msg.dtypes.get("token_ids") not in ("int32", "int64"):
        raise P.ProtocolError("DRAFT_REQUEST needs a non-empty 1-d int32 token_ids")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise P.ProtocolError(f"token ids outside the vocabulary (0..{vocab_size - 1})")
    return ids.tolist()


def hidden(msg, n: int, width: int) -> np.ndarray:
    """A DRAFT_REQUEST's ``hidden`` for an EAGLE draft: float16 [``n`` tokens, ``width``]."""
    h = msg.arrays.get("hidden")
    if h is None or msg.dtypes.get("hidden") != "float16" or h.shape != (n, width):
        raise P.ProtocolError(f"this draft needs hidden float16 [{n}, {width}] with each DRAFT_REQUEST")
    return h


def sampling(header: dict) -> tuple[float, int | None]:
    """A DRAFT_REQUEST's ``temperature`` (0: greedy) and ``seed``."""
    t, seed = header.get("temperature", 0.0), header.get("seed")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1e3:
        raise P.ProtocolError(f"temperature must be a number in [0, 1000], got {t!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise P.ProtocolError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return float(t), seed


def depth(header: dict, most: int) -> int | None:
    """A DRAFT_REQUEST's ``depth`` (adaptive speculation: a tree 1..``most`` deep; None: the full tree)."""
    d = header.get("depth")
    if d is None:
        return None
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= most:
        raise P.ProtocolError(f"depth must be an integer in 1..{most}, got {d!r}")
    return d


def deadline_in(header: dict) -> float:
    """Seconds from now until the target's next token is due (``deadline_in_s``; inf: none)."""
    d = header.get("deadline_in_s")
    if d is None:
        return math.inf
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not -1e6 < d < 1e6:
        raise P.ProtocolError(f"deadline_in_s must be a number of seconds, got {d!r}")
    return float(d)


def _sid(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < P.MAX_SID


def seqs(msg, vocab_size: int) -> tuple[list[tuple[int, bool, list[int]]], list[int]]:
    """A multi-sequence DRAFT_REQUEST's sequences, ``(sid, start, new token ids)`` in order, and
    the sids it frees: at most MAX_SEQS of each, unique sids, ``n_new`` >= 1 each, new tokens
    that add up to ``token_ids`` (see :mod:`starsim.real.protocol`)."""
    entries, free = msg.header.get("seqs"), msg.header.get("free", [])
    if not isinstance(entries, list) or len(entries) > P.MAX_SEQS:
        raise P.ProtocolError(f"seqs must be a list of at most {P.MAX_SEQS} [sid, n_new, start] entries")
    if not isinstance(free, list) or len(free) > P.MAX_SEQS or not all(map(_sid, free)) or len(set(free)) < len(free):
        raise P.ProtocolError(f"free must be a list of at most {P.MAX_SEQS} distinct sids (ints in [0, 2**63))")
    if not entries and not free:
        raise P.ProtocolError("a multi-sequence DRAFT_REQUEST needs a sequence to draft or one to free")
    for e in entries:
        if not (isinstance(e, list) and len(e) == 3 and _sid(e[0]) and isinstance(e[1], int)
                and not isinstance(e[1], bool) and e[1] >= 1 and isinstance(e[2], bool)):
            raise P.ProtocolError(f"each of seqs must be [sid in [0, 2**63), n_new >= 1, start bool], got {e!r}"[:200])
    if len({e[0] for e in entries}) < len(entries):
        raise P.ProtocolError("seqs repeats a sid")
    total = sum(e[1] for e in entries)
    if total:
        ids = token_ids(msg, vocab_size)
    else:
        arr = msg.arrays.get("token_ids")
        ids = [] if arr is None else arr.reshape(-1).tolist()
    if len(ids) != total:
        raise P.ProtocolError(f"seqs count {total} new tokens, token_ids has {len(ids)}")
    out, at = [], 0
    for sid, n, start in entries:
        out.append((sid, start, ids[at:at + n]))
        at += n
    return out, free
