"""``starsim calibrate compute``: time the operations the simulator needs on this hardware.

Models come from :mod:`starsim.models.specs` with random weights. Every grid point is
timed with ``torch.utils.benchmark`` (warm-up, adaptive repeats, CUDA synchronisation, a
fixed thread count) in several passes over the grid, each in its own random order, so
that drift (thermal, frequency, other tenants of a shared machine) spreads over the grid
instead of biasing one end of it. A point's time is the lowest of its passes' medians
(another tenant only ever adds time); p10/p90 are over every timed block. A fixed matmul
timed before and after each role says how fast the machine was meanwhile. The result is
one profile per role (draft, target), each fitted by :mod:`starsim.profiles`.

What is timed (KV caches are prefilled once per context and cropped back after each call,
so every call sees exactly ``context`` cached tokens):

- target ``prefill``: a forward over ``tokens`` prompt tokens, empty cache;
- target ``verify``: what the real backend runs (:class:`starsim.real.speculation.Verifier`): a
  forward over ``tokens`` tokens (the root and a tree of ``tokens - 1`` nodes) at
  ``context`` with the tree attention mask, greedy acceptance and the KV compaction, batch 1
  (the Python around the forward is part of a round's cost, so it is timed too);
- target ``verify_batched``: the forward alone for ``batch`` sequences;
- draft ``draft_round``: what the real draft server runs (:class:`starsim.real.speculation.Drafter`)
  at the spec's tree, at a ``context`` that counts the ``tokens`` new ones (as the
  simulator's does): the cache holds ``context - tokens``; the new tokens are encoded (logits
  of the last only), ``depth - 1`` levels expand the ``top_k`` best frontier nodes, the best
  ``tree.tokens`` nodes are kept and the cache is cropped back. With ``tokens == context`` it
  is a request's first round (empty cache, the whole prompt);
- draft ``draft_batched``: what the real draft server runs for a batch
  (:meth:`starsim.real.speculation.Drafter.draft_batch`): ``batch`` tags, each with 1 new token at
  ``context`` (counting it): each tag's token encoded on its own cache, then their trees
  grown together, one batched forward per level, and the caches cropped back. A batch of 1
  is a plain ``draft_round``; an EAGLE head's requests are drafted one by one (the real
  backend batches independent drafts only);
- draft ``draft_step``: one such step over a frontier of ``tokens`` nodes at ``context``;
- draft ``draft_idle``: a real round (3 new tokens, middle context) right after an idle gap
  of ``gap_s`` seconds, timed once per repeat with a sleep before it (warm vs cold);
- target ``verify_idle``: the same for a real verify of a full tree;
- target ``step``: one engine step of a serving target (``serving.step_time``): ``batch``
  decoding sequences, each with ``tokens`` tokens (1: a decode token; the tree's tokens + 1:
  a tree to verify) at ``context``, beside a prefill chunk of ``chunk`` tokens after
  ``cached`` ones, timed as the real backend's serving target runs it
  (:meth:`starsim.real.batch_verify.BatchVerifier.step`). HF models have no fused
  variable-length attention, so a step with both runs as a CPU engine without one would run
  it: two forwards back to back, the chunk's and the sequences' batched forward with their
  tree masks. One packed forward (every sequence's cache in one row,
  a block-diagonal 4D mask) would be a fused engine's shape, but SDPA then computes every
  query x key pair of the batch: on tiny-cpu (2 threads) 8 sequences verifying 17-token trees
  at 1024 context beside a 256-token chunk after 1024 took 237 ms packed, 78 ms back to back;
  packed saved one forward's fixed cost only on the smallest step (1 sequence at 64, a 64-token
  chunk: 14 against 16 ms). The rows are kept as measured in the profile; :func:`fit_step` fits
  :class:`starsim.scenario.StepTime`'s fields to them and ``calibrate compute`` writes them
  beside the profile as ``.step.yaml`` (:func:`step_file`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..models.reference import REF_BLOCK_S, REFERENCE, reference_speed
from ..models.specs import ModelSpec, Net, TreeShape, build_model, crop_cache, new_cache, torch_dtype
from ..profile_fields import cpu_name
from ..profiles import OP_INPUTS, Op, ProfileFile, _nnls_relative, build_op, write_profile
from ..real.speculation import tree_mask
from ..serving import StepShape, chunk_shape, tree_shape
from ..version import __version__


@dataclass
class Grid:
    contexts: list[int]
    verify_tokens: list[int]
    prefill_tokens: list[int]
    new_tokens: list[int]
    widths: list[int]
    batches: list[int]
    verify_batches: list[int]
    idle_gaps_s: list[float]
    idle_repeats: int = 7
    idle_context: int = 128  # context of the warm/cold curves (a short chat's, mid-request)
    min_run_time: float = 0.1  # seconds of timing per point in the first pass (adaptive repeats inside)
    max_run_time: float = 1.0
    # Passes over the whole grid, each in its own random order: a point's time is the lowest
    # of its passes' medians, so a slow spell of the machine (seconds to minutes on a shared
    # VM) has to hit every pass of a point to move it (see summarize_times). Passes after
    # the first warm up with one call (when a call is short) and time ``later_blocks``
    # blocks, sized by the first.
    passes: int = 2
    later_blocks: int = 1
    # Serving steps (op ``step``; empty: none timed). Each step point: ``step_batches``
    # decoding sequences (0: a prefill chunk alone) decoding 1 token or verifying the tree
    # (its tokens + 1) at each of ``step_contexts``, beside each prefill chunk (tokens, cached
    # before it) of ``step_chunks`` ((0, 0): none). ``step_checks``: mixed steps off that grid,
    # (batch, verifies the tree, context, chunk, cached), timed but held out of the fit.
    step_batches: list[int] = field(default_factory=list)
    step_contexts: list[int] = field(default_factory=list)
    step_chunks: list[tuple[int, int]] = field(default_factory=list)
    step_checks: list[tuple[int, bool, int, int, int]] = field(default_factory=list)
    # A step point's max_run_time in the first pass (at most max_run_time): some fifty points
    # share one fit, so each is timed more briefly than a point of an op fitted on its own.
    step_max_run_time: float = 0.2


GRIDS: dict[str, Grid] = {
    # Sized to finish the tiny/small CPU specs in about two minutes on 2 cores.
    "cpu": Grid(
        contexts=[16, 64, 256, 512, 1024, 2048],
        verify_tokens=[1, 8, 16, 32, 64],
        prefill_tokens=[16, 64, 128, 256, 512, 1024],
        new_tokens=[1, 2, 4, 8, 16, 64, 256],
        widths=[1, 2, 4, 8],
        batches=[1, 2, 4, 8],
        verify_batches=[2, 4],
        # dense where a star's gaps are (a draft round, a verify: milliseconds)
        idle_gaps_s=[0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05, 0.2],
        idle_repeats=25,
        min_run_time=0.08,
        max_run_time=0.6,
        # 50 steps and 4 held out: about a minute more for small-cpu-eagle's target on 2 cores
        step_batches=[0, 1, 2, 4, 8],
        step_contexts=[128, 512],
        step_chunks=[(0, 0), (32, 512), (256, 0)],
        step_checks=[(3, True, 512, 128, 256), (6, False, 128, 192, 0), (5, True, 128, 64, 256),
                     (2, False, 256, 128, 128)],
    ),
    "cuda": Grid(
        contexts=[128, 512, 1024, 1536, 2000],
        verify_tokens=[1, 16, 32, 60, 96, 128],
        prefill_tokens=[32, 128, 256, 512, 1024, 2000],
        new_tokens=[1, 2, 4, 8, 16, 128, 512],
        widths=[1, 4, 8, 10, 16],
        batches=[1, 2, 4, 8, 16],
        verify_batches=[2, 4, 8],
        idle_gaps_s=[0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05, 0.2],
        idle_repeats=25,
        min_run_time=0.1,
        max_run_time=0.8,
        step_batches=[0, 1, 4, 16],
        step_contexts=[256, 1024],
        step_chunks=[(0, 0), (256, 0), (1024, 1024)],
        step_checks=[(8, True, 512, 512, 256), (2, False, 1024, 128, 1024)],
    ),
}

# A quick grid for tests and smoke runs: coarse, each point timed briefly.
QUICK = Grid(
    contexts=[16, 64],
    verify_tokens=[1, 4, 8],
    prefill_tokens=[8, 32],
    new_tokens=[1, 4],
    widths=[1, 4],
    batches=[1, 2],
    verify_batches=[2],
    idle_gaps_s=[0.0, 0.01],
    idle_repeats=2,
    idle_context=32,
    min_run_time=0.005,
    max_run_time=0.05,
    passes=1,
    step_batches=[0, 1, 2],
    step_contexts=[16, 64],
    step_chunks=[(0, 0), (32, 16)],
    step_checks=[(3, True, 32, 16, 0)],
)


@dataclass
class Settings:
    spec: ModelSpec
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None
    tree: TreeShape | None = None
    grid: Grid | None = None
    seed: int = 0
    roles: tuple[str, ...] = ("target", "draft")
    ops: tuple[str, ...] | None = None  # None: all of the role's ops
    progress: Callable[[str], None] | None = None  # one line per measured point
    progress_bar: bool = False
    extra: dict = field(default_factory=dict)  # recorded in provenance (e.g. the command line)


TARGET_OPS = ("prefill", "verify", "verify_batched", "verify_idle")
DRAFT_OPS = ("draft_round", "draft_step", "draft_batched", "draft_idle")
IDLE_OPS = {"draft": "draft_idle", "target": "verify_idle"}  # each role's warm/cold curve
# A serving target's whole engine step: an op of the target role (``--ops`` names it) whose
# rows go to the profile unfitted and whose fit is the step-cost file (fit_step, step_file).
STEP_OP = "step"


def step_points(g: Grid, tree: TreeShape) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The ``step`` points to fit and those held out, each ``(batch, tokens, context, chunk,
    cached)``: a decoding sequence decodes 1 token or verifies the tree and its root; a step of
    a chunk alone is ``(0, 0, 0, chunk, cached)``."""
    per_seq = (1, tree.tokens + 1)
    fit = [(b, q, L, c, p) if b else (0, 0, 0, c, p)
           for b in g.step_batches for q in per_seq for L in g.step_contexts for c, p in g.step_chunks if b or c]
    fit = list(dict.fromkeys(fit))  # a chunk alone repeats for every (tokens, context)
    held = [(b, per_seq[int(t)], L, c, p) for b, t, L, c, p in g.step_checks]
    return fit, [k for k in held if k not in fit]


