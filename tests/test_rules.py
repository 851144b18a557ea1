"""The rules of a round (:mod:`starsim.rules`), each from one table, driven three ways: through
the rule itself, through the simulator and through the real backend.

Each table row is a situation and what must follow from it. The simulator's drivers run its
own engines, targets, fabric and arrival process (SimPy, no real time); the real backend's
run its target worker, draft server, fabric client and request issuing, with stand-in models
and clocks where the rule does not need torch (so these tests run in the quick tier too).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import simpy

from starsim import rules
from starsim.scenario import Scenario
from starsim.sim import simulate

# ---------------------------------------------------------------------- scenarios for the simulator


def _star(const_star: dict, *, accepted: int, output: int, **draft) -> Scenario:
    """One target, one request of ``output`` tokens, ``accepted`` draft tokens every round."""
    d = copy.deepcopy(const_star)
    d.update(duration_s=None, warmup_s=0.0, max_requests=1)
    d["targets"][0]["count"] = 1
    d["acceptance"] = {"kind": "marginal", "curve": [1] * accepted + [0] * (4 - accepted)}
    d["workload"] = {"kind": "closed", "prompts": 1, "prompt_tokens": 50, "output_tokens": output, "repeat": False}
    d["draft"].update(draft)
    return Scenario.model_validate(d)


def _emitted_by_rule(accepted: int, output: int) -> list[int]:
    """A request's emitted tokens per round, by the rule: the prefill gives the first token."""
    out, generated = [], 1
    while generated < output:
        e = rules.emitted(accepted, generated, output)
        out.append(e)
        generated += e
    return out


# ---------------------------------------------------------------------- 1. emitted-token cap

EMITTED = [  # (accepted per round, output tokens) -> tokens each round emits
    (3, 10, [4, 4, 1]),
    (3, 9, [4, 4]),
    (0, 4, [1, 1, 1]),
    (4, 6, [5]),
    (4, 2, [1]),
    (2, 1, []),  # the prefill's token is the whole request
]


@pytest.mark.parametrize("accepted,output,expected", EMITTED)
def test_emitted_rule(accepted, output, expected):
    assert _emitted_by_rule(accepted, output) == expected


@pytest.mark.parametrize("accepted,output,expected", EMITTED)
def test_emitted_in_the_simulator(const_star, accepted, output, expected):
    r = simulate(_star(const_star, accepted=accepted, output=output)).records
    assert r.rounds["emitted"].tolist() == expected
    assert r.requests["generated_tokens"].tolist() == [output]


# ---------------------------------------------------------------------- 2. TPOT deadline

DEADLINE = [  # (tpot objective s, accepted per round, output) -> when each round's next token is due, after the first
    (0.05, 3, 10, [0.05, 0.25, 0.45]),
    (0.02, 0, 4, [0.02, 0.04, 0.06]),
    (0.1, 4, 11, [0.1, 0.6]),
]


@pytest.mark.parametrize("slo,accepted,output,expected", DEADLINE)
def test_deadline_rule(slo, accepted, output, expected):
    t_first = 7.0
    generated = np.cumsum([1, *_emitted_by_rule(accepted, output)])[:-1]
    due = [rules.token_due(t_first, slo, int(g)) - t_first for g in generated]
    assert due == pytest.approx(expected)


@pytest.mark.parametrize("slo,accepted,output,expected", DEADLINE)
def test_deadline_in_the_simulator(const_star, monkeypatch, slo, accepted, output, expected):
    """An edf draft orders tasks by the deadline each round's task carries."""
    import starsim.sim.draft as sim_draft

    seen = []
    submit = sim_draft.DraftEngine.submit
    monkeypatch.setattr(sim_draft.DraftEngine, "submit", lambda self, task: (seen.append(task.deadline),
                                                                            submit(self, task))[1])
    sc = _star(const_star, accepted=accepted, output=output, policy="edf")
    sc.targets[0].tpot_slo_s = slo
    r = simulate(sc).records
    t_first = float(r.requests["t_first_token"].iloc[0])
    assert [d - t_first for d in seen] == pytest.approx(expected)


# ---------------------------------------------------------------------- 3. pipelining: hit or miss

PIPELINE_RULE = [  # (took the main path whole, the request goes on, the bonus is offered) -> hit
    (True, True, True, True),
    (False, True, True, False),
    (True, False, True, False),
    (True, True, False, False),
]


