"""``starsim calibrate ...``: the command-line side of calibration (parsers and handlers).

Importing this module does not import torch; the handlers do, so ``starsim --help`` stays
fast and the simulator never loads it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import StarsimError
from ..flags import cpu_list, number
from ..models.specs import need_torch, parse_tree

DEFAULT_OUT = Path("models/profiles")


def cmd_compute(args: argparse.Namespace) -> int:
    from ..models.specs import list_specs, load_spec
    from ..profiles import ProfileFile

    if args.list:
        from ..models.specs import SPEC_DIR

        for name in list_specs():
            s = load_spec(name)
            print(f"{name:24s} {'cpu ok' if s.cpu_ok else 'gpu   '}  {s.description}")
        print(f"(files in {SPEC_DIR}; a local Hugging Face model directory also works as --spec)")
        return 0
    if not args.spec:
        raise StarsimError("--spec: required (a name from --list, a spec file, or a local HF model dir)")
    spec = load_spec(args.spec)
    need_torch()
    import torch

    from .compute import GRIDS, QUICK, Settings, calibrate, save

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise StarsimError(f"--device {args.device}: CUDA is not available in this torch build ({torch.__version__})")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise StarsimError(f"--device: expected cpu or cuda[:N], got {args.device!r}")
    dev_type = "cuda" if args.device.startswith("cuda") else "cpu"
    if dev_type == "cpu" and not spec.cpu_ok and not args.force:
        raise StarsimError(
            f"--spec {spec.name}: sized for a GPU (random init and timing would take very long on a CPU); "
            "use a cpu-ok spec (see --list) or --force"
        )
    grid = QUICK if args.grid == "quick" else GRIDS[dev_type]
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    bad = [r for r in roles if r not in ("target", "draft")]
    if bad:
        raise StarsimError(f"--roles: unknown role(s) {', '.join(bad)}; expected target and/or draft")
    from .compute import DRAFT_OPS, STEP_OP, TARGET_OPS

    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip()) if args.ops else None
    if ops is not None:
        known = {o for r in roles for o in ((*TARGET_OPS, STEP_OP) if r == "target" else DRAFT_OPS)}
        bad = [o for o in ops if o not in known]
        if bad:
            raise StarsimError(f"--ops: {', '.join(bad)} not among the ops of --roles {','.join(roles)} "
                               f"({', '.join(sorted(known))})")
    extra = _placement(args.cpus)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    settings = Settings(
        spec=spec,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        tree=parse_tree(args.tree),
        grid=grid,
        seed=args.seed,
        roles=roles,
        ops=ops,
        progress=say,
        progress_bar=not (args.quiet or args.verbose),
        extra={"command": "starsim calibrate " + shlex.join(sys.argv[2:] if args.argv is None else args.argv),
               "grid_name": args.grid, **extra},
    )
    t0 = time.perf_counter()
    from ..real.resources import pinned

    with pinned(args.cpus):  # before torch starts its threads: they inherit the cores
        profiles: dict[str, ProfileFile] = calibrate(settings)
    if not profiles:
        print("interrupted before any operation was measured twice: nothing written", file=sys.stderr)
        return 130
    paths = save(profiles, spec, args.out, update=ops is not None)
    print(f"{spec.name} on {args.device}: {time.perf_counter() - t0:.1f} s")
    for (role, prof), path in zip(profiles.items(), paths):
        print(f"\n{role}: {path}")
        print(_fit_table(prof))
        if role == "target":
            _compute_step(prof, path)
    print("\nuse in a scenario, e.g.:")
    print(_snippet(profiles, paths))
    partial = [p.provenance["interrupted"] for p in profiles.values() if "interrupted" in p.provenance]
    if partial:
        print(f"interrupted: {partial[0]}; what was measured is written (provenance.interrupted)", file=sys.stderr)
        return 130
    return 0


def _compute_step(prof, path: Path) -> None:
    """The serving step fitted from this run's ``step`` rows, written beside the target profile
    at ``path`` and printed (nothing without step rows)."""
    from .compute import step_file

    doc = step_file(prof)
    if doc is None:
        return
    out, fit = _write_step_doc(doc, path, "calibrate compute"), doc["provenance"]["fit"]
    held = f", {fit['held_out_mape_pct']:g}% on {fit['held_out_points']} held out" if fit["held_out_points"] else ""
    print(f"\nserving step: {out}  (MAPE {fit['mape_pct']:g}% on {fit['points']} measured steps{held})")
    print("  " + ", ".join(f"{k} {v:.4g}" for k, v in doc["step_time"].items()))
    print(f"  use as targets[].serving.step_time: {{path: {out}}}")


def _placement(cpus: frozenset[int] | None) -> dict:
    """``--cpus`` checked before any work, as the profile's provenance records it."""
    if cpus is None:
        return {}
    from ..real.resources import check_cpus

    check_cpus(cpus, f"--cpus {','.join(map(str, sorted(cpus)))}")
    return {"cpus": sorted(cpus)}


