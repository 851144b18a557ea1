"""Profiles a plan prices on the fly.

- Tree shapes as a plan axis: a draft option's ``trees`` become one draft option per tree,
  each with the option's draft profile priced for that tree (its ``calibrate import
  aiconfigurator`` profile, re-run with the tree, into the plan's output folder), on a base
  whose acceptance follows the tree (``kind: ranked``, or a measured file with a ranked
  table): a smaller tree is cheaper to draft and verify, and accepts less.
- A plan's ``overhead_us``: every option's profiles priced again with that per-forward host
  overhead (launches, scheduler, sampler), which falls once per forward: ``depth`` times on a
  draft round, once on a verify.
"""

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


def price(profile_path: str, out_dir: Path, tree: list[int] | None = None, overhead_s: float | None = None) -> Path:
    """The profile at ``profile_path`` (a target's or a draft's) priced again, for another
    ``tree`` (a draft's) and/or another per-forward ``overhead_s``, with everything else as it
    was (spec, GPU system, backend, data version, tensor parallelism, dtype, grid); written
    under ``out_dir`` once (a later plan in the same folder reuses it)."""
    from ..calibrate import gpu_db
    from ..models.specs import TreeShape, load_spec
    from ..profiles import read_profile, write_profile

    prof = read_profile(profile_path)
    prov = prof.provenance
    if prov.get("tool") != IMPORTER:
        raise StarsimError(f"{profile_path}: not a profile of `{IMPORTER}` (tool: {prov.get('tool', 'unknown')}); "
                           "a plan re-prices only such profiles for another tree or overhead: price it yourself, "
                           "one option each")
    role = prof.model.get("role", "draft")
    shape = None
    if tree is not None:
        shape = TreeShape(top_k=tree[0], depth=tree[1], tokens=tree[2])
    elif "draft_round" in prof.ops and prof.ops["draft_round"].fixed.get("tree"):
        shape = TreeShape(**prof.ops["draft_round"].fixed["tree"])  # the tree it was priced for
    overhead = float(prov.get("per_forward_overhead_s", 0.0)) if overhead_s is None else overhead_s
    tp = prof.device.get("tp", prov.get("tp", 1))
    settings = gpu_db.Settings(spec=load_spec(prof.model.get("spec_file") or prof.model["spec"]),
                               system=prov["system"], backend=prov["backend"],
                               backend_version=prov.get("data_version"), tp=tp, draft_tp=tp,
                               dtype=prov["dtype"].split(" ")[0], overhead_s=overhead, roles=(role,),
                               grid=gpu_db.Grid(**prov["grid"]) if prov.get("grid") else gpu_db.Grid(), tree=shape)
    tag = (f"-tree{tree[0]}-{tree[1]}-{tree[2]}" if tree is not None else "") + \
        (f"-oh{overhead * 1e6:g}us" if overhead_s is not None else "")
    settings.command = (f"{prov.get('command', IMPORTER)}" + (f" --tree {tree[0]},{tree[1]},{tree[2]}" if tree else "")
                        + (f" --overhead-us {overhead * 1e6:g}" if overhead_s is not None else "") + " (starsim plan)")
    path = out_dir / f"{Path(profile_path).stem}{tag}.yaml"
    if not path.is_file():
        profiles, _ = gpu_db.import_profiles(settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_profile(profiles[role], path)
    return path


# the profile fields a plan re-prices for an overhead: each option's own role's
TARGET_FIELDS = ("targets.0.verify_time", "targets.0.prefill_time", "targets.0.decode_time")
DRAFT_FIELDS = ("draft.round_time", "draft.batch.time")


def _field(sc, path: str):
    obj = sc
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _with_overhead(plan: PlanFile, base: Path, out_dir: Path, source: str, say) -> PlanFile:
    """Every option's profiles priced again with the plan's per-forward overhead."""
    overhead = plan.overhead_us * 1e-6
    done: dict[str, str] = {}

    def option(o, fields, what):
        sc = load_scenario(base, {**plan.set, **o.set, "targets.0.count": 1})
        over = dict(o.set)
        for f in fields:
            dist = _field(sc, f)
            if dist is None or getattr(dist, "kind", None) != "profile":
                continue
            if dist.path not in done:
                say(f"pricing {dist.path} with {plan.overhead_us:g} us per forward")
                try:
                    done[dist.path] = str(price(dist.path, out_dir, overhead_s=overhead))
                except StarsimError as e:
                    raise StarsimError(f"{source}: overhead_us: {what} {o.name}: {e}") from None
            over[f"{f}.path"] = done[dist.path]
        return o.model_copy(update={"set": over})

    return plan.model_copy(update={"targets": [option(t, TARGET_FIELDS, "targets") for t in plan.targets],
                                   "drafts": [option(d, DRAFT_FIELDS, "drafts") for d in plan.drafts]})


def expand(plan: PlanFile, base: Path, out_dir: Path, source: str = "plan",
           say: Callable[[str], None] = lambda m: None) -> PlanFile:
    """The plan with each draft option's ``trees`` made options of their own (``NAME-tK-D-T``),
    their profiles priced into ``out_dir``; a plan without trees as it is."""
    if any(d.trees for d in plan.drafts):
        plan = _with_trees(plan, base, out_dir, source, say)
    return plan if plan.overhead_us is None else _with_overhead(plan, base, out_dir, source, say)


def _with_trees(plan: PlanFile, base: Path, out_dir: Path, source: str, say) -> PlanFile:
    """Each draft option's ``trees`` as options of their own, each priced for its tree."""
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
            path = str(price(rt.path, out_dir, tree=tree))
            over = {**d.set, "draft.tree": {"top_k": tree[0], "depth": tree[1], "tokens": tree[2]},
                    "draft.round_time.path": path}
            if batch is not None and getattr(batch, "kind", None) == "profile" and batch.path == rt.path:
                over["draft.batch.time.path"] = path
            drafts.append(d.model_copy(update={"name": f"{d.name}-t{tree[0]}-{tree[1]}-{tree[2]}", "set": over,
                                               "trees": []}))
    return plan.model_copy(update={"drafts": drafts})
