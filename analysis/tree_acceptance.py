"""Tree-aware acceptance, held against real runs (analysis/results/acceptance.md).

Measures the offline stdlib pair's ranked acceptance on one tree, then predicts the tokens per
round of other trees from it and runs each of them for real, through the CLI:

    starsim execute scenarios/real_cpu_n2.yaml --out runs/tree-acceptance/4-4-16
    starsim acceptance runs/tree-acceptance/4-4-16 --out runs/tree-acceptance/measured.yaml
    starsim execute scenarios/real_cpu_n2.yaml --set draft.tree.top_k=K ... --out runs/tree-acceptance/K-D-T

(the same prompts and greedy decoding, so the trees differ only in what they offer the
target; the draft's time is a constant there, as timing does not change what is accepted).
Writes analysis/figures/tree-acceptance/tree_acceptance.md (and the same into the results
page): per tree, the real tokens per round, the tree-aware prediction (``acceptance: {kind:
measured}`` on the measured file), and what the measured tree's marginal curve alone would say
(cut or padded with zeros). Needs the offline pair (`starsim models build-pair`) and about three
minutes. Rerun with ``python analysis/tree_acceptance.py``.
"""

from __future__ import annotations

import json
import sys

from _cli import REPO, no_options, starsim, write_results  # analysis/ is on sys.path when a script runs

SCENARIO = "scenarios/real_cpu_n2.yaml"
MEASURED_ON = (4, 4, 16)
TREES = [(2, 3, 6), (6, 5, 30), (3, 6, 12), (1, 4, 4), (8, 5, 40)]
OUT = REPO / "runs" / "tree-acceptance"
FIGS = REPO / "analysis" / "figures" / "tree-acceptance"


def tree_args(shape: tuple[int, int, int]) -> list[str]:
    k, d, t = shape
    # the shipped draft profile was timed on the 4-4-16 tree; another tree gets a constant draft time
    return ["--set", "draft.round_time=null", "--set", "draft.time=0.005", "--set", f"draft.tree.top_k={k}",
            "--set", f"draft.tree.depth={d}", "--set", f"draft.tree.tokens={t}"]


def run(shape: tuple[int, int, int]) -> float:
    """Tokens per round (bonus included) of a real run on tree ``shape``."""
    out = OUT / "-".join(map(str, shape))
    starsim("execute", SCENARIO, *(tree_args(shape) if shape != MEASURED_ON else []), "--out", str(out))
    return json.loads((out / "summary.json").read_text())["mean_accepted_tokens"]


def main() -> None:
    no_options(__doc__)
    if not (REPO / "models" / "pairs" / "stdlib-pair" / "pair.yaml").is_file():
        sys.exit("tree_acceptance.py: no offline pair at models/pairs/stdlib-pair: run `starsim models build-pair`")
    from starsim.acceptance import Marginal, Measured, Shape

    measured_real = run(MEASURED_ON)
    curve_file = OUT / "measured.yaml"
    starsim("acceptance", str(OUT / "-".join(map(str, MEASURED_ON))), "--out", str(curve_file))
    model = Measured.model_validate({"kind": "measured", "path": str(curve_file)})
    plain = Marginal(curve=model.marginal(Shape(*MEASURED_ON)))
    import yaml

    models = yaml.safe_load(curve_file.read_text())["measured_by"].get("models", {})
    shas = ", ".join(f"{role} {m.get('weights_sha256', '?')[:12]}" for role, m in models.items())
    lines = [f"Measured on tree {MEASURED_ON} ({SCENARIO}): {measured_real:.3f} tokens per round; the pair's weights "
             f"(sha256): {shas}.", "",
             "| tree (top-k, depth, tokens) | real tokens/round | tree-aware prediction | error | "
             "the measured curve alone | error |", "|---|---|---|---|---|---|"]
    errors = []
    for shape in TREES:
        real = run(shape)
        pred = 1 + sum(model.marginal(Shape(*shape)))
        cut = 1 + sum(plain.marginal(Shape(*shape)))
        errors.append(abs(pred - real) / real)
        lines.append(f"| {shape} | {real:.3f} | {pred:.3f} | {100 * (pred - real) / real:+.1f}% | {cut:.3f} | "
                     f"{100 * (cut - real) / real:+.1f}% |")
    lines += ["", f"Tree-aware: {sum(e <= 0.05 for e in errors)} of {len(errors)} trees within 5%, "
              f"mean absolute error {100 * sum(errors) / len(errors):.1f}%."]
    FIGS.mkdir(parents=True, exist_ok=True)
    (FIGS / "tree_acceptance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    write_results("acceptance", "tree-acceptance", "\n".join(lines), "python analysis/tree_acceptance.py")


if __name__ == "__main__":
    main()
