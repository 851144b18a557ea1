"""What ``starsim execute`` can run of a serving target (``targets.*.serving``), checked before
any process starts: each refusal is one line naming the field (exit 2 at the command line).

A serving target runs for real (:mod:`starsim.real.serving_worker`) with one draft server,
greedy or sampled, closed or open loop (``router: first_free``). Not yet for real: pipelined
drafting, a draft fabric, adaptive speculation, the ``edf`` policy (a batch's deadline) and
one_for_one mode; ``starsim run`` simulates all of them. An EAGLE draft server refuses a
multi-sequence request (its reply says so).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StarsimError
from ..models.kv import kv_bytes_per_token
from ..scenario import Scenario

GIB = 1024**3


def check_serving(scenario: Scenario) -> None:
    """Refuse, in one line, what a real serving target cannot run yet (see the module docstring)."""
    w, d = scenario.workload, scenario.draft
    serving = [i for i, g in enumerate(scenario.targets) if g.serving is not None]
    if getattr(w, "router", "first_free") != "first_free":
        raise StarsimError(f"{scenario.name}: workload.router: the real backend's targets take requests from one "
                           "queue when free (first_free); `starsim run` simulates the other routers")
    if not serving:
        return
    i = serving[0]
    why = {
        "draft.pipeline": d.pipeline,
        "draft.fabric": scenario.mode == "star" and (d.fabric.servers > 1 or bool(d.fabric.failures)),
        "draft.adaptive": d.adaptive.policy != "fixed",
        "draft.policy": d.policy == "edf",
        "mode": scenario.mode == "one_for_one",
    }
    for field, on in why.items():
        if on:
            raise StarsimError(f"{scenario.name}: {field}: not supported for real with serving targets "
                               f"(targets.{i}.serving) yet; `starsim run` simulates it")


def available_bytes(device: str) -> int | None:
    """Memory free for a new process on ``device`` now (None: unknown): MemAvailable for a CPU,
    the GPU's free memory for CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def weight_bytes(src: dict, cfg, itemsize: int) -> int:
    """A model's weights: its files' size (a model directory), else counted from its config."""
    if src["kind"] == "pretrained":
        files = [p for p in Path(src["path"]).glob("*") if p.suffix in (".safetensors", ".bin", ".gguf")]
        if files:
            return sum(p.stat().st_size for p in files)
    h, layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * h)
    return (2 * int(cfg.vocab_size) * h + layers * (4 * h * h + 3 * h * inter)) * itemsize


def serving_need_bytes(max_seqs: int, longest: int, rows: int, cfg, itemsize: int) -> int:
    """One serving target's batch at its largest: every sequence's KV at ``longest`` tokens,
    twice (each sequence's cache and the step's batched copy of it), and the logits of
    ``rows`` scored tokens per sequence (float32)."""
    kv = kv_bytes_per_token(cfg, itemsize)
    return 2 * max_seqs * longest * kv + max_seqs * rows * int(cfg.vocab_size) * 4


def check_memory(scenario: Scenario, target_src: dict, dtype: str, devices: list[str], prompts: list) -> None:
    """Refuse a run whose serving targets' batches (at ``max_seqs``, the longest request) and
    weights do not fit the memory this machine has free now (one line: what it needs, what is
    free, what to lower)."""
    import torch

    from .models import source_config

    groups = [(k, g) for k, g in enumerate(scenario.targets) if g.serving is not None]
    if not groups or not prompts:
        return
    cfg = source_config(target_src, "target")
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    tree = scenario.draft.tree.tokens + 1
    longest = max(len(p) + o for p, o in prompts) + tree
    weights = weight_bytes(target_src, cfg, itemsize)
    need: dict[str, int] = {}
    first: dict[str, tuple[int, int]] = {}
    for (_, _name, g), dev in zip(scenario.target_instances(), devices):
        if g.serving is None:
            need[dev] = need.get(dev, 0) + weights
            continue
        k = next(k for k, gg in groups if gg is g)
        sv = g.serving
        rows = max(tree, min(sv.max_batched_tokens or longest, longest))
        need[dev] = need.get(dev, 0) + weights + serving_need_bytes(sv.max_seqs, longest, rows, cfg, itemsize)
        first.setdefault(dev, (k, sv.max_seqs))
    for dev, n in need.items():
        free = available_bytes(dev)
        if free is not None and n > free and dev in first:
            k, seqs = first[dev]
            raise StarsimError(
                f"{scenario.name}: targets.{k}.serving.max_seqs: {seqs} sequences of up to {longest} tokens need "
                f"{n / GIB:.1f} GiB on {dev} (weights, KV twice, logits), {free / GIB:.1f} GiB is free; "
                "lower max_seqs or the request lengths")