def _fit_table(prof) -> str:
    lines = [f"  {'op':16s} {'points':>6s} {'MAPE':>7s} {'CV MAPE':>8s}  model (seconds)"]
    for name, op in prof.ops.items():
        if op.fit is None:
            # the serving step's fit is its step-cost file; a warm/cold curve is kept as measured
            med = ("whole engine steps, as measured" if "gap_s" not in op.inputs else
                   ", ".join(f"{r[0] * 1e3:g} ms gap: {r[1] * 1e3:.3f} ms" for r in op.rows))
            lines.append(f"  {name:16s} {len(op.rows):6d} {'':>7s} {'':>8s}  {med}")
            continue
        lines.append(
            f"  {name:16s} {len(op.rows):6d} {op.fit.mape_pct:6.2f}% {op.fit.cv_mape_pct:7.2f}%  {op.fit.form}"
        )
    return "\n".join(lines)


def _snippet(profiles, paths, tree=None) -> str:
    by_role = dict(zip(profiles, paths))
    out = []
    if "draft" in by_role:
        out += ["draft:", f"  round_time: {{kind: profile, path: {by_role['draft']}, op: draft_round}}"]
        if tree is not None:  # the profile prices this tree; a scenario must draft the same one
            out += [f"  tree: {{top_k: {tree.top_k}, depth: {tree.depth}, tokens: {tree.tokens}}}"]
    if "target" in by_role:
        p = by_role["target"]
        out += ["targets:", "  - verify_time: {kind: profile, path: " + str(p) + ", op: verify}",
                "    prefill_time: {kind: profile, path: " + str(p) + ", op: prefill}"]
        if "decode" in profiles["target"].ops:
            out += ["    decode_time: {kind: profile, path: " + str(p) + ", op: decode}"]
    return "\n".join(out)


def _import_trees(texts: list[str] | None) -> list:
    """``--tree K,D,T`` (repeatable; ``;`` separates several in one): each checked as a
    scenario's ``draft.tree`` is (tokens within what top-k and depth can hold)."""
    from ..models.specs import parse_tree
    from ..scenario import Tree

    trees = []
    for text in texts or []:
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            t = parse_tree(part)
            why = Tree.problem(t.top_k, t.depth, t.tokens)
            if why:
                raise StarsimError(f"--tree {part}: {why}")
            if t not in trees:
                trees.append(t)
    return trees


def _import_spec(args: argparse.Namespace):
    """The pair to price: ``--spec``, or two bundled configs (``--target``/``--draft``)."""
    from . import gpu_db

    if args.spec and (args.target or args.draft):
        raise StarsimError("give --spec, or --target and --draft, not both")
    if args.target or args.draft:
        if not (args.target and args.draft):
            raise StarsimError("--target and --draft go together (bundled config names, see --list; --draft eagle "
                               "for a one-layer EAGLE head)")
        return gpu_db.bundled_spec(args.target, args.draft)
    if not args.spec:
        raise StarsimError("--spec (or --target and --draft) and --system: required (see --list)")
    from ..models.specs import load_spec

    return load_spec(args.spec)


