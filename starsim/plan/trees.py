"""Tree shapes as a plan axis: a draft option's ``trees`` become one draft option per tree,
each with the option's draft profile priced for that tree on the fly (its ``calibrate import
aiconfigurator`` profile, re-run with the tree, into the plan's output folder), on a base whose
acceptance follows the tree (``kind: ranked``, or a measured file with a ranked table): a
smaller tree is cheaper to draft and verify, and accepts less."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..acceptance import Measured, Phases, Ranked
from ..errors import ScenarioError, StarsimError
from ..scenario import load_scenario
from .plan_file import PlanFile

IMPORTER = "starsim calibrate import aiconfigurator"


def follows_tree(acceptance) -> bool:
    """Whether an acceptance model's curve follows the tree a round drafts."""
    if isinstance(acceptance, Phases):
        return all(follows_tree(p.model) for p in acceptance.phases)
    return isinstance(acceptance, Ranked) or (isinstance(acceptance, Measured) and acceptance._ranked is not None)


def price(profile_path: str, tree: list[int], out_dir: Path) -> Path:
    """The draft profile at ``profile_path`` priced again for ``tree`` (same spec, GPU system,
    backend, data version, tensor parallelism, dtype and per-forward overhead), written under
    ``out_dir`` once (a later plan in the same folder reuses it)."""
    from ..calibrate import gpu_db
    from ..models.specs import TreeShape, load_spec
    from ..profiles import read_profile, write_profile

    prof = read_profile(profile_path)
    prov = prof.provenance
    if prov.get("tool") != IMPORTER:
        raise StarsimError(f"{profile_path}: not a profile of `{IMPORTER}` (tool: {prov.get('tool', 'unknown')}); "
                           "a tree axis re-prices such profiles: price each tree yourself, one draft option each")
    spec = load_spec(prof.model.get("spec_file") or prof.model["spec"])
    shape = TreeShape(top_k=tree[0], depth=tree[1], tokens=tree[2])
    settings = gpu_db.Settings(spec=spec, system=prov["system"], backend=prov["backend"],
                               backend_version=prov.get("data_version"), tp=prof.device.get("tp", prov.get("tp", 1)),
                               draft_tp=prof.device.get("tp", prov.get("tp", 1)), dtype=prov["dtype"].split(" ")[0],
                               overhead_s=float(prov.get("per_forward_overhead_s", 0.0)), roles=("draft",),
                               grid=gpu_db.Grid(**prov["grid"]) if prov.get("grid") else gpu_db.Grid(), tree=shape)
    settings.command = f"{prov.get('command', IMPORTER)} --tree {tree[0]},{tree[1]},{tree[2]} (starsim plan)"
    path = out_dir / f"{Path(profile_path).stem}-tree{tree[0]}-{tree[1]}-{tree[2]}.yaml"
    if not path.is_file():
        profiles, _ = gpu_db.import_profiles(settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_profile(profiles["draft"], path)
    return path


def expand(plan: PlanFile, base: Path, out_dir: Path, source: str = "plan",
           say: Callable[[str], None] = lambda m: None) -> PlanFile:
    """The plan with each draft option's ``trees`` made options of their own (``NAME-tK-D-T``),
    their profiles priced into ``out_dir``; a plan without trees as it is."""
    if not any(d.trees for d in plan.drafts):
        return plan
    drafts = []
    for i, d in enumerate(plan.drafts):
        if not d.trees:
            drafts.append(d)
            continue
        where = f"{source}: drafts.{i}.trees"
        try:
            sc = load_scenario(base, {**plan.set, **d.set, "targets.0.count": 1})
        except ScenarioError as e:
            raise ScenarioError(f"{source} (drafts {d.name}) -> {e.source}", e.problems) from None
        if not follows_tree(sc.acceptance):
            raise StarsimError(f"{where}: the base's acceptance ({sc.acceptance.kind}) does not follow the tree, so "
                               "every tree would accept alike; give acceptance kind: ranked, or a measured file "
                               "with a ranked table (starsim acceptance of a greedy real run)")
        rt = sc.draft.round_time
        if rt is None or getattr(rt, "kind", None) != "profile":
            raise StarsimError(f"{where}: the draft option's round time is not a profile (draft.round_time), so "
                               "there is nothing to price for another tree")
        batch = sc.draft.batch.time
        for tree in d.trees:
            say(f"pricing draft {d.name} for tree {tree} ({rt.path})")
            path = str(price(rt.path, tree, out_dir))
            over = {**d.set, "draft.tree": {"top_k": tree[0], "depth": tree[1], "tokens": tree[2]},
                    "draft.round_time.path": path}
            if batch is not None and getattr(batch, "kind", None) == "profile" and batch.path == rt.path:
                over["draft.batch.time.path"] = path
            drafts.append(d.model_copy(update={"name": f"{d.name}-t{tree[0]}-{tree[1]}-{tree[2]}", "set": over,
                                               "trees": []}))
    return plan.model_copy(update={"drafts": drafts})
