"""Clock alignment between a draft server and its targets: host identity, the CLOCK probes'
offset estimate (Cristian's method) and the worker's use of it, and bad probes."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS, wait_for  # noqa: E402

from starsim.net import parse_address  # noqa: E402
from starsim.real import client as client_mod  # noqa: E402
from starsim.real import protocol as P  # noqa: E402
from starsim.real.client import DraftClient, host_id  # noqa: E402
from starsim.real.server import DraftServer, ServerLimits  # noqa: E402
from starsim.real.speculation import Drafter, speculative_generate, target_generate  # noqa: E402
from starsim.real.worker import TargetWorker  # noqa: E402
from starsim.records import ROUND_COLUMNS  # noqa: E402

SHIFT = 123.456  # the "other host's" clock runs this far ahead of ours
COL = {name: i for i, (name, _) in enumerate(ROUND_COLUMNS)}


@pytest.fixture
def server(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 4, 4, 16), limits=ServerLimits(timeout_s=30)) as s:
        yield s


# ---------------------------------------------------------------------------------------------
# host identity and the CLOCK message


def test_host_id_is_one_per_boot_of_a_host():
    assert host_id() == host_id() and socket.gethostname() in host_id()
    if not Path("/proc/sys/kernel/random/boot_id").is_file():
        pytest.skip("no boot id here: each process counts as its own host")
    other = subprocess.run([sys.executable, "-c", "from starsim.real.client import host_id; print(host_id())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == host_id()  # another process on this host: the same id


def test_clock_message_round_trips_and_is_checked():
    probe = P.decode(P.clock(3, 1, 12.5).encode())
    assert probe.type == P.CLOCK and probe.tag == 3 and probe.seq == 1 and "t_server" not in probe.header
    answer = P.decode(P.clock(3, 1, 12.5, 99.25).encode())
    assert P.clock_time(answer, "t_client") == 12.5 and P.clock_time(answer, "t_server") == 99.25
    for bad in ("noon", None, True, math.nan, math.inf):
        with pytest.raises(P.ProtocolError, match="finite number"):
            P.clock_time(P.Message(P.CLOCK, {"t_client": bad}), "t_client")
    with pytest.raises(P.ProtocolError, match="no arrays"):
        P.clock_time(P.Message(P.CLOCK, {"t_client": 1.0}, {"x": np.zeros(2, np.uint8)}), "t_client")


# ---------------------------------------------------------------------------------------------
# (a) one host


def test_same_host_offset_is_exactly_zero(quick_models, server):
    client = DraftClient(server.address)
    try:
        assert client.same_host and client.server_host_id == host_id() == server.host_id
        assert client.clock_offset_s == 0.0 and client.clock_error_s == 0.0
        w = TargetWorker(0, quick_models[1], client, time.monotonic())
        assert w.clock_offset_s == 0.0 and w.clock_error_s == 0.0
    finally:
        client.close()
    assert TargetWorker(1, quick_models[1], None, 0.0).clock_offset_s is None


# ---------------------------------------------------------------------------------------------
# (b) a server on "another host", its clock SHIFT seconds ahead


def test_other_host_offset_is_estimated_and_rounds_line_up(quick_models, server, monkeypatch):
    tok, target, _ = quick_models
    # the server stamps everything (probes, replies, intervals) through _now
    monkeypatch.setattr(server, "_now", lambda: time.monotonic() + SHIFT)
    monkeypatch.setattr(client_mod, "host_id", lambda: "elsewhere/another-boot")  # the client's view
    client = DraftClient(server.address)
    try:
        assert not client.same_host
        err = client.clock_error_s
        assert 0 < err < 0.005  # loopback: the fastest of 8 probes takes well under 10 ms
        assert abs(client.clock_offset_s - SHIFT) <= err + 1e-9  # Cristian's bound holds
        assert abs(client.clock_offset_s - SHIFT) < 0.005

        clock0 = time.monotonic()
        w = TargetWorker(0, target, client, clock0)
        assert (w.clock_offset_s, w.clock_error_s) == (client.clock_offset_s, client.clock_error_s)
        ids = tok.encode(CODE_PROMPTS[0]).ids
        assert w.run_request(0, ids, 32) == target_generate(target, ids, 32)
    finally:
        client.close()
    assert w.rounds and all(row[COL["draft"]] == 0 for row in w.rounds)
    hops = ["t_send", "t_draft_arrive", "t_draft_start", "t_draft_end", "t_reply_send", "t_target_arrive"]
    for row in w.rounds:
        times = [row[COL[h]] for h in hops]
        assert all(0 <= t < 60 for t in times)  # on our clock, not 123 s ahead
        for (a, ta), (b, tb) in zip(zip(hops, times), zip(hops[1:], times[1:])):
            assert ta <= tb + err + 1e-9, (a, b, ta, tb, err)
    assert not server.rejected


def test_server_without_the_clock_feature_is_assumed_on_our_clock(quick_models, server, monkeypatch):
    monkeypatch.setattr(P, "FEATURES", ())  # a server that predates CLOCK
    monkeypatch.setattr(client_mod, "host_id", lambda: "elsewhere/another-boot")
    client = DraftClient(server.address)
    try:
        assert not client.same_host and client.clock_offset_s == 0.0 and client.clock_error_s is None
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# (c) bad probes close only their connection


def _session(server: DraftServer, frames) -> list[P.Message]:
    """HELLO, then ``frames(tag)``; return the messages that came back until the server closed."""
    with socket.create_connection(parse_address(server.address), timeout=10) as s:
        P.send_message(s, P.hello())
        welcome = P.recv_message(s)
        assert welcome.type == P.WELCOME and "clock" in welcome.header["features"]
        got = []
        try:
            s.sendall(b"".join(frames(welcome.tag)))
            s.shutdown(socket.SHUT_WR)
            while (msg := P.recv_message(s)) is not None:
                got.append(msg)
        except OSError:  # reset by the server on the bad frame: the expected end
            pass
    return got


def _probe(tag, seq=0, **header):
    return P.encode(P.CLOCK, {"tag": tag, "seq": seq, **header})


BAD_PROBES = {
    "text time": lambda tag: [_probe(tag, t_client="noon")],
    "no time": lambda tag: [_probe(tag)],
    "nan time": lambda tag: [_probe(tag, t_client=math.nan)],
    "bool time": lambda tag: [_probe(tag, t_client=True)],
    "with arrays": lambda tag: [P.encode(P.CLOCK, {"tag": tag, "seq": 0, "t_client": 1.0},
                                         {"x": np.zeros(4, np.uint8)})],
    "wrong tag": lambda tag: [_probe(tag + 1000, t_client=1.0)],
    "no seq": lambda tag: [P.encode(P.CLOCK, {"tag": tag, "t_client": 1.0})],
    "after a request": lambda tag: [_start(tag), _probe(tag, t_client=1.0)],
    "too many": lambda tag: [_probe(tag, i, t_client=float(i)) for i in range(P.MAX_CLOCK_PROBES + 1)],
}


def _start(tag):
    req = P.draft_request(tag, 1, [1, 2, 3])
    req.header["start"] = True
    return req.encode()


@pytest.mark.parametrize("case", sorted(BAD_PROBES))
def test_bad_clock_probe_closes_that_connection_only(quick_models, server, case):
    tok, target, _ = quick_models
    client = DraftClient(server.address)  # a good target, connected throughout
    try:
        got = _session(server, BAD_PROBES[case])
        wait_for(lambda: len(server.rejected) == 1)
        assert "CLOCK" in server.rejected[0] or "clock" in server.rejected[0], server.rejected
        if case == "too many":  # every probe within the limit was answered
            assert [m.seq for m in got] == list(range(P.MAX_CLOCK_PROBES))
            assert all(m.type == P.CLOCK and m.header["t_server"] > 0 for m in got)
        elif case == "after a request":
            assert [m.type for m in got] == [P.DRAFT_REPLY]
        else:
            assert got == []
        ids = tok.encode(CODE_PROMPTS[0]).ids
        out, _ = speculative_generate(target, lambda new, start, *_: client.draft(new, start)[0], ids, 16)
        assert out == target_generate(target, ids, 16)
    finally:
        client.close()
    DraftClient(server.address).close()  # and a new target can still connect
    assert len(server.rejected) == 1