def cmd_import(args: argparse.Namespace) -> int:
    """Profiles priced from a measured GPU kernel database (``aiconfigurator``)."""
    from . import gpu_db

    gpu_db.require()
    if args.list:
        print(gpu_db.listing())
        return 0
    spec = _import_spec(args)
    if not args.system:
        raise StarsimError("--system: required (see --list for systems)")
    from ..profiles import write_profile

    trees = _import_trees(args.tree)
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    bad = [r for r in roles if r not in ("target", "draft")]
    if bad or not roles:
        raise StarsimError(f"--roles: expected target and/or draft, got {args.roles!r}")
    for flag, v in (("--tp", args.tp), ("--draft-tp", args.draft_tp)):
        if v < 1 or v & (v - 1):
            raise StarsimError(f"{flag}: expected a power of two >= 1, got {v}")
    grid = gpu_db.QUICK if args.grid == "quick" else gpu_db.Grid()
    pair = (["--spec", spec.name] if args.spec else ["--target", args.target, "--draft", args.draft])
    # the target once; the draft once per tree (its rounds are priced for one tree)
    jobs = [(roles, None)] if not trees else (
        [(("target",), None)] if "target" in roles else []) + ([(("draft",), t) for t in trees] if "draft" in roles
                                                               else [])
    t0 = time.perf_counter()
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    written, steps = [], []
    for job_roles, tree in jobs:
        settings = gpu_db.Settings(
            spec=spec, system=args.system, backend=args.backend, backend_version=args.backend_version, tp=args.tp,
            draft_tp=args.draft_tp, dtype=args.dtype, overhead_s=args.overhead_us * 1e-6, roles=job_roles,
            grid=grid, tree=tree,
        )
        # the canonical command (every choice spelled out), so a profile says how to make it again
        settings.command = "starsim calibrate import aiconfigurator " + shlex.join([
            *pair, "--system", args.system, "--backend", args.backend,
            *(["--backend-version", args.backend_version] if args.backend_version else []),
            "--tp", str(args.tp), "--draft-tp", str(args.draft_tp), "--dtype", args.dtype,
            "--overhead-us", f"{args.overhead_us:g}", "--roles", ",".join(job_roles), "--grid", args.grid,
            *(["--tree", f"{tree.top_k},{tree.depth},{tree.tokens}"] if tree is not None else [])])
        profiles, warns = gpu_db.import_profiles(settings, say)
        for w in warns:
            print(f"warning: {w}", file=sys.stderr)
        for role, prof in profiles.items():
            tag = tree if tree is not None and tree != spec.tree else None
            path = write_profile(prof, gpu_db.profile_path(args.out, spec.name, role, prof, tag))
            written.append((role, prof, path, tree))
            if role == "target":  # and its serving step (targets.*.serving.step_time: {path: ...})
                steps.append(_write_step(settings, prof, path))
    version = written[0][1].provenance["backend_version"]
    print(f"{spec.name} on {args.system} ({args.backend} {version}): {time.perf_counter() - t0:.1f} s")
    for role, prof, path, _ in written:
        frac = prof.provenance["measured_fraction"]
        shape = prof.ops["draft_round"].fixed.get("tree") if "draft_round" in prof.ops else None
        on = f", tree {shape['top_k']},{shape['depth']},{shape['tokens']}" if shape else ""
        print(f"\n{role}: {path}  (tp {prof.device['tp']}{on}, overhead {args.overhead_us:g} us per forward)")
        print(_fit_table(prof))
        print("  measured rows: " + ", ".join(f"{op} {100 * f:.0f}%" for op, f in frac.items()))
    for path, fit in steps:
        print(f"\nserving step: {path}  (composed step within {fit['composed_step_mape_pct']:g}% of the estimator's "
              f"own sum; use as targets[].serving.step_time: {{path: {path}}})")
    target = [(prof, path) for role, prof, path, _ in written if role == "target"]
    drafts = [(prof, path, tree or spec.tree) for role, prof, path, tree in written if role == "draft"]
    for draft in drafts or [None]:  # one snippet per draft profile (a target alone: one)
        paths = [path for _, path in target]
        profs = {"target": target[0][0]} if target else {}
        if draft is not None:
            profs["draft"] = draft[0]
            paths.append(draft[1])
        tree = draft[2] if draft is not None else None
        print("\nuse in a scenario, e.g.:" if len(drafts) < 2 else f"\nfor tree {tree.top_k},{tree.depth},"
              f"{tree.tokens}, e.g.:")
        print(_snippet(profs, paths, tree))
    return 0


