"""``starsim models ...``: the command-line side of the offline models (parsers and handlers).

Importing this module does not import torch; the handlers do.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..errors import StarsimError
from ..flags import number, seconds
from ..models.specs import need_torch, parse_tree
from ..streams import Stream, rng_for

DEFAULT_PAIR = Path("models/pairs/stdlib-pair")


def cmd_build_pair(args: argparse.Namespace) -> int:
    need_torch()
    from .pair import QUICK, PairSettings, build_pair

    settings = dataclasses.replace(QUICK if args.quick else PairSettings(), seed=args.seed)  # QUICK stays as is
    say = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    info = build_pair(args.out, settings, say=say)
    h = info["holdout"]
    print(f"wrote {args.out} in {info['provenance']['wall_s']} s: target loss {h['target_loss']} "
          f"(top-1 accuracy {h['target_top1_accuracy']}), draft/target top-1 agreement "
          f"{h['draft_target_top1_agreement']} on held-out text")
    return 0


def _at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse turns the error into a usage message, exit 2)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return n


def add_parsers(sub) -> None:
    m = sub.add_parser("models", help="build the offline draft/target pair (torch)")
    msub = m.add_subparsers(dest="models_command", metavar="WHAT")
    b = msub.add_parser(
        "build-pair", help="train a target and distil a draft on the CPython stdlib sources",
        description="Train a target and distil a draft on the CPython stdlib sources (about 5 minutes on a "
        "2-core CPU; --quick: seconds). The same seed, Python, torch, transformers and tokenizers on a CPU of "
        "the same instruction set (torch's CPU capability: AVX512, AVX2) give the same weights, byte for byte; "
        "pair.yaml records them all, with the weights' sha256.")
    b.add_argument("--out", type=Path, default=DEFAULT_PAIR, help=f"output directory (default {DEFAULT_PAIR})")
    b.add_argument("--quick", action="store_true", help="a tiny pair in seconds (tests, smoke runs)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress lines")
    b.set_defaults(func=cmd_build_pair)

    def no_what(args):
        m.print_help()
        return 2

    m.set_defaults(func=no_what)


def _cli_real(args: argparse.Namespace, role: str):
    """The command line's model choice as a scenario's ``real:`` section (so one loader and one
    set of checks serve both): ``--model DIR`` or ``--spec NAME`` for ``role``, else ``--pair``."""
    from pydantic import ValidationError

    from ..scenario import Real

    key = f"{role}_model"
    if args.model and args.spec:
        raise StarsimError("give one of --model and --spec")
    data: dict = {"dtype": args.dtype}
    if args.model:
        data[key] = {"kind": "pretrained", "path": str(Path(args.model).resolve())}
    elif args.spec:
        data[key] = {"kind": "spec", "spec": args.spec}
    else:
        data["pair"] = str(args.pair.resolve())
    if role == "draft" and key in data:
        data["target_model"] = data[key]  # a draft server needs no target; this satisfies the check
    try:
        return Real.model_validate(data)
    except ValidationError as e:
        raise StarsimError(f"--{role}: {e.errors()[0]['msg']}") from None


def _load_role(args: argparse.Namespace, role: str):
    """(Real section, model source, model) for ``role`` on ``--device``."""
    from .models import check_device, load_model, resolve_dtype, role_source

    real = _cli_real(args, role)
    src = role_source(real, role)
    if src["kind"] == "pretrained" and not (Path(src["path"]) / "config.json").is_file():
        hint = "; build one with `starsim models build-pair`" if real.pair and not args.model else ""
        raise StarsimError(f"{src['path']}: no {role} model there (no config.json){hint}")
    check_device(args.device, "--device")
    return real, src, load_model(src, role, args.device, resolve_dtype(real, src, args.device))


def cmd_draft_server(args: argparse.Namespace) -> int:
    """Serve drafts until Ctrl-C (for a star across machines)."""
    need_torch()
    import logging

    import torch

    from .server import DraftServer, ServerLimits, ServerOptions
    from .speculation import Drafter

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    tree = parse_tree(args.tree)
    _, src, model = _load_role(args, "draft")
    drafter = Drafter(model, tree.top_k, tree.depth, tree.tokens)
    options = ServerOptions(policy=args.policy, batch_max=args.batch_max, batch_window_s=args.batch_window,
                            memory_bytes=args.memory_bytes, pipeline=args.pipeline)
    limits = ServerLimits(max_targets=args.max_targets, max_pending=args.max_pending,
                          handshake_timeout_s=args.handshake_timeout)
    server = DraftServer(drafter, bind=args.bind, options=options, limits=limits, token=args.token).start()
    kind = "EAGLE head (targets send hidden states)" if drafter.needs_hidden else "causal LM"
    print(f"draft server on {server.address} ({src.get('path') or src.get('spec')}, {kind}, on {args.device}, "
          f"tree {args.tree}, policy {args.policy}, batches of up to {args.batch_max}); Ctrl-C to stop", flush=True)
    try:
        # a timed wait: Ctrl-C is seen within a second even when the kernel hands SIGINT to
        # another thread (an untimed wait would then never wake to run Python's handler)
        while not server.stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        print(f"served {len(server.intervals)} drafts", flush=True)
    return 0


def cmd_target(args: argparse.Namespace) -> int:
    """One target against a draft server (for a star across machines); prints its summary."""
    need_torch()
    import time

    import torch

    from ..metrics import summarize
    from ..result import dump_json
    from .client import DraftClient
    from .models import eos_ids, prompt_text, source_vocab, tokenizer_encode
    from .worker import TargetWorker, WorkerOptions, assemble_records

    torch.set_num_threads(args.threads)
    real, src, model = _load_role(args, "target")
    try:
        client = DraftClient(args.connect, token=args.token, timeout_s=args.timeout)
    except OSError as e:
        raise StarsimError(f"--connect {args.connect}: {e}") from None
    encode = tokenizer_encode(real)
    rng = rng_for(args.seed, Stream.PROMPT_IDS)
    if encode is None:  # a random-weight spec target: random prompt ids
        prompts = [rng.integers(0, source_vocab(src, "target"), args.prompt_tokens).tolist()
                   for _ in range(args.requests)]
    else:
        ids = encode(prompt_text(real.pair if real.target_model is None else None))
        step = max(1, (len(ids) - args.prompt_tokens) // max(1, args.requests))
        prompts = [list(ids[i * step: i * step + args.prompt_tokens]) for i in range(args.requests)]
    clock0 = time.monotonic()
    w = TargetWorker(args.index, model, client, clock0, WorkerOptions(device=args.device, eos=eos_ids(model, src),
                                                                    temperature=args.temperature, seed=args.seed))
    for rid, prompt in enumerate(prompts):
        w.run_request(rid, prompt, args.output_tokens, t_arrival=time.monotonic() - clock0)
    w.close()
    part = {"rounds": w.rounds, "requests": w.requests, "intervals": w.intervals}
    records = assemble_records([part], {
        "source": "real", "mode": "star", "t_end": 0.0, "warmup_s": 0.0, "cooldown_s": 0.0, "window_s": 0.2,
        "draft_engines": [], "draft_device": None,
        "targets": [{"index": args.index, "name": f"target-{args.index}", "device": args.device}]})
    summary = summarize(records)
    summary["provenance"] = {
        "source": "real", "role": "target", "model": src, "device": args.device, "draft_server": args.connect,
        "tag": client.tag, "same_host": client.same_host, "clock_offset_s": w.clock_offset_s,
        "clock_error_s": w.clock_error_s, "fallback_at_s": w.fallback_at, "temperature": args.temperature,
    }
    if args.out:
        records.write(args.out)
        dump_json(summary, args.out / "summary.json")
    clock = ("same host" if client.same_host else
             f"server clock offset {w.clock_offset_s:+.6f} s (+/- {w.clock_error_s * 1e3:.3f} ms)"
             if w.clock_error_s is not None else "server clock not aligned (old server)")
    print(f"target {args.index} (tag {client.tag}, {clock}): {summary['requests_completed']} requests, "
          f"{summary['throughput_tokens_per_s']:.1f} tok/s, {summary['mean_accepted_tokens']:.2f} tokens per round"
          + (f"; lost the draft server at {w.fallback_at:.3f} s" if w.fallback_at is not None else ""))
    return 0


def _model_args(p: argparse.ArgumentParser, role: str) -> None:
    p.add_argument("--pair", type=Path, default=DEFAULT_PAIR,
                   help=f"offline pair directory, its {role}/ is used (default {DEFAULT_PAIR})")
    p.add_argument("--model", help=f"a local Hugging Face model directory as the {role} (instead of --pair)")
    p.add_argument("--spec", help=f"a calibration spec's {role} with random weights (timing only; instead of --pair)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:K")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto (default): float32 on a CPU, the spec's or checkpoint's on a GPU")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def add_server_parsers(sub) -> None:
    from .server_options import HANDSHAKE_TIMEOUT_S, MAX_PENDING, MAX_TARGETS

    d = sub.add_parser("draft-server", help="serve draft trees over TCP to targets on other machines (torch)")
    _model_args(d, "draft")
    d.add_argument("--bind", default="127.0.0.1:7070", help="HOST:PORT (default 127.0.0.1:7070; 0.0.0.0 for all)")
    d.add_argument("--tree", default="4,4,16", help="TOP_K,DEPTH,TOKENS (default 4,4,16)")
    d.add_argument("--policy", default="fifo", help="engine policy (default fifo)")
    d.add_argument("--token", help="shared token targets must present")
    d.add_argument("--batch-max", type=_at_least_one, default=1,
                   help="draft up to this many waiting targets in one batched forward (default 1: one at a time)")
    d.add_argument("--batch-window", type=seconds, default=0.0, metavar="SECONDS",
                   help="with fewer than --batch-max waiting, wait up to this long for more (default 0)")
    d.add_argument("--memory-bytes", type=_at_least_one, default=None, metavar="BYTES",
                   help="draft KV memory for the targets' caches: least recently used ones are dropped beyond it "
                        "(and re-encoded on their next request; default: unlimited)")
    d.add_argument("--pipeline", action="store_true",
                   help="pipelined drafting: draft each target's next tree while it verifies (greedy drafts)")
    d.add_argument("--max-targets", type=_at_least_one, default=MAX_TARGETS, metavar="N",
                   help=f"targets served at once, a thread each; more are refused (default {MAX_TARGETS})")
    d.add_argument("--max-pending", type=_at_least_one, default=MAX_PENDING, metavar="N",
                   help=f"connections waiting for their handshake (no thread each); more are closed at once "
                        f"(default {MAX_PENDING})")
    d.add_argument("--handshake-timeout", type=number(0.0, 3600.0, above=True), default=HANDSHAKE_TIMEOUT_S,
                   metavar="SECONDS", help=f"close a connection that has not sent its HELLO this long after "
                                           f"connecting (default {HANDSHAKE_TIMEOUT_S:g})")
    d.set_defaults(func=cmd_draft_server)

    t = sub.add_parser("target", help="run requests on this machine against a draft server (torch)")
    t.add_argument("--connect", required=True, metavar="HOST:PORT", help="the draft server")
    _model_args(t, "target")
    t.add_argument("--requests", type=int, default=8, help="requests to run (default 8)")
    t.add_argument("--prompt-tokens", type=int, default=64, help="prompt length (default 64)")
    t.add_argument("--output-tokens", type=int, default=64, help="tokens to generate per request (default 64)")
    t.add_argument("--index", type=int, default=0, help="this target's index in the records (default 0)")
    t.add_argument("--temperature", type=number(0.0), default=0.0,
                   help="0: greedy (default); > 0: speculative sampling at this temperature")
    t.add_argument("--seed", type=int, default=0, help="sampling and prompt seed (default 0)")
    t.add_argument("--token", help="the server's shared token")
    t.add_argument("--timeout", type=number(0.0, above=True), default=60.0,
                   help="seconds to wait for a draft (default 60)")
    t.add_argument("--out", type=Path, help="write this target's tables and summary here")
    t.set_defaults(func=cmd_target)
