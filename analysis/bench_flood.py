"""The draft server under a connection flood: threads, memory and a real target's round time.

A draft server (a drafter that does no work, so the numbers are the server's own) is
flooded in steps: idle connections that never speak, half-open ones that stop inside
their HELLO, then more than ``max_pending``. At each step it prints the process's threads,
its resident memory, the server's pending/refused/timed-out counts, and the median round
time of a target that connects then (and its ratio to the unflooded one). Finally it waits
for the handshake timeout and shows the silent connections closed.

    python analysis/bench_flood.py                 # 1,000 idle + 200 half-open, ~20 s
    python analysis/bench_flood.py --idle 3000 --max-pending 2000
"""

from __future__ import annotations

import argparse
import logging
import resource
import socket
import statistics
import sys
import threading
import time

from _cli import status_mb  # analysis/ is on sys.path when a script runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=1000, help="idle connections (default 1000)")
    ap.add_argument("--half-open", type=int, default=200, help="connections cut inside their HELLO (default 200)")
    ap.add_argument("--max-pending", type=int, default=None, help="the server's max_pending (default: its own)")
    ap.add_argument("--handshake-timeout", type=float, default=5.0, help="seconds (default 5)")
    ap.add_argument("--rounds", type=int, default=2000, help="rounds the probing target runs (default 2000)")
    args = ap.parse_args()

    from starsim.calibrate.stack import _FixedDrafter
    from starsim.net import parse_address
    from starsim.real import protocol as P
    from starsim.real.client import DraftClient
    from starsim.real.server import DraftServer, ServerLimits
    from starsim.real.server_options import MAX_PENDING

    logging.getLogger("starsim.draft_server").setLevel(logging.ERROR)  # a line per 100 closed: not the table
    need = 2 * (args.idle + args.half_open) + 256  # both ends of each connection live in this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"bench_flood.py: needs {need} file descriptors, the hard limit is {hard} (ulimit -n)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    max_pending = args.max_pending or MAX_PENDING
    limits = ServerLimits(max_pending=max_pending, handshake_timeout_s=args.handshake_timeout)
    server = DraftServer(_FixedDrafter(1000, 16, 4), limits=limits).start()
    addr = parse_address(server.address)
    socks: list[socket.socket] = []

    def probe() -> tuple[float, int]:
        """(median round time, this process's threads while the target is connected)."""
        try:
            client = DraftClient(server.address)
        except (P.ProtocolError, OSError):  # over max_pending: refused at the door, as it should be
            return float("nan"), threading.active_count()
        threads = threading.active_count()
        times = []
        ctx = list(range(1, 33))
        for i in range(args.rounds):
            t = time.perf_counter()
            client.draft(ctx if i == 0 else [5, 6], start=i == 0)
            times.append(time.perf_counter() - t)
        client.close()
        return statistics.median(times), threads

    rows = []

    def step(label: str) -> None:
        time.sleep(0.3)  # let the door take what is waiting
        r, threads = probe()
        rows.append((label, threads, status_mb("VmRSS"), server.pending, server.refused, server.timed_out, r))

    probe()  # warm-up
    step("no flood")
    for _ in range(args.idle):
        socks.append(socket.create_connection(addr))
    step(f"+{args.idle} idle")
    frame = P.hello().encode()
    for i in range(args.half_open):
        s = socket.create_connection(addr)
        s.sendall(frame[: 1 + i % (len(frame) - 1)])
        socks.append(s)
    step(f"+{args.half_open} half-open")
    t0 = time.monotonic()
    while server.pending and time.monotonic() - t0 < args.handshake_timeout + 10:
        time.sleep(0.1)
    step(f"after {args.handshake_timeout:g} s (timeout)")
    base = rows[0][-1]
    print(f"draft server, max_pending {max_pending}, handshake timeout {args.handshake_timeout:g} s; "
          f"a target's median round over {args.rounds} rounds (a drafter that does no work)\n")
    print("threads: this process's, the probing target connected (main + door + engine + its comm thread)\n")
    print("| state | threads | RSS MB | pending | refused | timed out | round ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for label, th, rss, pend, ref, tout, r in rows:
        served = f"{1e3 * r:.3f} | {r / base:.2f}" if r == r else "refused: busy | -"
        print(f"| {label} | {th} | {rss:.0f} | {pend} | {ref} | {tout} | {served} |")
    for s in socks:
        s.close()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