# --------------------------------------------------------------------------- timing


def _sync(device: str) -> Callable[[], None]:
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(
    fn: Callable[[], object], grid: Grid, threads: int, device: str, warmup: int = 1, number: int | None = None,
    lean: bool = False,
) -> tuple[np.ndarray, int]:
    """One pass over one grid point by ``torch.utils.benchmark``: ``(seconds per call of each
    timed block, calls per block)``.

    It runs ``warmup`` calls (allocator, kernels, caches; other grid points ran since the
    last pass). The first pass (``number`` None) then runs ``adaptive_autorange`` (it sizes
    its blocks and repeats them until the spread is small); a later pass times
    ``grid.later_blocks`` blocks of the first pass's size. ``lean``: a later pass runs no
    calls but ``warmup``'s before its blocks (``Timer.timeit`` runs two of its own, most of
    the pass for a call of 0.1-1 s: the serving step's fifty points time cheaper).
    """
    from torch.utils import benchmark

    sync = _sync(device)
    for _ in range(warmup):
        fn()
    sync()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    if number is None:
        m = timer.adaptive_autorange(threshold=0.05, min_run_time=grid.min_run_time, max_run_time=grid.max_run_time)
        return np.asarray(m.times, dtype=float), int(m.number_per_run)
    if not lean:
        times = [timer.timeit(number).median for _ in range(grid.later_blocks)]
        return np.asarray(times, dtype=float), number
    times = []
    with benchmark.utils.common.set_torch_threads(threads):
        for _ in range(grid.later_blocks):
            t = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            times.append((time.perf_counter() - t) / number)
    return np.asarray(times, dtype=float), number


