"""The files the real run reads, written by the check: the pair's spec and the device
variant of the base scenario."""

from __future__ import annotations

import os
from pathlib import Path

from .device import ref, slug
from .options import BASE_SCENARIO, REPO, SCRIPT, Size


def pair_spec(pair: Path, name: str, out: Path, tree: dict) -> Path:
    """A spec file for ``pair`` (its own configs, random weights), so calibrate times the very
    architecture the real run loads at the tree the scenario drafts."""
    import yaml

    rel = ref(pair, out)  # relative to the spec file
    spec = {"name": name, "description": f"the offline pair in {rel} (architecture from its configs)",
            "source": f"{rel}/target/config.json, {rel}/draft/config.json",
            "target": {"hf_config": f"{rel}/target"}, "draft": {"hf_config": f"{rel}/draft"},
            "tree": tree, "dtype": {"cpu": "float32", "cuda": "float32"},  # as build-pair saves it
            "cpu_ok": True}
    path = out / "pair-spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def scenario(out: Path, info: dict, size: Size, pair: Path, target_prof: Path, draft_prof: Path,
             n_max: int, by: str = SCRIPT) -> Path:
    """``scenarios/real_cpu_n2.yaml`` on this device: every process on ``info['device']``, the
    pair's profiles from this device, the size's workload; paths relative to the output
    directory. ``by``: the command that wrote it, as its description says."""
    import yaml

    d = yaml.safe_load((REPO / BASE_SCENARIO).read_text())
    rel = lambda p: ref(p, out)  # noqa: E731
    dev = info["device"]
    units = n_max + 1  # a unit per process: the draft on the last
    if info["kind"] == "cuda":
        # each process has its own CPU core here; the GPU time-slices their kernels, which the
        # simulator does not model (a unit per process, independent)
        pool = {"type": f"{info['name']}: every process of the run on {dev}", "count": units, "torch": dev}
    else:
        pool = {"type": f"{info['name']}: every process of the run", "count": units, "cores": os.cpu_count() or 1,
                "torch": "cpu"}
    d["name"] = f"real-{slug(info['name'])}"
    d["description"] = f"{BASE_SCENARIO} on {dev} ({info['name']}), pair {pair.name}, written by {by}"
    d["devices"] = {"dev": pool}
    d["draft"]["device"] = f"dev[{units - 1}]"
    d["draft"]["round_time"]["path"] = rel(draft_prof)
    d["draft"]["tree"] = dict(size.tree)
    g = d["targets"][0]
    g["device"] = "dev"
    for key in ("verify_time", "prefill_time", "decode_time"):
        g[key]["path"] = rel(target_prof)
    if d["acceptance"].get("path"):
        # the shipped pair's curve; `starsim validate` feeds each real run's own curve instead
        d["acceptance"]["path"] = rel(REPO / BASE_SCENARIO.rsplit("/", 1)[0] / d["acceptance"]["path"])
    d["workload"].update(size.workload)
    d["max_requests"] = size.max_requests
    d["real"].update(pair=rel(pair), max_wall_s=size.max_wall_s)
    path = out / "scenario.yaml"
    head = (f"# {BASE_SCENARIO} on {dev} ({info['name']}), written by {by}.\n"
            "# Messaging times (parse/serialize, send/receive, link) are the CPU VM's loopback measurements.\n")
    path.write_text(head + yaml.safe_dump(d, sort_keys=False))
    return path
