"""Does a batched forward pay on this CPU? The real batched target at batch 1, 2, 4, 8.

Serves the same requests (Python-source prompts, greedy, a fixed output length) with the
offline pair through :func:`starsim.real.serving_loop.serve_batch`: the simulator's step rules
decide each step, :class:`starsim.real.batch_verify.BatchVerifier` runs it in one forward, and
a local drafter drafts each decoding sequence's tree (in this process, on the same core; in a
star it is another process). One process, ``--threads`` torch threads, pinned to ``--cpu``.

For each ``max_seqs`` it prints the time in the target's forwards, the target's tokens per
second on that time (what batching changes), the ratio to batch 1, and the end-to-end rate
with the local drafting included. A benchmark: run on demand, numbers move with the machine.

Run: ``python analysis/batch_target_bench.py [--pair models/pairs/stdlib-pair] [--requests 16]
[--output 64] [--batches 1,2,4,8] [--cpu 0]`` (needs ``starsim models build-pair``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _cli import REPO, write_results  # analysis/ is on sys.path when a script runs

PROMPTS = ["def main(argv=None):\n    ", "import os\nimport sys\n\nclass ", "    for i in range(len(self.",
           "    def __init__(self, *args, **kwargs):\n        ", "try:\n    import ", "    return [x for x in "]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default=str(REPO / "models" / "pairs" / "stdlib-pair"), help="a built pair's folder")
    ap.add_argument("--requests", type=int, default=16, help="requests, all arriving at once (default 16)")
    ap.add_argument("--output", type=int, default=64, help="tokens each request generates (default 64)")
    ap.add_argument("--batches", default="1,2,4,8", help="max_seqs values (default 1,2,4,8)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--cpu", type=int, default=0, help="the core to pin to (default 0; -1: the OS places it)")
    ap.add_argument("--plain", action="store_true", help="no draft: plain decoding, one token a step")
    return ap.parse_args()


def main() -> int:
    a = _args()
    pair = Path(a.pair)
    if not (pair / "target").is_dir() or not (pair / "draft").is_dir():
        print(f"error: no built pair at {pair}: run `starsim models build-pair` first", file=sys.stderr)
        return 2
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from starsim.real.serving_loop import local_drafts, serve_batch
    from starsim.real.speculation import Drafter
    from starsim.serving import StepScheduler

    if a.cpu >= 0:
        os.sched_setaffinity(0, {a.cpu})
    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(str(pair / "tokenizer.json"))
    target = AutoModelForCausalLM.from_pretrained(pair / "target").eval()
    draft = AutoModelForCausalLM.from_pretrained(pair / "draft").eval()
    reqs = [(0, tok.encode(PROMPTS[i % len(PROMPTS)]).ids, a.output) for i in range(a.requests)]
    lines = [f"Pair `{pair.name}`, {a.requests} requests x {a.output} tokens, greedy, "
             f"{'plain decoding' if a.plain else 'speculative (tree 4, 4, 16)'}; torch {torch.__version__}, "
             f"{a.threads} thread(s) on {'core ' + str(a.cpu) if a.cpu >= 0 else 'any core'} of "
             f"{_cpu_model()} ({os.cpu_count()} cores).", "",
             "| max_seqs | steps | mean batch | target forward s | target tok/s | x batch 1 | end-to-end tok/s |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    base = None
    for b in [int(x) for x in a.batches.split(",")]:
        drafter = Drafter(draft, 4, 4, 16)
        verifier = _Timed(target)
        per_round = 1 if a.plain else drafter.max_nodes + 1
        sched = StepScheduler(max_seqs=b, budget=None, kv_capacity=None, per_round=per_round, reserve_whole=False)
        tree = None if a.plain else local_drafts(drafter)
        t0 = time.perf_counter()
        r = serve_batch(verifier, sched, reqs, tree, drafter.free)
        wall = time.perf_counter() - t0
        tokens = sum(len(o) for o in r.outputs)
        rate = tokens / verifier.busy
        base = base or rate
        lines.append(f"| {b} | {len(r.batch)} | {sum(r.batch) / len(r.batch):.2f} | {verifier.busy:.2f} | "
                     f"{rate:.0f} | {rate / base:.2f} | {tokens / wall:.0f} |")
        print(lines[-1], flush=True)
    write_results("real", "batch-target-bench", "\n".join(lines),
                  " ".join(["python analysis/batch_target_bench.py", *sys.argv[1:]]))
    return 0


def _cpu_model() -> str:
    """This machine's CPU, as /proc/cpuinfo names it (the table says what it was measured on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine()


def _Timed(model):
    """A BatchVerifier that adds up the wall time of its steps (its forwards and bookkeeping)."""
    from starsim.real.batch_verify import BatchVerifier

    class Timed(BatchVerifier):
        busy = 0.0

        def step(self, items):
            t = time.perf_counter()
            try:
                return super().step(items)
            finally:
                self.busy += time.perf_counter() - t

    return Timed(model)


if __name__ == "__main__":
    sys.exit(main())