@pytest.mark.parametrize("took,goes_on,bonus,hit", PIPELINE_RULE)
def test_pipelined_hit_rule(took, goes_on, bonus, hit):
    assert rules.pipelined_hit(took, goes_on, bonus) is hit


PIPELINE = [  # (accepted per round of a 4-deep tree, output) -> (hits, misses) over the request
    (4, 11, (1, 1)),  # two rounds: the first's pipelined tree is used, the last's is not
    (4, 16, (2, 1)),
    (2, 11, (0, 4)),  # never the whole path: every pipelined tree misses
    (4, 2, (0, 1)),  # one round, and the request ends with it
]


def _pipeline_by_rule(accepted: int, output: int, depth: int = 4) -> tuple[int, int]:
    hits = misses = 0
    generated = 1
    for e in _emitted_by_rule(accepted, output):
        if rules.pipelined_hit(accepted == depth, generated + e < output):
            hits += 1
        else:
            misses += 1
        generated += e
    return hits, misses


@pytest.mark.parametrize("accepted,output,expected", PIPELINE)
def test_pipelined_outcomes_by_rule(accepted, output, expected):
    assert _pipeline_by_rule(accepted, output) == expected


@pytest.mark.parametrize("accepted,output,expected", PIPELINE)
def test_pipelining_in_the_simulator(const_star, accepted, output, expected):
    """The simulator's trees are counts, not tokens: it takes a whole-path acceptance as
    offering the bonus (the real backend checks the token: see the real driver). Every
    pipelined tree here is drafted alone (4 ms) during the verify, so a miss wastes 4 ms."""
    meta = simulate(_star(const_star, accepted=accepted, output=output, pipeline=True)).records.meta
    assert (meta["pipeline"]["hits"], meta["pipeline"]["misses"]) == expected
    assert meta["pipeline"]["wasted_s"] == pytest.approx(rules.wasted_draft_s(0.0, 0.004, 1, 1) * expected[1])


WASTED = [  # (forward start, end, the missed tree's sequences, the forward's sequences) -> seconds wasted
    (1.0, 1.004, 1, 1, 0.004),
    (1.0, 1.008, 1, 4, 0.002),
    (2.0, 2.012, 3, 4, 0.009),
]


@pytest.mark.parametrize("start,end,sequences,batch,wasted", WASTED)
def test_wasted_draft_rule(start, end, sequences, batch, wasted):
    assert rules.wasted_draft_s(start, end, sequences, batch) == pytest.approx(wasted)


@pytest.mark.parametrize("start,end,sequences,batch,wasted", WASTED)
def test_wasted_draft_in_the_simulator(start, end, sequences, batch, wasted):
    """A pipelined task missed after its forward: the engine counts its share."""
    from starsim.records import Recorder
    from starsim.scenario.draft import Draft
    from starsim.sim.devices import DeviceUnit
    from starsim.sim.draft import DraftEngine, Task

    env = simpy.Environment()
    engine = DraftEngine(env, 0, "draft", DeviceUnit("d", 1), Draft(device="d", time=0.004), np.random.default_rng(0),
                         Recorder(), general=True)
    t = Task(0, 10, env.event())
    t.seqs = [((0, i), 10) for i in range(sequences)]
    t.start, t.end, t.batch = start, end, batch
    engine.cancel(t, {(0, i): 10 for i in range(sequences)})
    assert engine.pipeline_stats.wasted_s == pytest.approx(wasted)


# ---------------------------------------------------------------------- 4. batch window

WINDOW = [  # (tasks queued at 0, batch.max, window s, one more task at) -> (first batch's start, its size)
    (1, 4, 0.5, None, 0.5, 1),  # fewer than a batch: the whole window
    (4, 4, 0.5, None, 0.0, 4),  # a full batch: at once
    (6, 4, 0.5, None, 0.0, 4),  # more than a batch: the first four at once
    (3, 4, 0.5, 0.2, 0.2, 4),  # the batch fills during the window: it starts then
    (2, 4, 0.5, 0.2, 0.5, 3),  # still short: the window ends it
    (1, 4, 0.0, None, 0.0, 1),  # no window: no wait
]


