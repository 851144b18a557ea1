"""The shipped acceptance curves of the offline stdlib pair, measured again, with the build's provenance.

Writes two files, each through the CLI (greedy, tree 4/4/16, the prompts of the scenario):

- models/acceptance/stdlib-pair.greedy.tree-4-4-16.yaml: the full pair, which the real CPU
  scenarios read (``grep -l stdlib-pair.greedy scenarios/*.yaml``);
- models/acceptance/stdlib-pair-quick.greedy.tree-4-4-16.yaml: the ``--quick`` pair, which
  tests/test_pair_repro.py holds a fresh build against.

For each pair:

    starsim models build-pair [--quick] --out PAIR
    starsim execute scenarios/real_cpu_n2.yaml [--set real.pair=PAIR] --out runs/acceptance-curves/NAME
    starsim acceptance runs/acceptance-curves/NAME --out runs/acceptance-curves/NAME/acceptance.yaml

then the curve file gets a header naming this command, the pair's ``pair.yaml`` under ``pair:``
(settings, corpus, losses and the build's packages and CPU; the weights' sha256 stay where
``starsim acceptance`` writes them, ``measured_by.models``, checked against pair.yaml), and the
packages and CPU of the measurement under ``measured_with``. Paths are made relative to the
repository root.

The full pair is built into models/pairs/stdlib-pair, where the scenarios load it (about five
minutes on 2 cores), unless ``--pair DIR`` names one built already; the quick pair into
runs/acceptance-curves/quick-pair (seconds). Each real run takes about half a minute. On the
same machine the quick pair's curve repeats exactly; the full pair's outputs repeat, its
rounds move by about 1% from run to run (the trees the draft sends are not all the same).
Rerun with ``python analysis/acceptance_curves.py`` (``--quick``: the quick curve only).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
from pathlib import Path

import yaml
from _cli import REPO, starsim  # analysis/ is on sys.path when a script runs

SCENARIO = REPO / "scenarios" / "real_cpu_n2.yaml"
DEFAULT_PAIR = REPO / "models" / "pairs" / "stdlib-pair"  # the scenario's real.pair
OUT = REPO / "runs" / "acceptance-curves"
CURVES = REPO / "models" / "acceptance"
TREE = "greedy.tree-4-4-16"  # the scenario's decoding and tree, as the file names say
COMMAND = "python analysis/acceptance_curves.py"


def fail(msg: str) -> None:
    """One line, exit code 2: a prerequisite the user can provide is missing."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def build(pair: Path, quick: bool) -> None:
    starsim("models", "build-pair", *(["--quick", "--quiet"] if quick else []), "--out", str(pair))


def measure(pair: Path, run_dir: Path) -> dict:
    """Execute the scenario on ``pair`` into ``run_dir`` and return what ``starsim acceptance``
    writes for it (the curve, its rounds, measured_by with the weights' sha256)."""
    pair = Path(pair).resolve()
    # the scenario as shipped where it loads this pair itself; a pair in the checkout named
    # relative to the scenario's folder, so that the run's scenario hash is the same in any clone
    inside = pair.is_relative_to(REPO)
    over = [] if pair == DEFAULT_PAIR.resolve() else [
        "--set", f"real.pair={os.path.relpath(pair, SCENARIO.parent) if inside else pair}"]
    starsim("execute", shown(SCENARIO), *over, "--no-trace", "--out", str(run_dir))
    out = Path(run_dir) / "acceptance.yaml"
    starsim("acceptance", str(run_dir), "--out", str(out))
    return yaml.safe_load(out.read_text())


def relative(value):
    """``value`` with every absolute path inside the checkout made relative to its root."""
    if isinstance(value, dict):
        return {k: relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v) for v in value]
    if isinstance(value, str) and value.startswith(str(REPO) + os.sep):
        return shown(Path(value))
    return value


