"""The real messaging stack's own cost per round: what the simulator's ``send_time`` /
``receive_time`` (a target's work) and ``parse_time`` / ``serialize_time`` (the draft
server's work) stand for.

``starsim calibrate link`` times the protocol on a bare socket pair. A real round also
crosses :class:`~starsim.real.client.DraftClient` (build, send, receive, check the tree)
and :class:`~starsim.real.server.DraftServer` (a communication thread per target, the
engine thread's queue and the hand-offs between them): that is CPU work, and on a host
whose cores the draft and the targets share it competes with drafting and verifying. Here
a real server, in its own process and with a drafter that returns a fixed tree at once,
answers a real client for many rounds; each side's CPU time per round (the client's
thread, the server's whole process) and the round trip's wall time are measured. What the
wall time holds beyond both sides' CPU is the wire and the threads' wake-ups: the link's
latency.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from ..calibrate.link import _provenance

WHAT = ("real DraftClient -> DraftServer round trips over loopback TCP, a drafter that returns a "
        "fixed tree at once; CPU time per round: client thread (time.thread_time), server process "
        "(time.process_time)")


class _FixedDrafter:
    """A drafter that does no work: a breadth-first tree of ``tokens`` nodes, every time."""

    needs_hidden = False

    def __init__(self, vocab_size: int, tokens: int, top_k: int, busy_s: float = 0.0):
        from ..real.speculation import TreeDraft, tree_depths

        cfg = SimpleNamespace(vocab_size=vocab_size, hidden_size=128, num_attention_heads=1, num_hidden_layers=1)
        self.model = SimpleNamespace(config=cfg, dtype=np.dtype("float32"))
        parents = [-1] + [(i - 1) // top_k for i in range(1, tokens)]
        self.tree = TreeDraft(list(range(1, tokens + 1)), parents, tree_depths(parents))
        self.depth = max(self.tree.depths)  # a request for a shallower tree gets this one all the same
        self.seen: dict[int, int] = {}
        self.busy = _Busy(busy_s)
        self.busy_cpu_s = 0.0

    def draft(self, tag, context, temperature=0.0, seed=None, hidden=None, depth=None, observe=True):
        self.busy_cpu_s += self.busy()
        new = len(context) - self.seen.get(tag, 0)
        self.seen[tag] = len(context)
        return self.tree, new

    def free(self, tag) -> None:
        self.seen.pop(tag, None)


class _Busy:
    """About ``seconds`` of work that sweeps 16 MB of memory, as a model's forward pass does:
    the messaging code around it then runs with cold caches, as it does in a real round.
    Returns the work's own CPU time."""

    def __init__(self, seconds: float):
        self.a = np.ones(4 << 20, dtype=np.float32)
        self.reps = 0
        if seconds > 0:
            t = time.perf_counter()
            for _ in range(5):
                self.a.sum()
            self.reps = max(1, round(seconds / ((time.perf_counter() - t) / 5)))

    def __call__(self) -> float:
        c = time.thread_time()
        for _ in range(self.reps):
            self.a.sum()
        return time.thread_time() - c


def _server_main(conn, vocab_size: int, tokens: int, top_k: int, busy_s: float) -> None:
    from ..real.server import DraftServer

    drafter = _FixedDrafter(vocab_size, tokens, top_k, busy_s)
    server = DraftServer(drafter, bind="127.0.0.1:0", vocab_size=vocab_size)
    server.start()
    conn.send(server.address)
    try:
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                break
            # "mark": the process's CPU time so far, and the drafter's busy work's part of it
            conn.send((time.process_time(), drafter.busy_cpu_s))
    finally:
        server.close()