def _window_by_rule(queued: int, most: int, window: float, more_at: float | None) -> tuple[float, int]:
    now, until = 0.0, window
    if window > 0 and queued < most:
        while (left := rules.window_left(queued, most, until, now)) > 0:
            if more_at is not None and now < more_at <= now + left:
                now, queued = more_at, queued + 1
            else:
                now += left
    return now, min(queued, most)


@pytest.mark.parametrize("queued,most,window,more_at,start,size", WINDOW)
def test_window_rule(queued, most, window, more_at, start, size):
    assert _window_by_rule(queued, most, window, more_at) == (pytest.approx(start), size)


@pytest.mark.parametrize("queued,most,window,more_at,start,size", WINDOW)
def test_window_in_the_simulator(const_star, queued, most, window, more_at, start, size):
    from starsim.records import Recorder
    from starsim.sim.devices import DeviceUnit
    from starsim.sim.draft import DraftEngine, Task

    sc = _star(const_star, accepted=2, output=10, batch={"max": most, "window_s": window, "time": 0.001})
    env = simpy.Environment()
    engine = DraftEngine(env, 0, "draft", DeviceUnit("d", 1), sc.draft, np.random.default_rng(0), Recorder(),
                         general=True)
    tasks = [Task(i, 10, env.event()) for i in range(queued + (more_at is not None))]
    for t in tasks[:queued]:
        engine.submit(t)

    def later():
        yield env.timeout(more_at)
        engine.submit(tasks[-1])

    if more_at is not None:
        env.process(later())
    env.run(until=env.all_of([t.done for t in tasks[:1]]))
    first = [t for t in tasks if t.start is not None and t.start == tasks[0].start]
    assert (tasks[0].start, len(first)) == (pytest.approx(start), size)


# ---------------------------------------------------------------------- 5. keep or leave a fabric server

SEAT = [  # (server alive, tasks its last reply said were waiting, repair_queue) -> kept
    (True, 0, None, True),
    (True, 50, None, True),  # no repair_queue: a busy server is kept
    (True, 3, 2, False),  # saturated: left
    (True, 2, 2, True),  # at the limit: kept
    (False, 0, None, False),  # down: left
    (False, 0, 5, False),
]


@pytest.mark.parametrize("alive,waiting,repair_queue,kept", SEAT)
def test_seat_rule(alive, waiting, repair_queue, kept):
    from starsim.pairing import make_pairing

    p = make_pairing("least_loaded", 2)
    seat = rules.Seat(0, p, repair_queue)
    assert seat.begin() == 0
    seat.served(waiting)
    p.alive[0] = alive
    assert (seat.begin() == 0) is kept
    assert seat.repairs == (0 if kept else 1) and p.loads == ([1, 0] if kept else [0, 1])


class _Engine:
    """What the simulator's fabric reads of a draft engine: its index and its queue."""

    def __init__(self, index: int):
        self.index, self.policy = index, []


@pytest.mark.parametrize("alive,waiting,repair_queue,kept", SEAT)
def test_seat_in_the_simulator(alive, waiting, repair_queue, kept):
    from starsim.scenario.draft import Fabric as FabricConfig
    from starsim.sim.fabric import Fabric

    engines = [_Engine(0), _Engine(1)]
    fab = Fabric(simpy.Environment(), engines, FabricConfig(servers=2, pairing="least_loaded",
                                                            repair_queue=repair_queue), np.random.default_rng(0))
    assert fab.engine_for(0) is engines[0]
    engines[0].policy = [object()] * waiting  # the queue at the reply
    fab.served(0, engines[0])
    engines[0].policy = []  # emptied since: the target cannot know
    fab.pairing.alive[0] = alive
    assert (fab.engine_for(0) is engines[0]) is kept
    assert fab.repairs == (0 if kept else 1)


def test_with_every_server_down_a_seat_gives_its_load_back():
    from starsim.pairing import make_pairing

    p = make_pairing("static", 2)
    seat = rules.Seat(1, p)
    assert seat.begin() == 1
    p.alive[0] = p.alive[1] = False
    assert seat.begin() is None and p.loads == [0, 0] and seat.server is None


# ---------------------------------------------------------------------- 6. open-loop arrivals

ARRIVALS = [  # (draw times, budget) -> (request id, arrival) in order
    ([0.5, 1.0, 1.7], None, [(0, 0.5), (1, 1.0), (2, 1.7)]),
    ([0.5, 1.0, 1.7], 2, [(0, 0.5), (1, 1.0)]),
    ([0.0, 0.0, 0.3], None, [(0, 0.0), (1, 0.0), (2, 0.3)]),  # at once
    ([0.4, 0.2, 0.9], None, [(0, 0.4), (1, 0.4), (2, 0.9)]),  # never back in time
    ([0.1 * i for i in range(1, 8)], 0, []),
]


