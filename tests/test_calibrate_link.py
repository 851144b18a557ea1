"""`starsim calibrate link`: a tiny loopback measurement (shape of the result, not its timings)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import yaml

from starsim.calibrate import link
from starsim.errors import StarsimError
from starsim.net import parse_address
from starsim.real import protocol as P
from starsim.scenario import Link

TINY = dict(sizes=[64, 4096, 262144], repeats=3, rtt_repeats=20, serialization_repeats=5, hidden_size=64,
            new_tokens=(1, 4), tree_tokens=(16, 32))


@pytest.fixture
def no_leaks():
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left running: {left}"


def _check(result: dict, peer_kind: str) -> None:
    assert result["kind"] == "link_profile"
    prov = result["provenance"]
    for key in ("hostname", "platform", "python", "starsim", "date_utc", "peer", "peer_kind", "protocol_version"):
        assert prov[key], key
    assert prov["peer_kind"].startswith(peer_kind)
    assert result["parameters"]["sizes"] == TINY["sizes"]
    rtt = result["rtt"]
    assert rtt["repeats"] == 20 and 0 < rtt["p10_s"] <= rtt["median_s"] <= rtt["p90_s"]
    rows = result["transfer"]["rows"]
    assert [r["payload_bytes"] for r in rows] == TINY["sizes"]
    assert all(r["repeats"] == 3 and r["median_s"] > 0 and r["bytes"] > r["payload_bytes"] for r in rows)
    fit = result["transfer"]["fit"]
    assert fit["bandwidth_bps"] > 0 and fit["rtt_s"] >= 0 and fit["mape"] >= 0 and fit["points"] == 3
    lk = result["link"]
    assert lk["latency_s"] > 0 and lk["bandwidth_bps"] > 0
    serial = result["serialization"]["rows"]
    kinds = [(r["message"], r["new_tokens"], r["hidden_size"], r["tree_tokens"]) for r in serial]
    assert kinds == [
        (P.DRAFT_REQUEST, 1, 0, None), (P.DRAFT_REQUEST, 1, 64, None),
        (P.DRAFT_REQUEST, 4, 0, None), (P.DRAFT_REQUEST, 4, 64, None),
        (P.DRAFT_REPLY, None, 0, 16), (P.DRAFT_REPLY, None, 0, 32),
    ]
    for r in serial:
        assert r["bytes"] == r["array_bytes"] + r["overhead_bytes"] and r["array_bytes"] > 0
        assert r["encode_median_s"] > 0 and r["decode_median_s"] > 0
    req = next(r for r in serial if r["new_tokens"] == 4 and r["hidden_size"] == 64)
    assert req["array_bytes"] == 4 * 4 + 4 * 64 * 2  # int32 ids + float16 hidden states
    assert result["typical"]["draft_request"] == req
    assert result["typical"]["draft_reply"]["tree_tokens"] == 32  # nearest to 64


def test_measure_loopback_thread(no_leaks, tmp_path):
    result = link.measure(loopback="thread", **TINY)
    _check(result, "loopback")

    path = link.write_link_profile(result, tmp_path / "profiles" / link.default_profile_name(result))
    assert path.name.endswith("-loopback.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["transfer"]["fit"] == result["transfer"]["fit"] and saved["rtt"] == result["rtt"]

    snippet = link.suggest_link_yaml(result)
    parsed = yaml.safe_load(snippet)
    assert set(parsed) == {"link", "parse_time", "serialize_time"}
    assert isinstance(parsed["parse_time"], float) and isinstance(parsed["serialize_time"], float)
    checked = Link.model_validate(parsed["link"])  # the scenario accepts it as written
    assert checked.up.latency_s > 0 and checked.down.bandwidth_bps > 0


def test_measure_loopback_process(no_leaks):
    result = link.measure(**TINY)  # the default: a peer in a child process
    _check(result, "loopback, separate process")


def test_measure_against_a_running_peer(no_leaks):
    with link.LinkServer("127.0.0.1:0") as server:
        result = link.measure(peer=server.address, **TINY)
    _check(result, "remote")
    assert result["provenance"]["peer"] == server.address


def test_serve_until_stopped(no_leaks):
    stop, ready = threading.Event(), []
    t = threading.Thread(target=link.serve, kwargs={"ready": ready.append, "stop": stop})
    t.start()
    try:
        while not ready:
            assert t.is_alive(), "serve() ended before it was ready"
            t.join(0.01)
        host, port = parse_address(ready[0])
        with socket.create_connection((host, port), timeout=5) as sock:
            payload = np.arange(50, dtype=np.uint8)
            P.send_message(sock, P.echo(4, payload))
            back = P.recv_message(sock)
            assert back.type == P.ECHO and back.seq == 4
            np.testing.assert_array_equal(back.arrays["payload"], payload)
            P.send_message(sock, P.ping(5, payload))
            assert P.recv_message(sock).header == {"seq": 5, "tag": None, "received": 50}
            # garbage gets an ERROR and the connection is closed; other connections go on
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            err = P.recv_message(sock)
            assert err.type == P.ERROR and "bad magic" in err.header["reason"]
            assert P.recv_message(sock) is None
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()


def test_bad_peer_and_arguments(no_leaks):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StarsimError, match="cannot connect"):
        link.measure(peer=f"127.0.0.1:{port}", **TINY)
    with pytest.raises(StarsimError, match="two distinct"):
        link.measure(loopback="thread", **{**TINY, "sizes": [64]})
    with pytest.raises(StarsimError, match="loopback"):
        link.measure(loopback="fork", **TINY)
    with pytest.raises(StarsimError, match="HOST:PORT"):
        parse_address("localhost:http")
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("7000") == ("127.0.0.1", 7000)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)


def test_cli_link_quick(tmp_path, capsys, no_leaks):
    from starsim.cli import main

    assert main(["calibrate", "link", "--quick", "--hidden-size", "64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RTT (small message, 100 round trips): median" in out and "bandwidth (fit of time by size)" in out
    assert "DRAFT_REQUEST" in out and "DRAFT_REPLY" in out and "parse_time:" in out and "serialize_time:" in out
    (path,) = tmp_path.glob("link-*-loopback.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["parameters"]["hidden_size"] == 64 and saved["rtt"]["repeats"] == 100


def test_cli_link_unreachable_peer(capsys):
    from starsim.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["calibrate", "link", "--quick", "--connect", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot connect to link peer") and "\n" not in err


def test_stack_measures_both_sides(tmp_path, capsys):
    """`calibrate stack`: a real server process and client; each side's CPU per round is
    positive and below the round trip, and the file holds the scenario fields."""
    from starsim.calibrate import stack
    from starsim.cli import main

    r = stack.measure_stack(rounds=40, warmup=10, passes=2, draft_busy_s=0.0005, target_busy_s=0.0005)
    per = r["per_round"]
    assert 0 < per["client_cpu_s"] < per["wall_s"] and 0 < per["server_cpu_s"] < per["wall_s"]
    assert per["latency_one_way_s"] >= 0 and len(r["passes"]) == 2
    assert r["scenario"]["draft.parse_time"] == pytest.approx(per["server_cpu_s"] / 2)
    assert r["scenario"]["targets[].send_time"] == pytest.approx(per["client_cpu_s"] / 2)
    out = tmp_path / "stack.yaml"
    assert main(["calibrate", "stack", "--rounds", "30", "--passes", "1", "--draft-busy-ms", "0",
                 "--target-busy-ms", "0", "--out", str(out)]) == 0
    back = yaml.safe_load(out.read_text())
    assert set(back["scenario"]) == {"targets[].send_time", "targets[].receive_time", "draft.parse_time",
                                     "draft.serialize_time", "targets[].link.latency_s"}
    assert back["provenance"]["peer_kind"] == "stack" and "client CPU" in capsys.readouterr().out