def measure_stack(rounds: int = 2000, warmup: int = 200, tree_tokens: int = 16, top_k: int = 4,
                  new_tokens: int = 3, context: int = 128, vocab_size: int = 4096, passes: int = 3,
                  draft_busy_s: float = 0.005, target_busy_s: float = 0.008) -> dict:
    """Per round of the real stack on this host: each side's CPU time and the wall time.
    (Ten parameters: each is one knob of the benchmark, every one a CLI flag with a default.)

    Between its messages each side does ``*_busy_s`` of memory-sweeping work in place of
    the draft and the verify (its CPU time is taken out of that side's): messaging code
    that runs right after a model's forward pass finds its caches cold, and costs 2-3x
    what it does in a tight loop (0: the tight loop).

    ``passes`` blocks of ``rounds`` round trips (each after ``warmup`` untimed ones); a
    block's values are means over its rounds, and the reported value is the block with
    the lowest wall time (another tenant of a shared machine only adds time)."""
    from ..real.client import DraftClient

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(child, vocab_size, tree_tokens, top_k, draft_busy_s), daemon=True)
    proc.start()
    try:
        address = parent.recv()
        client = DraftClient(address)
        rng = np.random.default_rng(0)
        ids = rng.integers(0, vocab_size, context).tolist()
        client.draft(ids, start=True)
        busy = _Busy(target_busy_s)
        blocks = []
        for _ in range(passes):
            for _ in range(warmup):
                client.draft(rng.integers(0, vocab_size, new_tokens).tolist())
            news = [rng.integers(0, vocab_size, new_tokens).tolist() for _ in range(rounds)]
            parent.send("mark")
            s0, sb0 = parent.recv()
            c0, w0, work = time.thread_time(), time.perf_counter(), 0.0
            for new in news:
                client.draft(new)
                work += busy()  # the verify's place in the round
            c1, w1 = time.thread_time(), time.perf_counter()
            parent.send("mark")
            s1, sb1 = parent.recv()
            client_cpu, server_cpu = c1 - c0 - work, s1 - s0 - (sb1 - sb0)
            # the wall time neither side spent computing: the wire and the threads' wake-ups
            idle = (w1 - w0) - (c1 - c0) - (s1 - s0)
            blocks.append({"wall_s": (w1 - w0) / rounds, "client_cpu_s": client_cpu / rounds,
                           "server_cpu_s": server_cpu / rounds, "idle_s": idle / rounds})
        client.close()
        parent.send("stop")
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    best = min(blocks, key=lambda b: b["wall_s"])
    latency = max(best["idle_s"], 0.0) / 2
    return {
        "what": WHAT,
        "rounds": rounds,
        "passes": [{k: float(v) for k, v in b.items()} for b in blocks],
        "per_round": {**{k: float(v) for k, v in best.items()}, "latency_one_way_s": float(latency)},
        "payload": {"tree_tokens": tree_tokens, "new_tokens": new_tokens, "context": context,
                    "vocab_size": vocab_size},
        "busy_work_s": {"draft": draft_busy_s, "target": target_busy_s},
        # the scenario fields these stand for; each side's work split evenly between its two
        # messages (the split only moves work within a round, not how much there is)
        "scenario": {
            "targets[].send_time": best["client_cpu_s"] / 2,
            "targets[].receive_time": best["client_cpu_s"] / 2,
            "draft.parse_time": best["server_cpu_s"] / 2,
            "draft.serialize_time": best["server_cpu_s"] / 2,
            "targets[].link.latency_s": latency,
        },
        "provenance": _provenance("127.0.0.1 (loopback, a spawned server process)", "stack"),
    }


def format_result(result: dict) -> str:
    r = result["per_round"]
    us = lambda v: f"{v * 1e6:.1f} us"  # noqa: E731
    lines = [f"real messaging stack, per round ({result['rounds']} rounds, fastest of {len(result['passes'])} passes):",
             f"  round trip (wall, busy work included) {r['wall_s'] * 1e3:.3f} ms",
             f"  client CPU {us(r['client_cpu_s'])}, server CPU {us(r['server_cpu_s'])}, "
             f"one-way latency beyond them {us(r['latency_one_way_s'])}",
             "scenario fields (each side's work split evenly between its two messages):"]
    lines += [f"  {k}: {v:.3g}" for k, v in result["scenario"].items()]
    return "\n".join(lines)


def write_stack_profile(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write("# The real messaging stack's work per round: `starsim calibrate stack`\n")
        yaml.safe_dump(result, f, sort_keys=False)
    return path