@pytest.mark.parametrize("times,budget,expected", ARRIVALS)
def test_arrivals_rule(times, budget, expected):
    got = [(a.request, a.at) for a in rules.open_loop_arrivals([(t, 10, 20) for t in times], budget)]
    assert got == expected


@pytest.mark.parametrize("times,budget,expected", ARRIVALS)
def test_arrivals_in_the_simulator(times, budget, expected):
    from starsim.sim.run import _arrival_process

    env = simpy.Environment()
    store = simpy.Store(env)
    got = []
    env.process(_arrival_process(env, store, [(t, 10, 20) for t in times], budget, 1,
                                 route=lambda item: got.append(item[:2]) if item is not None else None))
    env.run()
    assert got == expected  # bit for bit: the same floats


# ---------------------------------------------------------------------- 7. closed-loop turns

TURNS = [  # (served by this target, prompts in the set, repeat, issued by the run, budget) -> prompt index
    (0, 3, False, 0, None, 0),
    (2, 3, False, 5, None, 2),
    (3, 3, False, 5, None, None),  # went through the set
    (3, 3, True, 5, None, 0),  # again from the start
    (7, 3, True, 9, None, 1),
    (1, 3, True, 4, 4, None),  # the run's budget is spent
    (1, 3, True, 3, 4, 1),
]


@pytest.mark.parametrize("served,prompts,repeat,issued,budget,index", TURNS)
def test_turn_rule(served, prompts, repeat, issued, budget, index):
    assert rules.closed_loop_turn(served, prompts, repeat, issued, budget) == index


class _User:
    """What the simulator's request source reads of a target: its count and its pause."""

    def __init__(self, served: int, pause=None):
        self.served, self.pause = served, pause


@pytest.mark.parametrize("served,prompts,repeat,issued,budget,index", TURNS)
def test_turns_in_the_simulator(served, prompts, repeat, issued, budget, index):
    from starsim.sim.target import Requests

    env = simpy.Environment()
    pset = [(10 + i, 20 + i) for i in range(prompts)]
    req = Requests(env, budget, pset, repeat)
    req.issued = issued
    pauses = []
    user = _User(served, pause=lambda: pauses.append(env.now) or 0.25)
    got = []

    def take():
        got.append((yield from req.next_for(user)))

    env.process(take())
    env.run()
    if index is None:
        assert got == [None] and req.issued == issued
        return
    rid, at, prompt, output = got[0]
    assert (rid, (prompt, output)) == (issued, pset[index]) and req.issued == issued + 1
    assert len(pauses) == rules.pauses_first(served) and at == 0.25 * len(pauses)



# ====================================================================== the real backend's drivers
#
# Stand-ins where the rule needs no model: a verifier that accepts ``k`` draft tokens each round,
# a draft client that answers at once, a drafter that returns fixed trees, and a clock that
# advances one second per reading, so that every time a rule reads is exact.


class _Verifier:
    """The target's verify, accepting ``k`` draft tokens a round (token 7) and its bonus (8)."""

    k = 0

    def __init__(self, model, temperature, rng, hidden=False):
        self.hidden, self.features = False, None

    def prefill(self, prompt):
        return 5

    def verify(self, tree):
        from starsim.real.speculation import RoundResult

        return RoundResult(emitted=[7] * self.k + [8], accepted=self.k, tree_tokens=len(tree.tokens))

    def step(self):
        return 6


class _Client:
    """A draft server that answers at once with a 4-deep chain; it notes each request's deadline."""

    needs_hidden, clock_offset_s, clock_error_s, bytes_up, bytes_down, tag = False, 0.0, 0.0, 10, 10, 0

    def __init__(self):
        self.deadlines = []

    def draft(self, new, start, temperature, seed, hidden, deadline_in_s=None, depth=None, sent=None):
        from starsim.real.speculation import TreeDraft

        self.deadlines.append(deadline_in_s)
        if sent is not None:
            sent()
        hdr = {k: 0.0 for k in ("t_arrive", "t_enqueue", "t_draft_start", "t_draft_end", "t_reply_send")}
        return TreeDraft([1, 2, 3, 4], [-1, 0, 1, 2], [1, 2, 3, 4]), {**hdr, "new_tokens": len(new), "kv_bytes": 0}

    def close(self):
        pass


