"""The record schema every predictor writes: ``rounds``, ``requests``, ``intervals``.

The simulator and the real backend both fill a :class:`Recorder` and get :class:`Records`;
:mod:`starsim.metrics` derives every number from these tables and nothing else. Times are
seconds on the run's clock (0 = start); a hop that did not happen (e.g. no draft in
autoregressive mode) is NaN.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from itertools import starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROUND_COLUMNS: tuple[tuple[str, str], ...] = (
    ("target", "int64"),          # target index (0..N-1)
    ("request", "int64"),         # request id, unique in the run
    ("round", "int64"),           # round index within the request
    ("draft", "int64"),           # draft engine index that served it (-1: none)
    ("t_send", "float64"),        # target sends accepted tokens (and hidden states)
    ("t_draft_arrive", "float64"),  # message arrives at the draft server
    ("t_enqueue", "float64"),     # parsed, task queued for the engine
    ("t_draft_start", "float64"),
    ("t_draft_end", "float64"),
    ("t_reply_send", "float64"),  # tree serialized, on the wire
    ("t_target_arrive", "float64"),
    ("t_verify_start", "float64"),
    ("t_verify_end", "float64"),  # tokens of this round are emitted here
    ("context_tokens", "int64"),  # context length when the round starts
    ("new_tokens", "int64"),      # tokens the draft encoded into its KV cache this round
    ("tree_tokens", "int64"),
    ("depth", "int64"),
    ("accepted", "int64"),        # draft tokens accepted (bonus not included)
    ("emitted", "int64"),         # tokens this round added to the output (accepted + 1, capped)
    ("bytes_up", "int64"),
    ("bytes_down", "int64"),
    ("draft_kv_bytes", "int64"),  # this tag's draft KV bytes after the round's encode
)

REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("request", "int64"),
    ("target", "int64"),          # -1: never started (open loop, still queued at the end)
    ("prompt_tokens", "int64"),
    ("output_tokens", "int64"),   # tokens the request asks for
    ("generated_tokens", "int64"),  # tokens produced (== output_tokens when finished)
    ("t_arrival", "float64"),
    ("t_start", "float64"),       # a target takes it (prefill starts)
    ("t_first_token", "float64"),
    ("t_finish", "float64"),      # NaN: unfinished when the run ended
)

INTERVAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("engine", "str"),            # "draft", "draft-3", "target-3", ...
    ("device", "str"),            # device unit, e.g. "gpu[0]"
    ("kind", "str"),              # draft | verify | prefill | decode
    ("target", "int64"),          # whom the work was for
    ("start", "float64"),
    ("end", "float64"),
)

# Serving targets (targets.*.serving) only: one row per engine step of a target.
STEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("target", "int64"),
    ("step", "int64"),            # step index within the target
    ("t_start", "float64"),       # the forward starts (after its draft request came back)
    ("t_end", "float64"),
    ("running", "int64"),         # sequences in the forward (vLLM: num_running_reqs)
    ("waiting", "int64"),         # requests left queued when it was scheduled (vLLM: num_waiting_reqs)
    ("prefill_seqs", "int64"),    # sequences with a prefill chunk in the step
    ("prefill_tokens", "int64"),
    ("decode_seqs", "int64"),     # sequences verifying a tree (or decoding a token)
    ("step_tokens", "int64"),     # every token in the forward (the step's token budget counts these)
    ("kv_tokens", "int64"),       # KV slots in use at the step's peak
    ("kv_capacity", "int64"),     # the target's KV capacity in tokens (-1: unlimited)
    ("preempted", "int64"),       # sequences preempted (to recompute) to make room for this step
    ("trees", "int64"),           # decoding sequences that verified a draft tree (0: each decoded a token)
    ("accepted", "int64"),        # draft tokens accepted over its trees (bonus not included)
    ("emitted", "int64"),         # tokens its rounds added (a new request's first token not included)
    ("rounds", "int64"),          # its rows of the rounds table: decoding sequences, recomputed requests' tokens
)

TABLES = {"rounds": ROUND_COLUMNS, "requests": REQUEST_COLUMNS, "intervals": INTERVAL_COLUMNS}
OPTIONAL_TABLES = {"steps": STEP_COLUMNS}


def _frame(rows: list[tuple], columns: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    names = [c for c, _ in columns]
    try:
        data = _columns_packed(rows, columns)
    except (struct.error, TypeError, OverflowError):  # a value struct will not take as is
        data = _columns(rows, columns)
    return pd.DataFrame(data, columns=names)


_STRUCT_CODES = {"int64": "q", "float64": "d"}


def _columns_packed(rows: list[tuple], columns: tuple[tuple[str, str], ...]) -> dict:
    """The columns of ``rows``, fast: ``struct`` packs the numbers of each row to bytes in C
    (exactly: 8-byte ints and IEEE doubles, no per-value numpy conversion), and the bytes
    are read as one record array; string columns are picked out by index (zip(*rows) costs
    more than all the rest). Raises ``struct.error``/``TypeError`` on any value that is not
    already an int or a float."""
    if not rows or any(d not in _STRUCT_CODES for _, d in columns if d != "str"):
        return _columns(rows, columns)
    num = [i for i, (_, d) in enumerate(columns) if d != "str"]
    packer = struct.Struct("=" + "".join(_STRUCT_CODES[columns[i][1]] for i in num))
    if len(num) == len(columns):
        numbers = rows
    elif len(num) == 1:
        numbers = ((r[num[0]],) for r in rows)
    else:
        numbers = map(itemgetter(*num), rows)
    table = np.frombuffer(b"".join(starmap(packer.pack, numbers)), dtype=[columns[i] for i in num])
    data = {}
    for i, (name, dtype) in enumerate(columns):
        data[name] = _strings(list(map(itemgetter(i), rows))) if dtype == "str" else table[name]
    return data


def _columns(rows: list[tuple], columns: tuple[tuple[str, str], ...]) -> dict:
    """The columns of ``rows``, with numpy's and pandas' conversions of any value."""
    if rows:
        cols = list(zip(*rows))
    else:
        cols = [[] for _ in columns]
    data = {}
    for (name, dtype), values in zip(columns, cols):
        if dtype == "str":
            data[name] = _strings(values) if values else pd.Series([], dtype=str)
        else:
            data[name] = np.asarray(values, dtype=dtype)
    return data


def _strings(values: list) -> pd.Series:
    return pd.Series(values, dtype=object).astype(str)  # the one conversion of string columns


# Packed rows (see Recorder): a round is its 22 numbers; an interval is the code of its
# (engine, device, kind) key, then target, start, end. Only the row builders below call
# these (by position, next to the column lists they follow).
ROUND_STRUCT = struct.Struct("=" + "".join(_STRUCT_CODES[d] for _, d in ROUND_COLUMNS))
INTERVAL_STRUCT = struct.Struct("=qqdd")
_pack_round, _pack_interval = ROUND_STRUCT.pack, INTERVAL_STRUCT.pack
NAN = math.nan


def _as_tuple(*values):
    return values


def _nothing(_row) -> None:
    return None


def _interval_tuple(key: tuple[str, str, str], target: int, start: float, end: float) -> tuple:
    engine, device, kind = key
    return interval_row(engine=engine, device=device, kind=kind, target=target, start=start, end=end)


class RoundWriter:
    """One request's rows of the rounds table, each built by keyword, and with each row the
    interval its target's device spent on it (``verify`` for a speculative round, ``decode``
    for a plain step: the row's ``t_verify_start`` to ``t_verify_end``), so that a round and
    its device time are written in one place for both backends.

    What holds for many rounds is set once, by keyword: the target, the request and the
    target's engine and device names here, the tree's fields with :meth:`tree` whenever they
    change (the draft engine, tree tokens and depth, reply bytes). Each round then gives the
    rest by keyword to :meth:`round` (a speculative round) or :meth:`decode` (one token, no
    draft: its hops are NaN). The round index counts up from ``first_round``. ``packed``:
    rows go into the recorder's byte buffers (the simulator), else as tuples (the real
    backend, whose rows cross a process boundary as they are).

    Why the split: CPython compiles a call with more than 15 keyword arguments into building a
    dict (about 1 us for a whole row, a tenth of a simulated round); up to 15 stay on its fast
    call path, so the hot loop names every field at no measurable cost."""

    __slots__ = ("_put", "_make", "_put_interval", "_make_interval", "_verify", "_decode", "target", "request",
                 "next_round", "draft", "tree_tokens", "depth", "bytes_down")

    def __init__(self, rec: Recorder, *, target: int, request: int, engine: str, device: str, packed: bool = True,
                 first_round: int = 0, intervals: bool = True):
        """``intervals`` False: rows only (a serving target's step writes one interval for all
        its sequences)."""
        if packed:
            self._put, self._make = rec.packed_rounds.extend, _pack_round
            self._put_interval, self._make_interval = rec.packed_intervals.extend, _pack_interval
            self._verify, self._decode = rec.interval_key(engine, device, "verify"), rec.interval_key(engine, device,
                                                                                                      "decode")
        else:
            self._put, self._make = rec.rounds.append, _as_tuple
            self._put_interval, self._make_interval = rec.intervals.append, _interval_tuple
            self._verify, self._decode = (engine, device, "verify"), (engine, device, "decode")
        if not intervals:
            self._put_interval = _nothing
        self.target, self.request, self.next_round = target, request, first_round
        self.draft, self.tree_tokens, self.depth, self.bytes_down = -1, 0, 0, 0

    def tree(self, *, draft: int, tree_tokens: int, depth: int, bytes_down: int) -> None:
        """The draft engine and tree of the rounds that follow."""
        self.draft, self.tree_tokens, self.depth, self.bytes_down = draft, tree_tokens, depth, bytes_down

    def round(self, *, t_send: float, t_draft_arrive: float, t_enqueue: float, t_draft_start: float,
              t_draft_end: float, t_reply_send: float, t_target_arrive: float, t_verify_start: float,
              t_verify_end: float, context_tokens: int, new_tokens: int, accepted: int, emitted: int,
              bytes_up: int, draft_kv_bytes: int) -> None:
        """A speculative round (its tree: the last :meth:`tree`) and its verify interval.
        Fifteen parameters: one per column, by keyword (see the class docstring for why not more)."""
        r = self.next_round
        self.next_round = r + 1
        self._put_interval(self._make_interval(self._verify, self.target, t_verify_start, t_verify_end))
        self._put(self._make(self.target, self.request, r, self.draft, t_send, t_draft_arrive, t_enqueue,
                             t_draft_start, t_draft_end, t_reply_send, t_target_arrive, t_verify_start, t_verify_end,
                             context_tokens, new_tokens, self.tree_tokens, self.depth, accepted, emitted, bytes_up,
                             self.bytes_down, draft_kv_bytes))

    def decode(self, *, t_verify_start: float, t_verify_end: float, context_tokens: int) -> None:
        """One token without speculation (no draft engine, no hops, one emitted token) and its
        decode interval."""
        r = self.next_round
        self.next_round = r + 1
        self._put_interval(self._make_interval(self._decode, self.target, t_verify_start, t_verify_end))
        self._put(self._make(self.target, self.request, r, -1, NAN, NAN, NAN, NAN, NAN, NAN, NAN, t_verify_start,
                             t_verify_end, context_tokens, 0, 0, 0, 0, 1, 0, 0, 0))


class RequestRow:
    """A request's row of the requests table, filled in by name while it runs; :meth:`row`
    is the finished tuple (``t_finish`` NaN: unfinished)."""

    __slots__ = tuple(name for name, _ in REQUEST_COLUMNS)

    def __init__(self, *, request: int, target: int, prompt_tokens: int, output_tokens: int, t_arrival: float,
                 generated_tokens: int = 0, t_start: float = NAN, t_first_token: float = NAN,
                 t_finish: float = NAN):
        self.request, self.target, self.t_arrival = request, target, t_arrival
        self.prompt_tokens, self.output_tokens, self.generated_tokens = prompt_tokens, output_tokens, generated_tokens
        self.t_start, self.t_first_token, self.t_finish = t_start, t_first_token, t_finish

    def row(self) -> tuple:
        return (self.request, self.target, self.prompt_tokens, self.output_tokens, self.generated_tokens,
                self.t_arrival, self.t_start, self.t_first_token, self.t_finish)


def interval_row(*, engine: str, device: str, kind: str, target: int, start: float, end: float) -> tuple:
    """A row of the intervals table, as a tuple (for :attr:`Recorder.intervals`)."""
    return (engine, device, kind, target, start, end)


class Recorder:
    """Row buffers for the three tables, turned into DataFrames once by :meth:`finish`.

    Rows are built by keyword: rounds with a :class:`RoundWriter`, requests with
    :class:`RequestRow`, intervals with :func:`interval_row` (tuples) or
    :meth:`interval_writer`. Rounds and intervals may go packed instead of as tuples, into
    one growing byte buffer per table, which keeps no Python object per row alive during the
    run (memory grows by the row's bytes, 176 for a round) and needs no conversion at the
    end: a ``RoundWriter(packed=True)`` (which also writes each round's verify or decode
    interval), an ``interval_writer(packed=True)``.
    Numbers must then be ints for int columns (struct does not cast floats). A table takes
    its rows one way or the other."""

    def __init__(self) -> None:
        self.rounds: list[tuple] = []
        self.requests: list[tuple] = []
        self.intervals: list[tuple] = []
        self.steps: list[tuple] | None = None  # serving targets' steps (None: the run has none)
        self.packed_rounds = bytearray()
        self.packed_intervals = bytearray()
        self._keys: dict[tuple[str, str, str], int] = {}

    def interval_key(self, engine: str, device: str, kind: str) -> int:
        """The code of ``(engine, device, kind)`` in the packed intervals."""
        return self._keys.setdefault((engine, device, kind), len(self._keys))

    def interval_writer(self, *, engine: str, device: str, kind: str, packed: bool = True):
        """``write(target=, start=, end=)``: adds an interval of ``kind`` on ``engine`` and
        ``device`` (packed, or as a tuple)."""
        if not packed:
            append = self.intervals.append

            def write(*, target: int, start: float, end: float) -> None:
                append(interval_row(engine=engine, device=device, kind=kind, target=target, start=start, end=end))
            return write
        key, put, pack = self.interval_key(engine, device, kind), self.packed_intervals.extend, _pack_interval

        def write_packed(*, target: int, start: float, end: float) -> None:
            put(pack(key, target, start, end))
        return write_packed

    def finish(self, meta: dict[str, Any], release: bool = False) -> Records:
        """The three tables. ``release``: drop the row buffers as each table is built (the
        recorder is done), so a run's peak memory holds a table and its buffer only once."""
        rounds = self._rounds()
        if release:
            self.packed_rounds, self.rounds = bytearray(), []
        intervals = self._intervals()
        if release:
            self.packed_intervals, self.intervals = bytearray(), []
        steps = None if self.steps is None else _frame(self.steps, STEP_COLUMNS)
        return Records(rounds=rounds, requests=_frame(sorted(self.requests), REQUEST_COLUMNS),
                       intervals=intervals, meta=meta, steps=steps)

    def _rounds(self) -> pd.DataFrame:
        if not self.packed_rounds:
            return _frame(self.rounds, ROUND_COLUMNS)
        _one_way("rounds", self.rounds)
        table = np.frombuffer(self.packed_rounds, dtype=list(ROUND_COLUMNS))
        # each column copied out of the buffer (contiguous), so the frame holds no view of it
        return pd.DataFrame({n: np.ascontiguousarray(table[n]) for n, _ in ROUND_COLUMNS}, copy=False)

    def _intervals(self) -> pd.DataFrame:
        if not self.packed_intervals:
            return _frame(self.intervals, INTERVAL_COLUMNS)
        _one_way("intervals", self.intervals)
        dtype = [("key", "int64"), ("target", "int64"), ("start", "float64"), ("end", "float64")]
        table = np.frombuffer(self.packed_intervals, dtype=dtype)
        keys = list(self._keys)
        data = {}
        for j, name in enumerate(("engine", "device", "kind")):
            # each key's string converted as a whole column would be, then repeated by code
            data[name] = pd.Series(_strings([k[j] for k in keys]).array.take(table["key"]))
        for name in ("target", "start", "end"):
            data[name] = np.ascontiguousarray(table[name])
        return pd.DataFrame(data, columns=[c for c, _ in INTERVAL_COLUMNS])


def _one_way(table: str, rows: list) -> None:
    if rows:
        raise ValueError(f"{table}: rows appended both as tuples and packed")


@dataclass
class Records:
    """The three tables plus the run's metadata (clock end, window settings, engines, targets).

    ``meta`` keys: ``source`` (sim | real), ``mode``, ``t_end``, ``warmup_s``, ``cooldown_s``,
    ``window_s``, ``draft_engines`` (engine names), ``targets`` (list of
    ``{"index", "name", "device"}``).
    """

    rounds: pd.DataFrame
    requests: pd.DataFrame
    intervals: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    steps: pd.DataFrame | None = None  # serving targets only (STEP_COLUMNS)

    def write(self, out: Path, csv: bool = False) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in (*TABLES, *OPTIONAL_TABLES):
            df = getattr(self, name)
            if df is None:
                continue
            p = out / (f"{name}.csv" if csv else f"{name}.parquet")
            if csv:
                df.to_csv(p, index=False)
            else:
                df.to_parquet(p, index=False)
            written.append(p)
        p = out / "meta.json"
        p.write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        written.append(p)
        return written

    @classmethod
    def read(cls, run_dir: Path) -> Records:
        run_dir = Path(run_dir)
        tables = {}
        for name in TABLES:
            pq, csv = run_dir / f"{name}.parquet", run_dir / f"{name}.csv"
            tables[name] = pd.read_parquet(pq) if pq.exists() else pd.read_csv(csv)
        for name in OPTIONAL_TABLES:
            pq, csv = run_dir / f"{name}.parquet", run_dir / f"{name}.csv"
            if pq.exists() or csv.exists():
                tables[name] = pd.read_parquet(pq) if pq.exists() else pd.read_csv(csv)
        meta = json.loads((run_dir / "meta.json").read_text())
        return cls(meta=meta, **tables)
