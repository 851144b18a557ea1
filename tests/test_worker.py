"""Target workers against a draft server on loopback: record rows the metrics module reads,
lossless outputs, and the autoregressive fallback when the draft server goes away."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS  # noqa: E402

from starsim.metrics import summarize  # noqa: E402
from starsim.real.client import DraftClient  # noqa: E402
from starsim.real.server import DraftServer  # noqa: E402
from starsim.real.speculation import Drafter, target_generate  # noqa: E402
from starsim.real.worker import TargetWorker, WorkerOptions, assemble_records  # noqa: E402


def _records(workers, server, clock0):
    tag_to_target = {w.client_tag: w.index for w in workers}
    draft = [("draft", "cpu", "draft", tag_to_target[tag], s - clock0, e - clock0) for tag, s, e, _ in server.intervals]
    meta = {"source": "real", "mode": "star", "t_end": 0.0, "warmup_s": 0.0, "cooldown_s": 0.0, "window_s": 0.2,
            "draft_engines": ["draft"], "draft_device": "cpu",
            "targets": [{"index": w.index, "name": f"t-{w.index}", "device": "cpu"} for w in workers]}
    return assemble_records([vars(w) for w in workers], meta, draft)


def test_workers_write_records_the_metrics_read(quick_models):
    tok, target, draft = quick_models
    clock0 = time.monotonic()
    with DraftServer(Drafter(draft, 4, 4, 16)) as server:
        workers = []
        for i in range(2):
            client = DraftClient(server.address)
            w = TargetWorker(i, target, client, clock0)
            w.client_tag = client.tag
            workers.append(w)

        def run(w):
            for j in range(2):
                w.run_request(10 * w.index + j, tok.encode(CODE_PROMPTS[(w.index + j) % 3]).ids, 32)
            w.close()

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        records = _records(workers, server, clock0)
    for w in workers:
        for o in w.outputs:
            assert o["prompt"] == tok.encode(CODE_PROMPTS[(w.index + o["request"] % 10) % 3]).ids
            assert o["output"] == target_generate(target, o["prompt"], 32)
    r = records.rounds
    assert len(r) > 0 and (r["draft"] == 0).all()
    # every hop in order on one clock
    hops = ["t_send", "t_draft_arrive", "t_enqueue", "t_draft_start", "t_draft_end", "t_reply_send",
            "t_target_arrive", "t_verify_end"]
    for a, b in zip(hops, hops[1:]):
        assert (r[a] <= r[b] + 1e-9).all(), (a, b)
    assert (r["emitted"] == (r["accepted"] + 1).clip(upper=r["emitted"])).all()
    assert (r["bytes_up"] > 0).all() and (r["bytes_down"] > 0).all() and (r["draft_kv_bytes"] > 0).all()
    s = summarize(records)
    assert s["requests_completed"] == 4 and s["rounds"] == len(r)
    assert 0 < s["draft_utilization"] <= 1 and s["throughput_tokens_per_s"] > 0
    assert s["mean_accepted_tokens"] >= 1


def test_draft_server_gone_targets_finish_autoregressively(quick_models):
    tok, target, draft = quick_models
    clock0 = time.monotonic()
    server = DraftServer(Drafter(draft, 4, 4, 16)).start()
    w = TargetWorker(0, target, DraftClient(server.address), clock0)
    ids = tok.encode(CODE_PROMPTS[1]).ids
    assert w.run_request(0, ids, 16) == target_generate(target, ids, 16)
    server.close()
    ids = tok.encode(CODE_PROMPTS[2]).ids
    assert w.run_request(1, ids, 24) == target_generate(target, ids, 24)
    assert w.fallback_at is not None and w.client is None
    late = [row for row in w.rounds if row[1] == 1]
    assert late and all(row[3] == -1 and row[18] == 1 for row in late)  # no draft, one token a step


def test_a_request_ends_at_end_of_sequence(quick_models):
    """A model's end-of-sequence ids (one or a list) end a request where the target's own
    decoding would, in drafted rounds and autoregressive steps alike."""
    tok, target, draft = quick_models
    ids = tok.encode(CODE_PROMPTS[0]).ids
    full = target_generate(target, ids, 40)
    stop = full[9]  # pretend this token is an end-of-sequence id
    want = full[: full.index(stop) + 1]
    with DraftServer(Drafter(draft, 4, 4, 16)) as server:
        for eos in (stop, [stop, -5]):
            w = TargetWorker(0, target, DraftClient(server.address), time.monotonic(), WorkerOptions(eos=eos))
            assert w.run_request(0, ids, 40) == want
            assert w.requests[-1][4] == len(want)  # generated tokens
            w.close()
    w = TargetWorker(0, target, None, time.monotonic(), WorkerOptions(eos=frozenset([stop])))
    assert w.run_request(1, ids, 40) == want