def _real_request(monkeypatch, accepted: int, output: int, slo: float | None = None):
    """One request through the real target worker: (its rounds table, its request row, the client)."""
    pytest.importorskip("torch")
    import itertools

    import starsim.real.worker as worker_mod
    from starsim.real.worker import TargetWorker, WorkerOptions
    from starsim.records import REQUEST_COLUMNS, ROUND_COLUMNS

    monkeypatch.setattr(worker_mod, "Verifier", type("V", (_Verifier,), {"k": accepted}))
    ticks = itertools.count(1.0)
    monkeypatch.setattr(TargetWorker, "now", lambda self: float(next(ticks)))
    client = _Client()
    w = TargetWorker(0, None, client, 0.0, WorkerOptions(tpot_slo_s=slo))
    w.run_request(0, [1] * 50, output)
    names = [c for c, _ in ROUND_COLUMNS]
    rounds = [dict(zip(names, row)) for row in w.rounds]
    return rounds, dict(zip([c for c, _ in REQUEST_COLUMNS], w.requests[0])), client


@pytest.mark.parametrize("accepted,output,expected", EMITTED)
def test_emitted_in_the_real_backend(monkeypatch, accepted, output, expected):
    rounds, request, _ = _real_request(monkeypatch, accepted, output)
    assert [r["emitted"] for r in rounds] == expected
    assert request["generated_tokens"] == output


@pytest.mark.parametrize("slo,accepted,output,expected", DEADLINE)
def test_deadline_in_the_real_backend(monkeypatch, slo, accepted, output, expected):
    """The worker sends seconds until the token is due; on its clock, the due time is the rule's."""
    rounds, request, client = _real_request(monkeypatch, accepted, output, slo)
    due = [d + r["t_send"] - request["t_first_token"] for d, r in zip(client.deadlines, rounds)]
    assert due == pytest.approx(expected)


class _Drafter:
    """A draft that returns a fixed greedy tree: two first-level tokens (10, 11), then a chain
    under 10 (12, 13, 14): its main path is 10, 12, 13, 14. ``batches`` notes each batch's size."""

    needs_hidden, depth, ranks = False, 4, None
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=100, num_hidden_layers=1, num_attention_heads=1,
                                                   hidden_size=8), dtype=SimpleNamespace(itemsize=2))

    def __init__(self):
        self.batches = []

    def draft(self, tag, context, temperature=0.0, seed=None, hidden=None, depth=None, observe=True):
        from starsim.real.speculation import TreeDraft

        return TreeDraft([10, 11, 12, 13, 14], [-1, -1, 0, 2, 3], [1, 1, 2, 3, 4]), 1

    def draft_batch(self, tasks):
        self.batches.append(len(tasks))
        return [self.draft(*t) for t in tasks]

    def free(self, tag):
        pass


@pytest.mark.parametrize("took,goes_on,bonus,hit", PIPELINE_RULE)
def test_pipelining_in_the_real_backend(took, goes_on, bonus, hit):
    """The real server over TCP: a request whose tokens are the last tree's main path (or not)
    and a bonus token the pipelined tree offers at its root (10) or not (50); a request that
    does not go on starts a new one (``start``) instead."""
    pytest.importorskip("torch")
    from conftest import wait_for

    from starsim.real.client import DraftClient
    from starsim.real.server import DraftServer, ServerOptions

    with DraftServer(_Drafter(), options=ServerOptions(pipeline=True)) as server:
        c = DraftClient(server.address)
        c.draft([1, 2, 3], start=True)
        wait_for(lambda: len(server.intervals) == 2)  # the pipelined tree is drafted
        path = [10, 12, 13, 14] if took else [10, 12, 99, 98]
        _, hdr = c.draft(path + [10 if bonus else 50], start=not goes_on)
        s = server.pipeline_stats  # before the session ends
        stats = s.hits, s.misses, s.wasted_s
        c.close()
    assert bool(hdr.get("pipelined")) is hit
    pre = server.intervals[1]  # the pipelined tree's forward, drafted alone
    assert stats == ((1, 0, 0.0) if hit else (0, 1, rules.wasted_draft_s(pre.start, pre.end, 1, 1)))


