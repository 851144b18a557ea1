"""``starsim models ...``: the command-line side of the offline models (parsers and handlers).

Importing this module does not import torch; the handlers do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..calibrate.commands import _need_torch, _tree
from ..errors import StarsimError

DEFAULT_PAIR = Path("models/pairs/stdlib-pair")


def cmd_build_pair(args: argparse.Namespace) -> int:
    _need_torch()
    from .pair import QUICK, PairSettings, build_pair

    settings = dataclasses.replace(QUICK if args.quick else PairSettings(), seed=args.seed)  # QUICK stays as is
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    info = build_pair(args.out, settings, say=say)
    h = info["holdout"]
    print(f"wrote {args.out} in {info['provenance']['wall_s']} s: target loss {h['target_loss']} "
          f"(top-1 accuracy {h['target_top1_accuracy']}), draft/target top-1 agreement "
          f"{h['draft_target_top1_agreement']} on held-out text")
    return 0


def add_parsers(sub) -> None:
    m = sub.add_parser("models", help="build the offline draft/target pair (torch)")
    msub = m.add_subparsers(dest="models_command", metavar="WHAT")
    b = msub.add_parser("build-pair", help="train a target and distil a draft on the CPython stdlib sources")
    b.add_argument("--out", type=Path, default=DEFAULT_PAIR, help=f"output directory (default {DEFAULT_PAIR})")
    b.add_argument("--quick", action="store_true", help="a tiny pair in seconds (tests, smoke runs)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=cmd_build_pair)

    def no_what(args):
        m.print_help()
        return 2

    m.set_defaults(func=no_what)


def cmd_draft_server(args: argparse.Namespace) -> int:
    """Serve drafts until Ctrl-C (for a star across machines)."""
    _need_torch()
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    from .server import DraftServer
    from .spec import Drafter

    if not (args.pair / "draft").is_dir():
        raise StarsimError(f"--pair {args.pair}: no draft/ model there; build one with `starsim models build-pair`")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    tree = _tree(args.tree)
    model = AutoModelForCausalLM.from_pretrained(args.pair / "draft").eval()
    server = DraftServer(Drafter(model, tree.top_k, tree.depth, tree.tokens), bind=args.bind, policy=args.policy,
                         token=args.token).start()
    print(f"draft server on {server.address} (tree {args.tree}, policy {args.policy}); Ctrl-C to stop", flush=True)
    try:
        server.stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        print(f"served {len(server.intervals)} drafts", flush=True)
    return 0


def cmd_target(args: argparse.Namespace) -> int:
    """One target against a draft server (for a star across machines); prints its summary."""
    _need_torch()
    import time

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from ..metrics import summarize
    from ..result import dump_json
    from .models import prompt_text
    from .server import DraftClient
    from .worker import TargetWorker, assemble_records

    if not (args.pair / "target").is_dir():
        raise StarsimError(f"--pair {args.pair}: no target/ model there; build one with `starsim models build-pair`")
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(args.pair / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.pair / "target").eval()
    try:
        client = DraftClient(args.connect, token=args.token)
    except OSError as e:
        raise StarsimError(f"--connect {args.connect}: {e}") from None
    ids = tok.encode(prompt_text(args.pair)).ids
    clock0 = time.monotonic()
    # Server timestamps are on the server's clock: comparable only when both run on one host.
    w = TargetWorker(args.index, model, client, clock0, device=args.device, eos=model.config.eos_token_id,
                     temperature=args.temperature, seed=args.seed)
    step = max(1, (len(ids) - args.prompt_tokens) // max(1, args.requests))
    for rid in range(args.requests):
        w.run_request(rid, ids[rid * step: rid * step + args.prompt_tokens], args.output_tokens,
                      t_arrival=time.monotonic() - clock0)
    w.close()
    part = {"rounds": w.rounds, "requests": w.requests, "intervals": w.intervals}
    records = assemble_records([part], {
        "source": "real", "mode": "star", "t_end": 0.0, "warmup_s": 0.0, "cooldown_s": 0.0, "window_s": 0.2,
        "draft_engines": [], "draft_device": None,
        "targets": [{"index": args.index, "name": f"target-{args.index}", "device": args.device}]})
    summary = summarize(records)
    if args.out:
        records.write(args.out)
        dump_json(summary, args.out / "summary.json")
    print(f"target {args.index} (tag {client.tag}): {summary['requests_completed']} requests, "
          f"{summary['throughput_tokens_per_s']:.1f} tok/s, {summary['mean_accepted_tokens']:.2f} tokens per round"
          + (f"; lost the draft server at {w.fallback_at:.3f} s" if w.fallback_at is not None else ""))
    return 0


def add_server_parsers(sub) -> None:
    d = sub.add_parser("draft-server", help="serve draft trees over TCP to targets on other machines (torch)")
    d.add_argument("--pair", type=Path, default=DEFAULT_PAIR, help=f"pair directory (default {DEFAULT_PAIR})")
    d.add_argument("--bind", default="127.0.0.1:7070", help="HOST:PORT (default 127.0.0.1:7070; 0.0.0.0 for all)")
    d.add_argument("--tree", default="4,4,16", help="TOP_K,DEPTH,TOKENS (default 4,4,16)")
    d.add_argument("--policy", default="fifo", help="engine policy (default fifo)")
    d.add_argument("--token", help="shared token targets must present")
    d.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    d.set_defaults(func=cmd_draft_server)

    t = sub.add_parser("target", help="run requests on this machine against a draft server (torch)")
    t.add_argument("--connect", required=True, metavar="HOST:PORT", help="the draft server")
    t.add_argument("--pair", type=Path, default=DEFAULT_PAIR, help=f"pair directory (default {DEFAULT_PAIR})")
    t.add_argument("--device", default="cpu", help="cpu (default)")
    t.add_argument("--requests", type=int, default=8, help="requests to run (default 8)")
    t.add_argument("--prompt-tokens", type=int, default=64, help="prompt length (default 64)")
    t.add_argument("--output-tokens", type=int, default=64, help="tokens to generate per request (default 64)")
    t.add_argument("--index", type=int, default=0, help="this target's index in the records (default 0)")
    t.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (default); > 0: speculative sampling at this temperature")
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--token", help="the server's shared token")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    t.add_argument("--out", type=Path, help="write this target's tables and summary here")
    t.set_defaults(func=cmd_target)