def _write_step(settings, prof, path: Path) -> tuple[Path, dict]:
    """The target's serving step-cost file beside its profile (``.step.yaml``); (path, fit errors)."""
    from . import gpu_step

    cost = gpu_step.import_step(settings)
    doc = gpu_step.step_doc(cost, prof, settings.command, cost["kv"])
    return _write_step_doc(doc, path, "calibrate import aiconfigurator"), cost["fit"]


def _write_step_doc(doc: dict, profile_path: Path, tool: str) -> Path:
    """A step-cost file beside the target profile at ``profile_path``: ``<profile>.step.yaml``."""
    import yaml

    out = profile_path.with_name(profile_path.name[: -len(".yaml")] + ".step.yaml")
    out.write_text(f"# A serving target's engine step (starsim {tool}); see scenarios/README.md\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    return out


def cmd_refit(args: argparse.Namespace) -> int:
    """Fit profiles again from their stored measurements, in place (no timing)."""
    from ..profiles import read_profile, refit, write_profile

    for path in args.profiles:
        old = read_profile(path)
        new = refit(old)
        write_profile(new, path)
        for name, op in new.ops.items():
            if op.fit is not None and name in old.ops and old.ops[name].fit is not None:
                print(f"{path.name} {name}: CV MAPE {old.ops[name].fit.cv_mape_pct:.1f}% -> {op.fit.cv_mape_pct:.1f}%"
                      f" ({op.fit.form})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Agreement of two profiles of the same spec: per op, point by point, raw and normalized
    for the machine's speed beside each point (see :mod:`starsim.calibrate.compare`)."""
    from ..profiles import read_profile
    from .compare import agreement, format_agreement

    a, b = read_profile(args.a), read_profile(args.b)
    if args.fit:
        return _compare_fit(args, a, b)
    rows = agreement(a, b)
    print(f"A: {args.a} ({a.provenance.get('date')})\nB: {args.b} ({b.provenance.get('date')})")
    print(format_agreement(rows))
    mids = [abs(r.raw_pct) for r in rows]
    norms = [abs(r.norm_pct) for r in rows if r.norm_pct is not None]
    if rows:
        print(f"median point, over ops: |B vs A| raw {np.median(mids):.2f}% (max {max(mids):.2f}%)"
              + (f", normalized {np.median(norms):.2f}% (max {max(norms):.2f}%)" if norms else
                 ", normalized: - (a profile without per-point reference times; recalibrate to get them)"))
    ra, rb = a.provenance.get("reference_matmul_s"), b.provenance.get("reference_matmul_s")
    if ra and rb:  # how much of the difference is the machine's speed at the time
        ta, tb = (ra["before"] + ra["after"]) / 2, (rb["before"] + rb["after"]) / 2
        us = lambda r: f"{r['before'] * 1e6:.0f}->{r['after'] * 1e6:.0f} us"  # noqa: E731
        print(f"machine speed (reference matmul, mean of before/after): B vs A {100 * (tb - ta) / ta:+.2f}% "
              f"(A {us(ra)}, B {us(rb)})")
    return 0


def _compare_fit(args: argparse.Namespace, a, b) -> int:
    """``compare --fit``: A's measured points against B's fit, as the GPU check's step 2."""
    from .compare import against_fit, fit_table

    role = str(a.model.get("role", ""))
    res = against_fit(a, b, role)
    print(f"A: {args.a} ({a.provenance.get('date')}), measured\nB: {args.b} ({b.provenance.get('date')}), its fit")
    print("\n".join(fit_table(res.ops)))
    for n in res.notes:
        print(f"- {n}")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    """The GPU check (see :mod:`starsim.calibrate.gpu_check`); a missing prerequisite is a
    StarsimError (one line, exit 2)."""
    from .gpu_check import run

    argv = sys.argv[2:] if args.argv is None else args.argv
    return run(args, "starsim calibrate " + shlex.join(argv), by="starsim calibrate gpu-check")


def cmd_link(args: argparse.Namespace) -> int:
    from . import link

    if args.serve:
        link.serve(args.bind, ready=lambda a: print(f"link peer listening on {a} (Ctrl-C to stop)", flush=True))
        return 0
    kw = dict(link.QUICK) if args.quick else {}
    result = link.measure(peer=args.connect, hidden_size=args.hidden_size, **kw)
    print(link.format_result(result))
    if args.out:
        out = args.out / link.default_profile_name(result) if args.out.suffix == "" else args.out
        print(f"\nwrote {link.write_link_profile(result, out)}")
    print("\nscenario snippet:")
    print(link.suggest_link_yaml(result))
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from . import stack

    result = stack.measure_stack(rounds=args.rounds, passes=args.passes, tree_tokens=args.tree_tokens,
                                 new_tokens=args.new_tokens, draft_busy_s=args.draft_busy_ms / 1e3,
                                 target_busy_s=args.target_busy_ms / 1e3)
    print(stack.format_result(result))
    if args.out:
        print(f"\nwrote {stack.write_stack_profile(result, args.out)}")
    return 0


def _import_parser(csub) -> None:
    """``calibrate import``'s options."""
    im = csub.add_parser("import", help="profiles from a measured GPU kernel database (no GPU needed)")
    im.add_argument("source", choices=["aiconfigurator"],
                    help="aiconfigurator: NVIDIA's aiconfigurator-core database (pip install -e '.[gpu-db]')")
    im.add_argument("--list", action="store_true", help="systems, backends and their data versions, bundled models")
    im.add_argument("--spec", help="model spec name (models/specs, see --list), spec file, or local HF model dir")
    im.add_argument("--target", help="instead of --spec: a bundled model config to verify with (see --list), "
                    "e.g. Qwen/Qwen3-8B")
    im.add_argument("--draft", help="with --target: a bundled model config to draft with, or eagle (a one-layer "
                    "EAGLE head at the target's width)")
    im.add_argument("--tree", action="append", metavar="K,D,T",
                    help="price the draft's rounds for this tree TOP_K,DEPTH,TOKENS instead of the spec's; "
                    "repeat (or separate with ;) for several trees, one draft profile each")
    im.add_argument("--system", help="GPU system, e.g. h100_sxm, h200_sxm, a100_sxm, b200_sxm (see --list)")
    im.add_argument("--backend", default="vllm", help="serving backend whose kernels were measured: vllm, "
                    "sglang or trtllm (default vllm)")
    im.add_argument("--backend-version", help="data version slot: current (default), previous, next or a literal")
    im.add_argument("--tp", type=int, default=1, help="tensor-parallel GPUs of the target (default 1)")
    im.add_argument("--draft-tp", type=int, default=1, help="tensor-parallel GPUs of the draft (default 1)")
    im.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "fp8", "fp8_block"],
                    help="weights and activations (float16 is priced with the bfloat16 tables; default bfloat16)")
    im.add_argument("--overhead-us", type=float, default=0.0,
                    help="fixed cost per forward pass in microseconds (launches, scheduler, sampler), added to "
                    "the kernel-only times and recorded in the profile (default 0)")
    im.add_argument("--roles", default="target,draft", help="target,draft (default both)")
    im.add_argument("--grid", choices=["default", "quick"], default="default", help="quick: a coarse smoke grid")
    im.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"profile directory (default {DEFAULT_OUT})")
    im.add_argument("--verbose", action="store_true", help="one line per op")
    im.set_defaults(func=cmd_import)


