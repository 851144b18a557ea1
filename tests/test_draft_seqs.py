"""Multi-sequence draft rounds (feature ``seqs``): one request per target step carries every
decoding sequence of a serving target, drafted in one round."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS, wait_for  # noqa: E402

from starsim.real import protocol as P  # noqa: E402
from starsim.real.client import DraftClient  # noqa: E402
from starsim.real.server import DraftServer, ServerLimits, ServerOptions  # noqa: E402
from starsim.real.speculation import Drafter  # noqa: E402

SHAPE = (4, 3, 10)  # top_k, depth, tokens


@pytest.fixture
def server(quick_models):
    _, _, draft = quick_models
    with DraftServer(Drafter(draft, *SHAPE), limits=ServerLimits(timeout_s=30)) as s:
        yield s


def _same(a, b) -> bool:
    return (a.tokens, a.parents, a.depths) == (b.tokens, b.parents, b.depths)


def _contexts(tok) -> list[list[int]]:
    return [tok.encode(p).ids for p in CODE_PROMPTS]


def test_trees_equal_each_sequence_drafted_alone(quick_models, server):
    """Greedy: a multi-sequence round's trees are what Drafter.draft gives each sequence alone,
    on the first round (start), a later one (new tokens only) and after a free and a restart;
    one busy interval per round (batch_max 1)."""
    tok, _, draft = quick_models
    alone = Drafter(draft, *SHAPE)
    ctx = _contexts(tok)
    sids = [7, 3, 12]
    client = DraftClient(server.address)
    assert "seqs" in client.features
    trees, hdr = client.draft_seqs([(s, c, True) for s, c in zip(sids, ctx)])
    assert len(trees) == 3 and len(hdr["new_tokens"]) == 3 and hdr["trees"] == [len(t.tokens) for t in trees]
    for s, c, t in zip(sids, ctx, trees):
        assert _same(t, alone.draft(s, c)[0])
    assert hdr["new_tokens"] == [len(c) for c in ctx]
    assert len(server.intervals) == 1 and server.intervals[0].new_tokens == sum(map(len, ctx))
    assert hdr["t_draft_start"] <= hdr["t_draft_end"] <= hdr["t_reply_send"]

    # round 2: each sequence's main-path first token; sequence 3 ends, 12 skips this step
    new = {s: [t.tokens[0]] for s, t in zip(sids, trees)}
    ctx2 = {s: c + new[s] for s, c in zip(sids, ctx)}
    trees2, hdr2 = client.draft_seqs([(7, new[7], False)], free=[3])
    assert _same(trees2[0], alone.draft(7, ctx2[7])[0])
    assert hdr2["new_tokens"][0] <= 2  # the rest was cached
    assert (0, 3) not in server.contexts and (0, 7) in server.contexts
    wait_for(lambda: (0, 3) not in server.drafter.tags)

    # round 3: 12 goes on, 3 starts again with another context, 7 too
    restart = ctx[0][:5]
    trees3, _ = client.draft_seqs([(12, new[12], False), (3, restart, True), (7, [trees2[0].tokens[0]], False)])
    assert _same(trees3[0], alone.draft(12, ctx2[12])[0])
    assert _same(trees3[1], alone.draft(3, restart)[0])
    assert _same(trees3[2], alone.draft(7, ctx2[7] + [trees2[0].tokens[0]])[0])
    assert len(server.intervals) == 3  # one busy interval per round
    client.close()
    wait_for(lambda: not server.drafter.tags and not server.contexts and not server.sids)
    assert not server.rejected


def test_free_only_and_free_then_unknown(quick_models, server):
    """A round that only frees drops the contexts; a freed sid is unknown again unless it starts."""
    tok, _, _ = quick_models
    ctx = _contexts(tok)
    client = DraftClient(server.address)
    client.draft_seqs([(1, ctx[0], True), (2, ctx[1], True)])
    trees, hdr = client.draft_seqs([], free=[1, 2])
    assert trees == [] and hdr["trees"] == [] and not server.contexts
    wait_for(lambda: not server.drafter.tags)
    with pytest.raises((P.ProtocolError, OSError)):
        client.draft_seqs([(1, [5], False)])
    wait_for(lambda: any("not held" in r for r in server.rejected))


@pytest.mark.parametrize("seqs, free, n_ids, why", [
    ([[1, 2, True], [1, 2, True]], None, 4, "repeats a sid"),
    ([[9, 1, False]], None, 1, "not held"),
    ([[1, 3, True]], None, 4, "new tokens"),
    ([[i, 1, True] for i in range(P.MAX_SEQS + 1)], None, P.MAX_SEQS + 1, "at most"),
    ([[1, 4, True]], [5], 4, "free names"),
    ([[-1, 4, True]], None, 4, "sid"),
    ([[1, 0, True]], None, 0, "n_new"),
    ([], None, 0, "needs a sequence"),
])
def test_bad_multi_sequence_requests_close_that_connection_only(quick_models, server, seqs, free, n_ids, why):
    tok, _, _ = quick_models
    good = DraftClient(server.address)
    bad = DraftClient(server.address)
    ids = np.arange(n_ids, dtype=np.int32) + 10
    req = P.Message(P.DRAFT_REQUEST, {"tag": bad.tag, "seq": 1, "seqs": seqs}, {"token_ids": ids})
    if free is not None:
        req.header["free"] = free
    P.send_message(bad.sock, req)
    try:
        assert P.recv_message(bad.sock) is None  # the server closes that connection
    except OSError:
        pass
    wait_for(lambda: any(why in r for r in server.rejected))
    ctx = _contexts(tok)
    trees, _ = good.draft_seqs([(0, ctx[0], True)])
    assert trees[0].tokens
    good.close()


def test_pipelining_server_refuses_multi_sequence_requests(quick_models):
    tok, _, draft = quick_models
    with DraftServer(Drafter(draft, *SHAPE), options=ServerOptions(pipeline=True)) as s:
        client = DraftClient(s.address)
        with pytest.raises(P.ProtocolError, match="pipelining is not supported with multi-sequence requests"):
            client.draft_seqs([(0, _contexts(tok)[0], True)])
        wait_for(lambda: len(s.rejected) == 1)


def test_sampling_returns_probs_per_tree(quick_models, server):
    """temperature > 0: each tree has its own probability rows (a row per node with children),
    drawn as Drafter.draft draws with seq_seed(seed, sid)."""
    tok, _, draft = quick_models
    alone = Drafter(draft, *SHAPE)
    ctx = _contexts(tok)
    client = DraftClient(server.address)
    trees, hdr = client.draft_seqs([(s, c, True) for s, c in zip((4, 5), ctx)], temperature=0.8, seed=11)
    assert hdr["prob_rows"] == [len(t.prob_nodes) for t in trees]
    for s, c, t in zip((4, 5), ctx, trees):
        ref = alone.draft(s, c, 0.8, P.seq_seed(11, s))[0]
        assert _same(t, ref) and t.prob_nodes == ref.prob_nodes
        assert t.probs.shape == (len(t.prob_nodes), draft.config.vocab_size)
        assert set(t.parents) <= set(t.prob_nodes)
    assert not np.array_equal(trees[0].probs[0], trees[1].probs[0])
    client.close()


def test_client_refuses_without_the_feature(quick_models, server):
    client = DraftClient(server.address)
    client.features = frozenset({"clock"})  # as a server that predates multi-sequence rounds
    with pytest.raises(P.ProtocolError, match="seqs"):
        client.draft_seqs([(0, [1, 2], True)])
    client.close()


def test_protocol_round_trip_of_multi_sequence_messages():
    req = P.draft_request_seqs(3, 1, [(5, 2, True), (6, 1, False)], [1, 2, 3], free=[9])
    got = P.decode(req.encode())
    assert got.header["seqs"] == [[5, 2, True], [6, 1, False]] and got.header["free"] == [9]
    with pytest.raises(P.ProtocolError):
        P.draft_request_seqs(3, 1, [(5, 2, True)], [1, 2, 3])
    probs = np.full((1, 4), 0.25, np.float16)
    rep = P.decode(P.draft_reply_seqs(3, 1, [([1, 2], [-1, 0], np.ones((2, 4), np.float16), [-1, 0]),
                                             ([], [], None, None), ([7], [-1], probs, [-1])]).encode())
    assert rep.header["trees"] == [2, 0, 1] and rep.header["prob_rows"] == [2, 0, 1]
    trees = P.reply_trees(rep, 3)
    assert trees[2][0].tolist() == [7] and trees[2][1].tolist() == [-1] and trees[2][3].tolist() == [-1]
    with pytest.raises(P.ProtocolError):
        P.reply_trees(rep, 2)
    assert P.seq_seed(1, 2) == P.seq_seed(1, 2) != P.seq_seed(1, 3) and P.seq_seed(None, 2) is None


def test_a_multi_sequence_task_shares_a_batch_with_another_target(quick_models):
    """batch_max > 1: one target's multi-sequence task and another's single tree in one forward
    (one busy interval, new tokens of all), each tree as drafted alone."""
    import threading

    tok, _, draft = quick_models
    alone = Drafter(draft, *SHAPE)
    ctx = _contexts(tok)
    opts = ServerOptions(batch_max=4, batch_window_s=1.0)
    with DraftServer(Drafter(draft, *SHAPE), options=opts, limits=ServerLimits(timeout_s=30)) as s:
        many, one = DraftClient(s.address), DraftClient(s.address)
        got = {}
        t = threading.Thread(target=lambda: got.update(one=one.draft(ctx[2], start=True)[0]))
        t.start()
        got["many"] = many.draft_seqs([(0, ctx[0], True), (1, ctx[1], True)])[0]
        t.join(10)
        assert len(s.intervals) == 1 and s.intervals[0].new_tokens == sum(map(len, ctx))
        assert _same(got["one"], alone.draft(9, ctx[2])[0])
        for c, tree in zip(ctx, got["many"]):
            assert _same(tree, alone.draft(9, c)[0])
        many.close()
        one.close()