@pytest.mark.parametrize("queued,most,window,more_at,start,size", WINDOW)
def test_window_in_the_real_backend(queued, most, window, more_at, start, size):
    """The real engine's first batch holds what the rule says (its start is wall time here, so
    only the size is checked: the tasks are queued well within the window)."""
    pytest.importorskip("torch")
    import threading

    from starsim.real.draft_engine import Task
    from starsim.real.server import DraftServer, ServerOptions

    drafter = _Drafter()
    # a window wider than the table's, so that a task due at ``more_at`` is in it on a slow machine
    server = DraftServer(drafter, options=ServerOptions(batch_max=most, batch_window_s=window * 2 + 0.3 * (window > 0)))
    tasks = [Task(i, [1, 2, 3]) for i in range(queued + (more_at is not None))]
    with server.cv:  # all queued before the engine looks
        for t in tasks[:queued]:
            server.queue.push(t)
    server.start()
    def push_last():
        with server.cv:
            server.queue.push(tasks[-1])
            server.cv.notify()

    if more_at is not None:
        threading.Timer(more_at, push_last).start()
    tasks[0].done.wait(30)
    server.close()
    first = drafter.batches[0] if drafter.batches else 1
    assert first == size


@pytest.mark.parametrize("alive,waiting,repair_queue,kept", SEAT)
def test_seat_in_the_real_backend(alive, waiting, repair_queue, kept):
    """A real target's fabric client: the queue length comes in its server's reply header."""
    pytest.importorskip("torch")
    import threading

    from starsim.pairing import make_pairing
    from starsim.real.worker import FabricClient

    pairing = make_pairing("least_loaded", 2)
    fab = FabricClient(0, ["a:1", "b:2"], pairing, threading.Lock(), lambda address: _Client(),
                       repair_queue=repair_queue, seats=[-1])
    assert fab.begin() is not None and fab.server == 0 and fab.seats == [0]
    fab.served({"queue_len": waiting})
    pairing.alive[0] = alive
    assert fab.begin() is not None
    assert (fab.server == 0) is kept and fab.repairs == (0 if kept else 1) and fab.seats == [fab.server]


@pytest.mark.parametrize("times,budget,expected", ARRIVALS)
def test_arrivals_in_the_real_backend(monkeypatch, times, budget, expected):
    """The real run's open-loop schedule (it releases request i at ``arrivals[i]``)."""
    pytest.importorskip("torch")
    import starsim.real.execute as ex

    monkeypatch.setattr(ex, "workload_arrivals", lambda w, rng: iter([(t, 10, 20) for t in times]))
    sc = SimpleNamespace(workload=None, seed=0, max_requests=budget)
    at, lengths, cut = ex._open_loop(sc, horizon=float("inf"))
    assert list(enumerate(at)) == expected and not cut and lengths == [(10, 20)] * len(at)


@pytest.mark.parametrize("served,prompts,repeat,issued,budget,index", TURNS)
def test_turns_in_the_real_backend(served, prompts, repeat, issued, budget, index):
    """A real target process takes its next request from the run's shared counter."""
    pytest.importorskip("torch")
    import multiprocessing as mp

    from starsim.real.run_requests import next_request

    counter = mp.get_context("spawn").Value("i", issued)
    job = SimpleNamespace(arrivals=None, prompts=[(10 + i, 20 + i) for i in range(prompts)], repeat=repeat,
                          budget=budget)
    got = next_request(job, counter, served)
    assert got == (None if index is None else (issued, index))
    assert counter.value == issued + (index is not None)


@pytest.mark.parametrize("start,end,sequences,batch,wasted", WASTED)
def test_wasted_draft_in_the_real_backend(start, end, sequences, batch, wasted):
    """A real pipelined task missed after its forward (a real task is one sequence)."""
    pytest.importorskip("torch")
    if sequences != 1:
        pytest.skip("a real draft task holds one target's sequence")
    from starsim.real.draft_engine import Task
    from starsim.real.server import DraftServer

    server = DraftServer(_Drafter())
    pre = Task(0, [1, 2, 3], pre=True, taken=True, start=start, end=end, batch=batch)
    pre.done.set()
    with server.cv:
        server._drop(pre)
    server.close()
    assert server.pipeline_stats.wasted_s == pytest.approx(wasted)