SPOT_OPS = ("verify", "draft_round", "prefill", "draft_batched", "step")


def spot_check(profile: ProfileFile, op: str, threads: int, points: int = 3) -> float:
    """Re-time ``op`` of a compute ``profile`` on this machine now, with the profile's own
    spec, role, device and dtype, at ``points`` of its grid points (spread over its range of
    times, the median first); returns the median of (seconds now / seconds then). It says
    how fast the machine is for this very code, which a reference matmul does not (a shared
    machine's drift hits memory- and Python-bound code differently); several points keep
    one noisy timing from setting it."""
    import torch

    from ..models.specs import load_spec

    if op not in SPOT_OPS:
        raise ValueError(f"spot checks time {', '.join(SPOT_OPS)}, not {op}")
    spec = load_spec(profile.model.get("spec_file") or profile.model["spec"])
    role, device = profile.model["role"], profile.device.get("torch_device", "cpu")
    o = profile.ops[op]
    # against what the fit holds: the row at the op's median reference speed, when it has one
    then = o.normalized() if o.reference_s is not None else o.column("median_s")
    order = np.argsort(then)
    picks = [len(order) // 2] + [int(q * (len(order) - 1)) for q in (0.25, 0.75)][: max(points - 1, 0)]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    ratios = []
    try:
        net = build_model(spec, role, device, torch_dtype(profile.provenance.get("dtype", "float32")))
        c = _Ctx(net, device, net.lm.dtype, 0)
        tree = TreeShape(**o.fixed["tree"]) if "tree" in o.fixed else spec.tree
        grid = GRIDS["cuda" if device.startswith("cuda") else "cpu"]
        for i in dict.fromkeys(picks):  # distinct, the median first
            x = dict(zip(o.columns, o.rows[int(order[i])]))
            n, L = int(x["batch"] if op in ("draft_batched", "step") else x["tokens"]), int(x.get("context", 0))
            if op == "step":  # a serving target's whole engine step
                fn = code_step_fn(c, n, int(x["tokens"]), L, int(x["chunk"]), int(x["cached"]), tree.top_k)
            elif op == "verify":
                fn = code_verify_fn(c, n, L, tree.top_k)
            elif op == "draft_round":
                fn = code_draft_round_fn(c, n, L, tree)
            elif op == "draft_batched":
                fn = code_draft_batched_fn(c, n, L, tree)
            else:
                fn = prefill_fn(c, n)
            times, _ = time_call(fn, grid, threads, device, warmup=3)
            ratios.append(float(np.median(times)) / float(then[int(order[i])]))
    finally:
        torch.set_num_threads(old)
    return float(np.median(ratios))


REF_WINDOW = 9  # reference timings per rolling median: ~9 grid points, seconds on a CPU grid


def smooth_reference(times: list[float]) -> np.ndarray:
    """The machine's speed at each of a calibration's reference timings (in time order): the
    rolling median of REF_WINDOW of them around it. One 20 ms timing is noisy; a shared
    machine's drift moves over tens of seconds to minutes, which the window still follows."""
    x = np.asarray(times, dtype=float)
    half = REF_WINDOW // 2
    return np.array([np.median(x[max(0, i - half):i + half + 1]) for i in range(len(x))])


def summarize_times(passes: list[np.ndarray]) -> tuple[float, float, float, int]:
    """``(median, p10, p90, blocks)`` of one grid point: the lowest of the passes' medians,
    and the spread of all blocks.

    Another tenant of a shared machine only ever adds time, in spells of seconds to
    minutes; the lowest pass median is the hardware's own speed when any pass missed the
    spell (the spread still records what the spells did to single calls).
    """
    every = np.concatenate(passes)
    med = float(min(np.median(t) for t in passes))
    return med, float(np.quantile(every, 0.1)), float(np.quantile(every, 0.9)), len(every)


# --------------------------------------------------------------------------- workloads


class _Ctx:
    """Random token ids and prefilled caches, one per (context, batch), built on demand."""

    def __init__(self, net: Net, device: str, dtype, seed: int):
        import torch

        self.net, self.device, self.dtype = net, device, dtype
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.caches: dict[tuple[int, int], object] = {}

    def ids(self, batch: int, n: int):
        import torch

        return torch.randint(0, self.net.vocab_size, (batch, n), generator=self.gen).to(self.device)

    def hidden(self, batch: int, n: int):
        import torch

        h = torch.randn(batch, n, self.net.hidden_size, generator=self.gen)
        return h.to(device=self.device, dtype=self.dtype)

    def cache(self, context: int, batch: int = 1):
        import torch

        key = (context, batch)
        if key not in self.caches:
            cache = new_cache()
            if batch > 1 and context:
                # copies of one sequence's cache: a forward's time does not depend on the values,
                # and a batched prefill of batch x context tokens would cost seconds per point
                one = self.cache(context, 1)
                for i, layer in enumerate(one.layers):
                    cache.update(layer.keys.repeat(batch, 1, 1, 1), layer.values.repeat(batch, 1, 1, 1), i)
            else:
                with torch.inference_mode():
                    hidden = self.hidden(batch, context) if self.net.eagle else None
                    self.net(self.ids(batch, context), cache=cache, hidden=hidden)
            self.caches[key] = cache
        return self.caches[key]

    def drop(self) -> None:
        self.caches.clear()


def _tree_parents(tokens: int, top_k: int) -> list[int]:
    """A plausible draft tree of ``tokens`` nodes: breadth first, ``top_k`` children each."""
    return [-1] + [(i - 1) // top_k for i in range(1, tokens)]


def _positions(start: int, n: int, batch: int, device: str):
    import torch

    return torch.arange(start, start + n, device=device).expand(batch, n)


def verify_fn(c: _Ctx, tokens: int, context: int, batch: int, top_k: int):
    import torch

    cache = c.cache(context, batch)
    ids = c.ids(batch, tokens)
    mask = tree_mask(context, _tree_parents(tokens, top_k), c.device, batch)
    pos = _positions(context, tokens, batch, c.device)
    hidden = c.hidden(batch, tokens) if c.net.eagle else None

    def fn():
        with torch.inference_mode():
            logits, _ = c.net(ids, cache=cache, mask=mask, positions=pos, hidden=hidden)
            logits.argmax(-1)  # the greedy check a verifier does
        crop_cache(cache, context)

    return fn


def prefill_fn(c: _Ctx, tokens: int, cached: int = 0):
    """A prefill of ``tokens`` prompt tokens (logits of the last only) after ``cached`` ones
    (0: an empty cache; else a chunk of a chunked prefill, cropped back after each call)."""
    import torch

    ids = c.ids(1, tokens)
    hidden = c.hidden(1, tokens) if c.net.eagle else None

    def fn():
        cache = c.cache(cached, 1) if cached else new_cache()
        with torch.inference_mode():
            c.net(ids, cache=cache, hidden=hidden, last_only=True)
        if cached:
            crop_cache(cache, cached)

    return fn


def code_step_fn(c: _Ctx, batch: int, tokens: int, context: int, chunk: int, cached: int, top_k: int):
    """``step`` as the real backend's serving target runs it:
    :meth:`starsim.real.batch_verify.BatchVerifier.step` over a prefill chunk of ``chunk``
    tokens after ``cached`` ones and ``batch`` sequences at ``context``, each verifying a tree
    of ``tokens - 1`` nodes after its root (1: a decode token); every cache back as it was
    after each call."""
    from ..real.batch_verify import BatchVerifier, Chunk, Tree
    from ..real.speculation import TreeDraft, tree_depths

    bv = BatchVerifier(c.net.lm)
    items: list = []
    if chunk:
        bv.add(batch)
        if cached:
            bv.adopt(batch, c.cache(cached, 1), None)
        items.append(Chunk(batch, c.ids(1, chunk)[0].tolist(), last=True))
    if batch:
        parents = [p - 1 for p in _tree_parents(tokens, top_k)[1:]]  # without the root
        tree = TreeDraft(c.ids(1, tokens - 1)[0].tolist(), parents, tree_depths(parents))
        cache, root = c.cache(context, 1), int(c.ids(1, 1)[0, 0])
        for i in range(batch):
            bv.add(i)
            bv.adopt(i, cache, root)
        items += [Tree(i, tree) for i in range(batch)]
    snap = bv.snapshot()

    def fn():
        bv.step(items)
        bv.restore(snap)

    return fn


def code_verify_fn(c: _Ctx, tokens: int, context: int, top_k: int):
    """``verify`` as the real backend runs it: :meth:`starsim.real.speculation.Verifier.verify` on a
    tree of ``tokens - 1`` nodes after the root (tree-mask forward, greedy acceptance, KV
    compaction), at ``context`` cached tokens."""
    from ..real.speculation import TreeDraft, Verifier, tree_depths

    cache = c.cache(context, 1)
    full = _tree_parents(tokens, top_k)  # node 0 is the root
    parents = [p - 1 for p in full[1:]]  # the tree's nodes, parents counted without the root
    tree = TreeDraft(c.ids(1, tokens - 1)[0].tolist(), parents, tree_depths(parents))
    v = Verifier(c.net.lm)
    v.cache = cache
    root = int(c.ids(1, 1)[0, 0])

    def fn():
        v.root = root
        v.verify(tree)
        crop_cache(cache, context)  # the compacted cache back to the context

    return fn


def code_draft_round_fn(c: _Ctx, new: int, context: int, tree: TreeShape):
    """``draft_round`` as the real backend runs it: :meth:`starsim.real.speculation.Drafter.draft`
    (prefix-cached encoding of the ``new`` tokens, the EAGLE-2 tree, the crop back), at a
    ``context`` that counts the new tokens."""
    from ..real.speculation import Drafter

    cached = context - new
    if cached < 0:
        raise ValueError(f"new tokens ({new}) exceed the context ({context})")
    drafter = Drafter(c.net, tree.top_k, tree.depth, tree.tokens)
    ids = c.ids(1, context)[0].tolist()
    hidden = [c.hidden(1, context)[0].float().cpu().numpy().astype(np.float16)] if c.net.eagle else None
    drafter.draft(0, ids, hidden=hidden)  # the tag's state, then cut back to ``cached`` before each call

    def fn():
        if cached:
            drafter.tags[0].ids = ids[:cached]  # encode crops the cache to what these ids hold
        else:
            drafter.free(0)  # a request's first round: an empty cache
        drafter.draft(0, ids, hidden=hidden)

    return fn


def code_draft_batched_fn(c: _Ctx, batch: int, context: int, tree: TreeShape):
    """``draft_batched`` as the real backend runs it: :meth:`starsim.real.speculation.Drafter.draft_batch`
    for ``batch`` tags, each with 1 new token at a ``context`` that counts it (every tag at
    the same context: the batch's longest, which the simulator charges)."""
    from ..real.speculation import Drafter

    if context < 2:
        raise ValueError(f"draft_batched needs a context of at least 2 tokens, got {context}")
    drafter = Drafter(c.net, tree.top_k, tree.depth, tree.tokens)
    ids = [c.ids(1, context)[0].tolist() for _ in range(batch)]
    hidden = [[c.hidden(1, context)[0].float().cpu().numpy().astype(np.float16)] if c.net.eagle else None
              for _ in range(batch)]
    reqs = [(t, ids[t], 0.0, None, hidden[t]) for t in range(batch)]
    drafter.draft_batch(reqs)  # every tag's state, then cut back by one token before each call

    def fn():
        for t in range(batch):
            drafter.tags[t].ids = ids[t][: context - 1]  # encode crops each cache to these ids
        drafter.draft_batch(reqs)

    return fn


def draft_step_fn(c: _Ctx, width: int, context: int):
    """One depth step: a forward over ``width`` frontier nodes, then the top ``width`` children of each."""
    import torch

    cache = c.cache(context, 1)
    ids = c.ids(1, width)
    hidden = c.hidden(1, width) if c.net.eagle else None
    mask = tree_mask(context, [-1] * width, c.device)
    pos = _positions(context, width, 1, c.device)

    def fn():
        with torch.inference_mode():
            logits, _ = c.net(ids, cache=cache, mask=mask, positions=pos, hidden=hidden)
            logits.log_softmax(-1).topk(width, dim=-1)
        crop_cache(cache, context)

    return fn


# --------------------------------------------------------------------------- the run


def _provenance(s: Settings, net: Net, role: str, dtype_name: str, threads: int) -> tuple[dict, dict]:
    import torch

    try:
        import transformers

        tv = transformers.__version__
    except Exception:  # pragma: no cover - transformers is required to build models
        tv = None
    if s.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(s.device))
        kind = "cuda"
    else:
        name = cpu_name()
        kind = "cpu"
    device = {"name": name, "kind": kind, "torch_device": s.device, "threads": threads}
    prov = {
        "tool": "starsim calibrate compute",
        "starsim": __version__,
        "torch": torch.__version__,
        "transformers": tv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dtype": dtype_name,
        "seed": s.seed,
        "weights": "random (timing does not depend on trained values)",
        "grid": asdict(s.grid),
        "parameters": net.params,
        **s.extra,
    }
    if kind == "cuda":
        prov["cuda"] = torch.version.cuda
    return device, prov


def _jobs(s: Settings, role: str, tree: TreeShape) -> list[tuple[str, tuple, Callable[[_Ctx], Callable]]]:
    g = s.grid
    want = set(s.ops) if s.ops else None
    jobs: list[tuple[str, tuple, Callable]] = []

    seen: set = set()

    def add(op, key, make):
        if (want is None or op in want) and (op, key) not in seen:  # small grids repeat points
            seen.add((op, key))
            jobs.append((op, key, make))

    if role == "target":
        for p in g.prefill_tokens:
            add("prefill", (p,), lambda c, p=p: prefill_fn(c, p))
        for t in g.verify_tokens:
            for L in g.contexts:
                add("verify", (t, L), lambda c, t=t, L=L: code_verify_fn(c, t, L, tree.top_k))
        for b in g.verify_batches:
            for t in g.verify_tokens[-2:]:
                for L in (g.contexts[0], g.contexts[-1]):
                    add("verify_batched", (t, L, b), lambda c, t=t, L=L, b=b: verify_fn(c, t, L, b, tree.top_k))
        for key in (k for keys in step_points(g, tree) for k in keys):
            add(STEP_OP, key, lambda c, key=key: code_step_fn(c, *key, tree.top_k))
    else:
        for n in g.new_tokens:
            for L in (L for L in g.contexts if L >= n):  # the context includes the new tokens
                add("draft_round", (n, L), lambda c, n=n, L=L: code_draft_round_fn(c, n, L, tree))
        for w in g.widths:
            for L in g.contexts:
                add("draft_step", (w, L), lambda c, w=w, L=L: draft_step_fn(c, w, L))
        for b in g.batches:
            for L in (g.contexts[0], g.contexts[len(g.contexts) // 2], g.contexts[-1]):
                add("draft_batched", (b, L), lambda c, b=b, L=L: code_draft_batched_fn(c, b, L, tree))
    return jobs


def calibrate(s: Settings) -> dict[str, ProfileFile]:
    """Measure every op of every role in ``s.roles``; one fitted profile per role.

    Kept whole: the measuring loop's order, device set-up, progress, fits and provenance read
    as one procedure; its pieces, the jobs and the fits, are functions."""
    import torch

    dev_type = "cuda" if s.device.startswith("cuda") else "cpu"
    s.grid = s.grid or GRIDS[dev_type]
    dtype_name = s.dtype or s.spec.dtype.get(dev_type, "float32")
    dtype = torch_dtype(dtype_name)
    threads = s.threads or (os.cpu_count() or 1)
    if dev_type == "cpu":
        torch.set_num_threads(threads)
    tree = s.tree or s.spec.tree
    step_grid = replace(s.grid, max_run_time=min(s.grid.max_run_time, s.grid.step_max_run_time))
    say = s.progress or (lambda msg: None)
    out: dict[str, ProfileFile] = {}
    interrupted = False
    for role in s.roles:
        t0 = time.perf_counter()
        net = build_model(s.spec, role, s.device, dtype, seed=s.seed)
        c = _Ctx(net, s.device, dtype, s.seed)
        jobs = _jobs(s, role, tree)
        speed = [reference_speed(threads, s.device)]
        fns: dict[tuple, Callable[[], object]] = {}
        times: dict[tuple, list[np.ndarray]] = {}  # (op, key) -> the blocks of each pass
        refs: dict[tuple, list[int]] = {}  # (op, key) -> where in ``beside`` its passes' references are
        beside: list[float] = []  # the reference kernel's time beside each pass, in time order
        numbers: dict[tuple, int] = {}  # (op, key) -> calls per block, from the first pass
        total = len(jobs) * s.grid.passes
        idle_rows: list[tuple] = []
        bar = _bar(total, role, s.progress_bar)
        try:
            for p in range(s.grid.passes):
                order = list(jobs)
                random.Random(s.seed * 1000 + p).shuffle(order)  # randomized order: drift spreads over the grid
                for op, key, make in order:
                    if (op, key) not in fns:
                        fns[op, key] = make(c)
                    first = p == 0
                    # a long call's cold start is small beside it: warm up short ones only. A step
                    # point's first pass warms up in adaptive_autorange's block-size estimate
                    # (its first call is discarded), and a later pass runs no more than asked
                    warm = (first and op != STEP_OP) or (not first and times[op, key][0].min() < 0.05)
                    # the machine's speed right now, beside this pass (drift normalization)
                    refs.setdefault((op, key), []).append(len(beside))
                    beside.append(reference_speed(threads, s.device, REF_BLOCK_S))
                    t, numbers[op, key] = time_call(fns[op, key], step_grid if op == STEP_OP else s.grid, threads,
                                                    s.device, warmup=int(warm),
                                                    number=None if first else numbers[op, key], lean=op == STEP_OP)
                    times.setdefault((op, key), []).append(t)
                    bar.update(1)
                    say(f"[{role} pass {p + 1}] {op} {key}: {np.median(t) * 1e3:.3f} ms")
            bar.close()
            idle_op = IDLE_OPS[role]
            if s.ops is None or idle_op in s.ops:
                idle_rows = _idle_curve(c, s, tree, role, say)
        except KeyboardInterrupt:
            # Ctrl-C: keep what was measured; the caller writes it, marked as partial.
            bar.close()
            interrupted = True
        rows: dict[str, list] = {}
        speed_then = smooth_reference(beside)
        for (op, key), passes in times.items():
            # the machine's speed at the pass whose median the row keeps (the lowest)
            ref = speed_then[refs[op, key][int(np.argmin([np.median(t) for t in passes]))]]
            rows.setdefault(op, []).append((*key, *summarize_times(passes), ref))
        if idle_rows:
            rows[IDLE_OPS[role]] = idle_rows
        fns.clear()
        c.drop()
        speed.append(reference_speed(threads, s.device))
        device, prov = _provenance(s, net, role, dtype_name, threads)
        prov["wall_s"] = round(time.perf_counter() - t0, 1)
        prov["reference_matmul_s"] = {"before": speed[0], "after": speed[1], "what": REFERENCE}
        if beside:  # over the whole calibration (each op's fit is normalized to its own reference_s)
            prov["reference_matmul_s"]["median_beside_s"] = float(np.median(beside))
        if interrupted:
            done = sum(map(len, times.values()))
            prov["interrupted"] = f"stopped by the user after {done} of {total} timings ({len(times)} grid points)"
        arch = s.spec.target if role == "target" else s.spec.draft
        model = {
            "spec": s.spec.name,
            "role": role,
            "name": f"{s.spec.name}:{role}",
            "kind": arch.kind,
            "architecture": arch.model_dump(exclude_none=True),
            "spec_file": s.spec.path,
        }
        ops = {}
        for op, r in sorted(rows.items()):
            if op not in IDLE_OPS.values() and len(r) < 2:  # nothing to fit on an interrupted run
                continue
            inputs = OP_INPUTS[op]
            fixed = ({"tree": tree.model_dump()} if op in ("draft_round", "draft_batched", STEP_OP, *IDLE_OPS.values())
                     else {})
            if op in IDLE_OPS.values():
                key = "new_tokens" if role == "draft" else "tokens"
                fixed[key], fixed["context"] = _idle_point(s, tree, role)
            if op == STEP_OP:  # what the step-cost file needs beside the rows
                fixed["held_out"] = [list(k) for k in step_points(s.grid, tree)[1]]
                fixed["kv"] = _kv(net, s.device, dtype)
            ops[op] = build_op(inputs, sorted(r), fixed=fixed, reference=op not in IDLE_OPS.values(),
                               fit=op != STEP_OP)
        if ops:
            out[role] = ProfileFile(kind="compute", model=model, device=device, provenance=prov, ops=ops)
        del net, c
        if dev_type == "cuda":
            torch.cuda.empty_cache()
        if interrupted:
            break
    return out


def _bar(total: int, role: str, show: bool):
    """A progress bar on stderr (tqdm, which transformers brings), or a no-op."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{role} grid", unit="pt", disable=not show, leave=True, file=sys.stderr)


IDLE_NEW_TOKENS = 3  # a draft round after a typical round's emitted tokens (1 + accepted)


def _idle_point(s: Settings, tree: TreeShape, role: str) -> tuple[int, int]:
    """(tokens, context) of the warm/cold curve: the grid's idle context; a draft round's new
    tokens, or a full tree for a verify."""
    L = s.grid.idle_context
    return (IDLE_NEW_TOKENS if role == "draft" else tree.tokens + 1), L


def _idle_curve(c: _Ctx, s: Settings, tree: TreeShape, role: str, say) -> list[tuple]:
    """The real code's op (a draft round, or a verify) right after an idle gap: one timed
    call per (gap, repeat), gaps in random order.

    A process of a star idles while the others work (the draft between requests, a target
    while its tree is drafted) and comes back to cold caches and, on a VM, a descheduled
    vCPU; the curve says how much longer its next call takes."""
    sync = _sync(s.device)
    n, L = _idle_point(s, tree, role)
    fn = code_draft_round_fn(c, n, L, tree) if role == "draft" else code_verify_fn(c, n, L, tree.top_k)
    for _ in range(5):
        fn()
    sync()
    order = [g for g in s.grid.idle_gaps_s for _ in range(s.grid.idle_repeats)]
    random.Random(s.seed + 1).shuffle(order)
    seen: dict[float, list[float]] = {}
    for g in order:
        if g > 0:
            time.sleep(g)
        else:
            fn()  # back to back: the call right before is the "busy" state
            sync()
        t = time.perf_counter()
        fn()
        sync()
        seen.setdefault(g, []).append(time.perf_counter() - t)
    rows = []
    for g, ts in sorted(seen.items()):
        a = np.asarray(ts)
        rows.append((g, float(np.median(a)), float(np.quantile(a, 0.1)), float(np.quantile(a, 0.9)), len(a)))
        say(f"[{role} idle] gap {g * 1e3:g} ms: {np.median(a) * 1e3:.3f} ms")
    return rows


# --------------------------------------------------------------------------- the serving step

# StepTime's fields fitted to the measured steps, in the order of step_design's columns: the
# cost is linear in the step's shape. The floors weights_s and logits_weights_s stay 0: on a
# CPU the dense layers' time grows from the first token, and what a step pays whatever it holds
# (the weights read, the forward's Python) is one constant, overhead_s, on these points.
STEP_FIELDS = ("overhead_s", "per_token_s", "per_logit_token_s", "per_seq_s", "per_kv_token_s", "per_attn_s",
               "per_query_s")


def step_shape(batch: int, tokens: int, context: int, chunk: int, cached: int) -> StepShape:
    """A ``step`` point's shape as the simulator prices it (the chunk's last token scored, as timed)."""
    shape = tree_shape(tokens, context).times(batch) if batch else StepShape()
    return shape + chunk_shape(chunk, cached, True) if chunk else shape


def step_design(shapes: list[StepShape]) -> np.ndarray:
    """One row per shape, one column per :data:`STEP_FIELDS` entry."""
    return np.array([[1.0, s.tokens, s.logits, s.seqs, s.kv, s.attn, s.tokens - s.seqs] for s in shapes], float)


def _kv(net: Net, device: str, dtype) -> dict:
    """The step-cost file's ``kv``: KV bytes per token of the target (in its dtype) and the
    tokens this device holds, as :mod:`starsim.calibrate.gpu_step` sizes a GPU's."""
    import torch

    from .gpu_step import ACTIVATIONS_BYTES, MEMORY_FRACTION, kv_bytes_per_token, kv_tokens

    size = torch.empty((), dtype=dtype).element_size()
    per_token = kv_bytes_per_token(net.config.to_dict(), size)
    if device.startswith("cuda"):
        mem, where = float(torch.cuda.get_device_properties(torch.device(device)).total_memory), "the GPU's memory"
    else:
        mem, where = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "this machine's memory"
    return {"capacity_tokens": max(kv_tokens(mem, 1, net.params * size, per_token), 0), "bytes_per_token": per_token,
            "how": f"{MEMORY_FRACTION:.0%} of {where} ({mem / 2**30:.1f} GiB) less the weights and "
                   f"{ACTIVATIONS_BYTES / 2**30:g} GiB of activations; KV in {str(dtype).removeprefix('torch.')}"}


def fit_step(op: Op) -> dict | None:
    """StepTime's fields fitted to a ``step`` op's rows (non-negative least squares in relative
    error, on the drift-normalized times as every op's fit), the held-out rows left out;
    ``{"step_time", "fit", "provenance"}`` for :func:`starsim.calibrate.gpu_step.step_doc`, or
    None with no more points to fit than fields (an interrupted run)."""
    from ..scenario import StepTime
    from .gpu_step import mape_pct

    k = len(op.inputs)
    keys = [tuple(int(v) for v in r[:k]) for r in op.rows]
    y = op.normalized() if op.reference_s is not None else op.column("median_s")
    held = {tuple(h) for h in op.fixed.get("held_out", [])}
    train = np.array([key not in held for key in keys])
    if train.sum() <= len(STEP_FIELDS):
        return None
    coef = _nnls_relative(step_design([step_shape(*key) for key in keys])[train], y[train])
    fields = {"weights_s": 0.0, "logits_weights_s": 0.0, **{f: float(c) for f, c in zip(STEP_FIELDS, coef)}}
    mean = StepTime(**fields).mean_fn()  # the fields as the simulator prices a step
    pred = np.array([mean(step_shape(*key)) for key in keys])
    err = np.abs(pred - y) / y
    fit = {"fitted": list(STEP_FIELDS), "points": int(train.sum()), "mape_pct": mape_pct(pred[train], y[train]),
           "max_error_pct": round(float(err[train].max() * 100.0), 2),
           "held_out_points": int((~train).sum()), "held_out_mape_pct": mape_pct(pred[~train], y[~train])}
    columns = [*op.inputs, "measured_s", "fitted_s", "held_out"]
    rows = [[*key, float(f"{t:.6g}"), float(f"{m:.6g}"), int(not tr)] for key, t, m, tr in zip(keys, y, pred, train)]
    prov = {"measured": "every point below was timed on this machine, none priced or interpolated",
            "points": {"columns": columns, "rows": rows,
                       "what": "measured_s: the point's time at the op's median reference speed (drift-normalized, "
                               "as every fit); raw medians and p10/p90: the target profile's op step"}}
    return {"step_time": fields, "fit": fit, "provenance": prov}


def step_file(profile: ProfileFile, command: str | None = None) -> dict | None:
    """The step-cost file of a target ``profile`` with a ``step`` op (what
    ``targets[].serving.step_time: {path: FILE}`` reads); None without one, or with too few
    points to fit."""
    from .gpu_step import step_doc

    profile = ProfileFile.model_validate(profile.model_dump(mode="json"))  # plain types for YAML (torch's version)
    op = profile.ops.get(STEP_OP)
    cost = fit_step(op) if op is not None else None
    if cost is None:
        return None
    grid = profile.provenance.get("grid") or {}
    tree = op.fixed["tree"]
    cost["provenance"] = {
        "grid": {"batches": grid.get("step_batches"), "tokens": [1, tree["tokens"] + 1],
                 "contexts": grid.get("step_contexts"), "chunks": [list(c) for c in grid.get("step_chunks", [])],
                 "held_out": op.fixed.get("held_out", []), "tree": tree},
        "threads": profile.device.get("threads"), **cost["provenance"]}
    method = (f"measured on {profile.device.get('name')}: whole steps timed, fields fitted (starsim.calibrate."
              "compute, op step: NNLS in relative error, linear in the step's shape; weights_s and "
              "logits_weights_s left 0, a weights-read floor not told apart from overhead_s here). A step with a "
              "prefill chunk and decoding sequences is timed as two forwards back to back in one call, the "
              "chunk's and the sequences' batched one, as an engine without a fused variable-length attention "
              "kernel (Hugging Face models on a CPU) runs it: such a step pays two forwards' fixed cost, which "
              "the one overhead_s of the fit shares out")
    kv = op.fixed.get("kv") or {}
    return step_doc(cost, profile, command or profile.provenance.get("command"),
                    (kv["capacity_tokens"], kv["bytes_per_token"]) if kv else None, method=method,
                    kv_how=kv.get("how", ""))


def profile_path(out_dir: Path, spec: ModelSpec, role: str, device: dict, dtype: str) -> Path:
    """``models/profiles/<spec>.<role>.<device>.<dtype>.yaml``, device as a short slug."""
    name = device.get("name", "device")
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return out_dir / f"{spec.name}.{role}.{slug[:48].strip('-')}.{dtype}.yaml"


def save(profiles: dict[str, ProfileFile], spec: ModelSpec, out_dir: Path, update: bool = False) -> list[Path]:
    """Write each role's profile. ``update``: the measured ops replace theirs in an existing
    file of the same name, whose other ops stay; its provenance lists each such update."""
    from ..profiles import read_profile

    paths = []
    for role, prof in profiles.items():
        p = profile_path(out_dir, spec, role, prof.device, prof.provenance.get("dtype", ""))
        if update and p.is_file():
            old = read_profile(p)
            note = {k: prof.provenance.get(k) for k in ("date", "command", "reference_matmul_s", "wall_s", "grid")}
            updates = [*old.provenance.get("updates", []), {"ops": sorted(prof.ops), **note}]
            prov = {**old.provenance, "updates": updates}
            prof = old.model_copy(update={"ops": {**old.ops, **prof.ops}, "provenance": prov})
        paths.append(write_profile(prof, p))
    return paths
