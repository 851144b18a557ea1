"""The fast table builder (struct-packed rows) gives exactly the plain conversion's tables."""

import math

import numpy as np
import pandas as pd
import pytest

from starsim.records import (
    INTERVAL_COLUMNS,
    REQUEST_COLUMNS,
    ROUND_COLUMNS,
    Recorder,
    RequestRow,
    RoundWriter,
    _columns,
    _columns_packed,
    _frame,
)

nan = math.nan


def _plain(rows, columns):
    return pd.DataFrame(_columns(rows, columns), columns=[c for c, _ in columns])


def _check(rows, columns):
    fast, plain = _frame(rows, columns), _plain(rows, columns)
    pd.testing.assert_frame_equal(fast, plain, check_exact=True)
    for c in plain.columns:
        a, b = fast[c].to_numpy(), plain[c].to_numpy()
        if a.dtype.kind == "f":  # bit for bit, NaNs included
            assert (a.view(np.int64) == b.view(np.int64)).all(), c


def test_rounds_and_requests():
    rng = np.random.default_rng(0)
    rounds = [
        (i % 3, i, i // 3, -1 if i % 5 == 0 else 0, *rng.random(8).tolist(), *([nan] * (i % 2)),
         *rng.random(1 - i % 2).tolist(), 2**40 + i, 0, 59, 5, i % 6, 1 + i % 6, 64 + 8196 * i, 2000, 131072 * i)
        for i in range(500)
    ]
    _check(rounds, ROUND_COLUMNS)
    _columns_packed(rounds, ROUND_COLUMNS)  # the fast path took them (no fallback)
    requests = [(i, i % 4 - 1, 90, 400, 12, 0.5 * i, nan, 0.1 * i, nan) for i in range(50)]
    _check(requests, REQUEST_COLUMNS)


def test_intervals_strings():
    names = ["draft", "target-0", "target-1"]
    rows = [(names[i % 3], f"gpu[{i % 2}]", "verify" if i % 2 else "draft", i % 4, 0.1 * i, 0.1 * i + 0.05)
            for i in range(300)]
    rows.append(("draft", None, "draft", 0, 1.0, nan))
    _check(rows, INTERVAL_COLUMNS)
    _columns_packed(rows, INTERVAL_COLUMNS)


@pytest.mark.parametrize(
    "row",
    [
        ("draft", "gpu[0]", "draft", 1.0, 0.0, 1.0),  # float in an int column: numpy's cast
        ("draft", "gpu[0]", "draft", np.int64(3), np.float32(0.25), 1),  # numpy scalars, int in a float column
        ("draft", "gpu[0]", "draft", True, 0.0, 1.0),
    ],
)
def test_other_values_convert_as_before(row):
    _check([row, ("draft", "gpu[1]", "verify", 2, 0.5, 0.75)], INTERVAL_COLUMNS)


def test_empty():
    for cols in (ROUND_COLUMNS, REQUEST_COLUMNS, INTERVAL_COLUMNS):
        _check([], cols)


ROUND_FIELDS = [name for name, _ in ROUND_COLUMNS]


def _write(writer: RoundWriter, row: tuple) -> None:
    """``row`` (a full rounds-table tuple) through the writer, every field by name."""
    f = dict(zip(ROUND_FIELDS, row))
    assert (f["target"], f["request"], f["round"]) == (writer.target, writer.request, writer.next_round)
    if f["draft"] < 0:
        writer.decode(t_verify_start=f["t_verify_start"], t_verify_end=f["t_verify_end"],
                      context_tokens=f["context_tokens"])
        return
    writer.tree(**{k: f[k] for k in ("tree_tokens", "depth", "bytes_down")}, draft=f["draft"])
    skip = {"target", "request", "round", "draft", "tree_tokens", "depth", "bytes_down"}
    writer.round(**{k: v for k, v in f.items() if k not in skip})


def _rounds(rng) -> list[tuple]:
    rows = []
    for i in range(200):
        req, r = divmod(i, 10)
        if i % 7 == 3:  # a decode step: no draft, NaN hops, one token
            rows.append((req % 3, req, r, -1, *[nan] * 7, 0.5 * i, 0.5 * i + 0.1, 100 + i, 0, 0, 0, 0, 1, 0, 0, 0))
        else:
            rows.append((req % 3, req, r, i % 2, *rng.random(8).tolist(), nan, 100 + i, 3, 59, 5, 2, 3, 8260,
                         2000 + i, 131072 * i))
    return rows


def test_packed_rows_give_the_same_tables():
    """Rows written by keyword (packed for the simulator, tuples for the real backend) give
    the table of the same rows appended as plain tuples, bit for bit; a round writer adds
    each round's device interval (verify, or decode for a plain step) with its row."""
    rng = np.random.default_rng(2)
    rounds = _rounds(rng)
    prefills = [(f"target-{i % 3}", f"gpu[{i % 3}]", "prefill", i % 3, 0.1 * i, 0.2 * i) for i in range(20)]
    device = {t: f"gpu[{t}]" for t in range(3)}
    plain, packed, tuples = Recorder(), Recorder(), Recorder()
    plain.rounds.extend(rounds)
    plain.intervals.extend(prefills)
    plain.intervals.extend((f"target-{r[0]}", device[r[0]], "decode" if r[3] < 0 else "verify", r[0], r[11], r[12])
                           for r in rounds)
    for rec, is_packed in ((packed, True), (tuples, False)):
        for engine, dev, kind, target, start, end in prefills:
            rec.interval_writer(engine=engine, device=dev, kind=kind, packed=is_packed)(
                target=target, start=start, end=end)
        writer = None
        for row in rounds:
            if writer is None or writer.request != row[1]:
                writer = RoundWriter(rec, target=row[0], request=row[1], engine=f"target-{row[0]}",
                                     device=device[row[0]], packed=is_packed)
            _write(writer, row)
    assert tuples.rounds == rounds and tuples.intervals == plain.intervals
    a, b = plain.finish({}), packed.finish({})
    for name in ("rounds", "requests", "intervals"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    packed.rounds.append(rounds[0])
    with pytest.raises(ValueError, match="both"):
        packed.finish({})


def test_request_row_by_name():
    req = RequestRow(request=4, target=1, prompt_tokens=90, output_tokens=400, t_arrival=0.5, t_start=0.75)
    assert req.row()[:6] == (4, 1, 90, 400, 0, 0.5) and math.isnan(req.row()[-1])
    req.generated_tokens, req.t_first_token, req.t_finish = 400, 1.0, 9.0
    assert req.row() == (4, 1, 90, 400, 400, 0.5, 0.75, 1.0, 9.0)
    assert len(req.row()) == len(REQUEST_COLUMNS)
    assert RequestRow.__slots__ == tuple(name for name, _ in REQUEST_COLUMNS)
