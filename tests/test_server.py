"""The draft server over real TCP (loopback): lossless for several targets, robust to bad input."""

from __future__ import annotations

import pickle
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
from starsim.real.server import DraftServer, ServerLimits, ServerOptions  # noqa: E402
from starsim.real.speculation import Drafter, local_drafts, speculative_generate, target_generate  # noqa: E402


@pytest.fixture
def server(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 4, 4, 16), limits=ServerLimits(timeout_s=30)) as s:
        yield s


def _remote(client: DraftClient, temperature: float = 0.0):
    return lambda new, start, seed=None, hidden=None: client.draft(new, start, temperature, seed, hidden)[0]


def test_targets_over_tcp_are_lossless(quick_models, server):
    tok, target, _ = quick_models
    results: dict[int, tuple] = {}

    def run(i: int) -> None:
        client = DraftClient(server.address)
        ids = tok.encode(CODE_PROMPTS[i]).ids
        out, rounds = speculative_generate(target, _remote(client), ids, 40)
        client.close()
        results[i] = (ids, out, rounds, client.tag)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1, 2]
    assert sorted(r[3] for r in results.values()) == [0, 1, 2]  # one tag per connection
    for ids, out, _rounds, _tag in results.values():
        assert out == target_generate(target, ids, 40)
    assert len(server.intervals) >= sum(len(r[2]) for r in results.values())
    wait_for(lambda: not server.drafter.tags)  # every tag's draft state freed at disconnect
    assert not server.rejected


def test_sampling_over_tcp_draws_what_the_same_seed_draws_in_process(quick_models, server):
    tok, target, draft = quick_models
    ids = tok.encode(CODE_PROMPTS[1]).ids
    client = DraftClient(server.address)
    remote, rounds = speculative_generate(target, _remote(client, 0.9), ids, 32, temperature=0.9, seed=5)
    client.close()
    local, _ = speculative_generate(target, local_drafts(Drafter(draft, 4, 4, 16), temperature=0.9), ids, 32,
                                    temperature=0.9, seed=5)
    assert remote == local  # the draft's draws are seeded by the target, so the wire changes nothing
    assert remote != target_generate(target, ids, 32)
    assert sum(r.accepted for r in rounds) > 0


def _raw(server: DraftServer, data: bytes) -> bytes:
    """Send raw bytes; return what came back before the server closed the connection."""
    got = b""
    with socket.create_connection(parse_address(server.address), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            raise  # the server kept the connection open: that is a failure
        except OSError:
            # the server may close on the first bad bytes, before we finish sending or shut
            # down our side (reset, broken pipe, not connected): the expected end
            pass
    return got


class _Boom:
    def __reduce__(self):  # what an attacker's pickle would run on load
        return (open, (str(_Boom.path), "w"))


def test_bad_input_closes_that_connection_only(quick_models, server, tmp_path):
    tok, target, _ = quick_models
    _Boom.path = tmp_path / "pwned"
    client = DraftClient(server.address)  # a good target, connected throughout
    bad = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not our protocol
        pickle.dumps(_Boom()),  # bytes that would execute code under pickle
        P.PREFIX.pack(P.MAGIC, P.VERSION, 16, P.MAX_MESSAGE_BYTES),  # oversized frame
        P.draft_request(0, 1, [1, 2, 3]).encode(),  # DRAFT_REQUEST before HELLO: out of order
        P.hello().encode() + P.draft_request(99, 1, [1, 2]).encode(),  # someone else's tag
        P.hello().encode() + P.draft_request(1, 1, [10**6]).encode(),  # token outside the vocabulary
    ]
    for data in bad:
        _raw(server, data)
    wait_for(lambda: len(server.rejected) >= len(bad))
    assert not _Boom.path.exists()
    assert any("magic" in r or "version" in r or "frame" in r for r in server.rejected)
    assert any("over" in r or "limit" in r or "large" in r for r in server.rejected)
    # the good target is still served, and a new one can connect
    ids = tok.encode(CODE_PROMPTS[0]).ids
    out, _ = speculative_generate(target, _remote(client), ids, 24)
    assert out == target_generate(target, ids, 24)
    DraftClient(server.address).close()
    client.close()


def test_shared_token_is_checked(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, 2, 2, 4), token="s3cret") as s:
        with pytest.raises(P.ProtocolError, match="bad token"):
            DraftClient(s.address, token="wrong")
        DraftClient(s.address, token="s3cret").close()


def test_policy_parameters_reach_the_server():
    """A target's HELLO carries its weight (wfq), each DRAFT_REQUEST its next token's
    deadline (edf); the server's queue orders by them. A bad weight closes that connection."""
    from starsim.calibrate.stack import _FixedDrafter

    gate = threading.Event()

    class Gated(_FixedDrafter):
        """Blocks in its first draft until the gate opens, so the later requests queue up."""

        def draft(self, *a, **k):
            gate.wait(5)
            return super().draft(*a, **k)

    with DraftServer(Gated(64, 4, 2), options=ServerOptions(policy="edf"), vocab_size=64) as srv:
        clients = [DraftClient(srv.address, info={"weight": w}) for w in (1.0, 3.0, 1.0)]
        assert srv.weights == {0: 1.0, 1: 3.0, 2: 1.0}
        assert srv.queue.weights is srv.weights  # the policy sees tags that connect later
        order, threads = [], []

        def ask(i, due):
            clients[i].draft([1, 2, 3], start=True, deadline_in_s=due)
            order.append(i)

        threads.append(threading.Thread(target=ask, args=(0, None)))  # blocks the engine
        threads[0].start()
        time.sleep(0.3)
        for i, due in ((1, 5.0), (2, 0.5)):  # 2 is due sooner: served first once the engine frees
            threads.append(threading.Thread(target=ask, args=(i, due)))
            threads[-1].start()
            time.sleep(0.2)
        gate.set()
        for t in threads:
            t.join(5)
        assert sorted(order) == [0, 1, 2]
        assert [tag for tag, *_ in srv.intervals] == [0, 2, 1]  # the engine's order of service
        for c in clients:
            c.close()
        with pytest.raises((P.ProtocolError, OSError)):
            DraftClient(srv.address, info={"weight": -1})
        assert any("weight must be a number" in line for line in srv.rejected)


def test_a_server_closed_as_it_starts_stops_cleanly(quick_models):
    """close() right after start(): the door thread may find its socket closed before it
    listens; it ends quietly (a thread's exception fails the test, see pyproject.toml)."""
    _, _, draft = quick_models
    for _ in range(20):
        DraftServer(Drafter(draft, 2, 2, 4)).start().close()


def test_the_servers_parts_define_each_method_once():
    """DraftServer is one object made of the door, the engine and its connections' code: a
    method defined in two of them would silently replace the other (the door's refusals once
    called a connection's method of the same name)."""
    from starsim.real.door import Door
    from starsim.real.draft_engine import DraftEngine
    from starsim.real.server import DraftServer

    parts = [set(vars(c)) for c in (Door, DraftEngine, DraftServer)]
    own = [{n for n in p if callable(getattr(DraftServer, n, None)) and not n.startswith("__")} for p in parts]
    assert not (own[0] & own[1]) and not (own[0] & own[2]) and not (own[1] & own[2])