def with_provenance(curve: dict, pair: Path) -> dict:
    """The curve with its pair's pair.yaml (less the weights' sha256, which measured_by.models
    holds: they must agree) and the measurement's environment."""
    from starsim.real.pair import build_environment, pair_info

    info = dict(pair_info(pair))
    shas = info.pop("weights_sha256", {})
    models = curve.get("measured_by", {}).get("models", {})
    for role, sha in shas.items():
        got = models.get(role, {}).get("weights_sha256")
        if got != sha:
            raise SystemExit(f"{Path(sys.argv[0]).name}: the run loaded a {role} of sha256 {got}, but "
                             f"{shown(pair / 'pair.yaml')} says {sha}: was the pair rebuilt during the run?")
    return {**relative(curve), "pair": info,
            "measured_with": {**build_environment(), "platform": platform.platform()}}


def header(name: str, pair: Path, quick: bool) -> str:
    build_cmd = f"starsim models build-pair{' --quick' if quick else ''} --out {shown(pair)}"
    over = "" if pair.resolve() == DEFAULT_PAIR.resolve() else f" --set real.pair={shown(pair)}"
    run = f"runs/acceptance-curves/{name}"
    return "\n".join([
        f"# Per-position acceptance of the offline stdlib pair{' (--quick)' if quick else ''}, greedy, tree 4/4/16,",
        f"# on the prompts of {shown(SCENARIO)}. Regenerated by `{COMMAND}`, which runs",
        f"#   {build_cmd}",
        f"#   starsim execute {shown(SCENARIO)}{over} --no-trace --out {run}",
        f"#   starsim acceptance {run}",
        "# and adds `pair` (the build's pair.yaml; the weights' sha256 are under measured_by.models) and",
        "# `measured_with` (the measurement's packages and CPU). marginal: draft tokens accepted per round,",
        "# the bonus token not counted; mean_accepted_tokens: tokens per round, the bonus counted (1 + the",
        "# marginal's sum). Acceptance depends on the weights, the tree and the prompts; the weights on the",
        "# build's settings, packages and the CPU's instruction set (see starsim/real/pair.py).",
        "",
    ])


def regenerate(name: str, pair: Path, quick: bool, fresh: bool) -> dict:
    """Build (when ``fresh``) and measure ``pair``; write models/acceptance/NAME.greedy.tree-4-4-16.yaml."""
    if fresh:
        build(pair, quick)
    doc = with_provenance(measure(pair, OUT / name), pair)
    path = CURVES / f"{name}.{TREE}.yaml"
    path.write_text(header(name, pair, quick) + yaml.safe_dump(doc, sort_keys=False))
    shas = ", ".join(f"{role} {m['weights_sha256'][:12]}" for role, m in doc["measured_by"]["models"].items())
    print(f"{shown(path)}: {doc['mean_accepted_tokens']:.3f} tokens per round over {doc['rounds']} rounds, "
          f"marginal {', '.join(f'{a:.3f}' for a in doc['marginal'])}; weights {shas}")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", type=Path, help="a full pair built already (`starsim models build-pair --out DIR`): "
                    "measured as it is, not rebuilt (default: build one into models/pairs/stdlib-pair)")
    ap.add_argument("--quick", action="store_true", help="only the quick pair's curve (under a minute)")
    args = ap.parse_args()
    for module in ("torch", "transformers", "tokenizers"):
        if importlib.util.find_spec(module) is None:
            fail(f"needs {module} (the real backend): pip install -e '.[torch]'")
    if args.pair is not None and not (args.pair / "pair.yaml").is_file():
        fail(f"no built pair at {args.pair} (no pair.yaml): build one with "
             f"`starsim models build-pair --out {args.pair}`, or leave --pair out to build it here")
    OUT.mkdir(parents=True, exist_ok=True)
    regenerate("stdlib-pair-quick", OUT / "quick-pair", quick=True, fresh=True)
    if not args.quick:
        regenerate("stdlib-pair", args.pair or DEFAULT_PAIR, quick=False, fresh=args.pair is None)


if __name__ == "__main__":
    main()