def add_parsers(sub) -> None:
    cal = sub.add_parser("calibrate", help="measure latency profiles on this hardware (torch)")
    csub = cal.add_subparsers(dest="calibrate_command", metavar="WHAT")

    c = csub.add_parser("compute", help="time prefill, verify, draft rounds and serving steps; write fitted "
                        "profiles (and the target's step-cost file)")
    c.add_argument("--spec", help="model spec name (see --list), spec file, or local HF model directory")
    c.add_argument("--list", action="store_true", help="list the shipped model specs")
    c.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the spec's for the device")
    c.add_argument("--threads", type=int, help="CPU threads (default: all logical CPUs)")
    c.add_argument("--cpus", type=cpu_list, metavar="LIST",
                   help="run on these cores only, e.g. 1 or 0-3 (as a scenario's devices.POOL.cpus places a role: "
                        "time on the placement you will run)")
    c.add_argument("--tree", help="draft tree TOP_K,DEPTH,TOKENS (default: the spec's)")
    c.add_argument("--grid", choices=["default", "quick"], default="default", help="quick: a coarse smoke grid")
    c.add_argument("--roles", default="target,draft", help="target,draft (default both)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--ops", help="measure only these ops (comma list, e.g. draft_idle,verify_idle) and write "
                   "them into the existing profile files, keeping their other ops; the target's op step (a serving "
                   "target's whole engine step, fitted into PROFILE.step.yaml beside it) is one of them, so "
                   "--ops prefill,verify,verify_batched,verify_idle leaves it out")
    c.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"profile directory (default {DEFAULT_OUT})")
    c.add_argument("--force", action="store_true", help="calibrate a GPU-sized spec on a CPU anyway")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--verbose", action="store_true", help="one line per measured point instead of a progress bar")
    c.set_defaults(func=cmd_compute, argv=None)

    k = csub.add_parser("link", help="measure a TCP path: RTT, bandwidth, protocol serialization")
    k.add_argument("--serve", action="store_true", help="run the peer that a remote `calibrate link` connects to")
    k.add_argument("--bind", default="127.0.0.1:0", help="with --serve: HOST:PORT (default 127.0.0.1, any port)")
    k.add_argument("--connect", metavar="HOST:PORT", help="measure to this peer (default: loopback, own peer)")
    k.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    k.add_argument("--hidden-size", type=int, default=4096,
                   help="hidden size of the draft requests to serialize (default 4096, Vicuna-7B)")
    k.add_argument("--out", type=Path, help="write the link profile: a .yaml file, or a directory (default name)")
    k.set_defaults(func=cmd_link)

    st = csub.add_parser("stack", help="the real messaging stack's CPU work per round (client and server)")
    st.add_argument("--rounds", type=int, default=1000, help="round trips per pass (default 1000)")
    st.add_argument("--passes", type=int, default=3, help="passes; the fastest is kept (default 3)")
    st.add_argument("--tree-tokens", type=int, default=16, help="nodes in each reply's tree (default 16)")
    st.add_argument("--new-tokens", type=int, default=3, help="tokens in each request (default 3)")
    st.add_argument("--draft-busy-ms", type=number(0.0), default=5.0,
                    help="memory-sweeping work in place of each draft (default 5; 0: a tight loop)")
    st.add_argument("--target-busy-ms", type=number(0.0), default=8.0,
                    help="memory-sweeping work in place of each verify (default 8; 0: a tight loop)")
    st.add_argument("--out", type=Path, help="write the result as YAML to this file")
    st.set_defaults(func=cmd_stack)

    _import_parser(csub)

    rf = csub.add_parser("refit", help="fit profiles again from their stored measurements (no timing)")
    rf.add_argument("profiles", type=Path, nargs="+", help="profile files, rewritten in place")
    rf.set_defaults(func=cmd_refit)

    m = csub.add_parser(
        "compare", help="agreement of two profiles of the same spec, point by point",
        description="Two profiles of the same spec (two machines, or one machine on two days), op by op: at each "
                    "grid point both measured, B's time against A's, raw and normalized by the machine's speed beside "
                    "each point (the drift reference), then the median over points and ops, and the reference "
                    "matmul's speed on each.")
    m.add_argument("a", type=Path, metavar="A", help="the first profile (the reference)")
    m.add_argument("b", type=Path, metavar="B", help="the second profile, compared with A")
    m.add_argument("--fit", action="store_true",
                   help="A's measured points against B's fit instead (e.g. a calibration against the profile "
                   "imported for the same GPU): per op, measured / predicted at each point, median and range, as "
                   "the GPU check's compare.md")
    m.set_defaults(func=cmd_compare)

    from .gpu_check.options import DESCRIPTION, add_arguments, epilog

    g = csub.add_parser("gpu-check", help="calibrate a GPU spec, compare it with the imported profile, run a real "
                        "star on the GPU (analysis/gpu_check.py)", description=DESCRIPTION,
                        epilog=epilog("starsim calibrate gpu-check"))
    add_arguments(g)
    g.set_defaults(func=cmd_gpu_check, argv=None)

    def no_what(args):
        cal.print_help()
        return 2

    cal.set_defaults(func=no_what)
