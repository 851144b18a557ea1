"""The GPU check's options, sizes and README section: the standard library only, so that
``analysis/gpu_check.py --help`` answers even where starsim's dependencies are missing
(the script then loads this file by its path)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # models/, scenarios/ and the figures live there
DEFAULT_SPEC = "qwen3-8b-qwen3-06b"
BUDGET_S = 480.0
IMPORTED = "models/profiles/{spec}.{role}.{system}-{backend}-tp{tp}.{dtype}.yaml"
FIGURES = Path("analysis/figures/gpu_check")
BASE_SCENARIO = "scenarios/real_cpu_n2.yaml"
# what the simulator of the real run reads from the pair's profiles (its warm/cold curves included)
PAIR_OPS = "prefill,verify,verify_idle,draft_round,draft_idle"
SCRIPT = "analysis/gpu_check.py"
DESCRIPTION = "The GPU check: calibrate one GPU spec, compare it with the imported profile, run a real star."

# torch's device name -> aiconfigurator system (its database holds SXM parts only: a PCIe or
# NVL part maps to its SXM sibling, marked "nearest", as its clocks and bandwidth are lower)
SYSTEMS = (("H200", "h200_sxm"), ("H100", "h100_sxm"), ("A100", "a100_sxm"), ("B200", "b200_sxm"))


@dataclass
class Size:
    """What one device kind runs: the GPU sizes, or the toy sizes of ``--device cpu``."""

    spec: str
    grid: str
    pair_grid: str
    tree: dict  # the pair's draft tree (its spec and the scenario: a profile holds one tree)
    workload: dict
    max_requests: int
    max_wall_s: float
    # seconds each step is expected to take: a step's deadline keeps this much for the later ones
    est_s: dict = field(default_factory=dict)


GPU = Size(
    # the pair at the quick grid: its calls take 1-3 ms, for which the default grid's adaptive
    # timing sizes blocks of 100 calls (about 2 minutes for the pair); the workload stays inside
    # the quick grid's contexts (16-64), the tree's 17 verify tokens beyond its 8 (flagged)
    spec=DEFAULT_SPEC, grid="default", pair_grid="quick", tree={"top_k": 4, "depth": 4, "tokens": 16},
    workload={"prompts": 12, "prompt_tokens": {"kind": "uniform", "low": 16, "high": 32}, "output_tokens": 32},
    max_requests=12, max_wall_s=90.0,
    # ESTIMATES for an H200 (not yet run on one): the 8B/0.6B spec's calls (HF eager, 15-25 ms a
    # forward) at the default cuda grid; three processes starting torch and CUDA per real run;
    # validate's spot checks before and after each point
    est_s={"calibrate-target": 110, "calibrate-draft": 110, "build-pair": 15, "calibrate-pair": 25, "execute": 30,
           "validate": 110},
)
TOY = Size(
    spec="tiny-cpu", grid="quick", pair_grid="quick", tree={"top_k": 2, "depth": 3, "tokens": 7},
    workload={"prompts": 4, "prompt_tokens": {"kind": "uniform", "low": 16, "high": 32}, "output_tokens": 16},
    max_requests=4, max_wall_s=60.0,
    # measured on the project's 2-core VM
    est_s={"calibrate-target": 11, "calibrate-draft": 12, "build-pair": 8, "calibrate-pair": 9, "execute": 21,
           "validate": 51},
)


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The check's options (the script's and ``starsim calibrate gpu-check``'s)."""
    ap.add_argument("--device", default="cuda:0", help="cuda:K (default cuda:0), or cpu: the toy-size run")
    ap.add_argument("--spec", help=f"GPU spec to calibrate (default {DEFAULT_SPEC}; tiny-cpu with --device cpu)")
    ap.add_argument("--grid", choices=["default", "quick"],
                    help="calibrate's grid for the spec (default: default on a GPU, quick on the CPU)")
    ap.add_argument("--ops", help="only these ops of the spec (comma list, calibrate --ops; default all)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the spec's for the device")
    ap.add_argument("--system", help="aiconfigurator system of the imported profile (default: from the device's "
                    "name: " + ", ".join(s for _, s in SYSTEMS) + ")")
    ap.add_argument("--backend", default="vllm", help="backend of the imported profile (default vllm)")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallelism of the imported profile (default 1)")
    ap.add_argument("--imported", default=IMPORTED,
                    help=f"imported profile path, with {{spec}} {{role}} {{system}} {{backend}} {{tp}} {{dtype}} "
                    f"(default {IMPORTED}, relative to the repository)")
    ap.add_argument("--no-compare", action="store_true", help="skip step 2 (no imported profile needed)")
    ap.add_argument("--pair", type=Path, help="a built pair (starsim models build-pair --out DIR) instead of "
                    "building the quick one")
    ap.add_argument("--targets", default="1,2", help="target counts of the real runs (default 1,2)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help=f"wall-clock budget of the whole check (default {BUDGET_S:.0f})")
    ap.add_argument("--out", type=Path, help="output directory (new or empty)")
    ap.add_argument("--readme", action="store_true", help="print the README section 'GPU check' and exit")
    return ap


def epilog(command: str) -> str:
    return (f"Without --out: {FIGURES}/DATE-DEVICE/. {command} --readme prints the README section.")


def parser() -> argparse.ArgumentParser:
    """The script's parser."""
    return add_arguments(argparse.ArgumentParser(description=DESCRIPTION, epilog=epilog(f"python {SCRIPT}")))


def readme() -> str:
    """The README section "GPU check", its step times from the sizes' estimates."""
    g, t = GPU.est_s, TOY.est_s
    total = lambda e: sum(e.values()) + e["execute"]  # noqa: E731 - two executes (1 and 2 targets)
    rows = [("1", f"`starsim calibrate compute --spec {DEFAULT_SPEC} --device cuda:0 --roles target`, "
             "then `--roles draft` (default grid; CPU: tiny-cpu, quick grid)", g["calibrate-target"]
             + g["calibrate-draft"], t["calibrate-target"] + t["calibrate-draft"]),
            ("2", "measured / imported, per op", 0, 0),
            ("3", "`starsim models build-pair --quick`; the pair timed (`calibrate compute --grid quick`)",
             g["build-pair"] + g["calibrate-pair"], t["build-pair"] + t["calibrate-pair"]),
            ("3", "`starsim execute scenario.yaml` with 1, then 2 targets", 2 * g["execute"], 2 * t["execute"]),
            ("3", "`starsim validate scenario.yaml --sweep targets.0.count=1,2`", g["validate"], t["validate"])]
    table = "\n".join(f"| {n} | {what} | {a or '<1'} | {b or '<1'} |" for n, what, a, b in rows)
    return f"""## GPU check

What a GPU is needed for, in one script, within {BUDGET_S / 60:.0f} minutes, into one directory:

```bash
analysis/gpu_check.sh                 # python analysis/gpu_check.py --device cuda:0 --spec {DEFAULT_SPEC}
analysis/gpu_check.sh --device cpu    # the same steps at toy size on the CPU (tiny-cpu, the test runs this)
```

1. **Calibrate** the spec on the GPU, one process per role. A role still running at its deadline
   gets Ctrl-C and keeps what it measured (`provenance.interrupted`).
2. **Compare** it with the imported aiconfigurator profile of the same GPU,
   `{IMPORTED}` (`starsim calibrate import
   aiconfigurator`; the system comes from the device's name, `--system` overrides, `--no-compare`
   skips the step): per op, at each measured grid point, measured time / the imported fit's
   prediction, median and range (`compare.md`, `compare.csv`, `compare_points.csv`).
3. **Run a real star on the GPU**: the offline pair (`--quick`, built in seconds; `build-pair` trains
   on the CPU, single-threaded, so the full pair costs its ~5 CPU minutes on a GPU machine too:
   build it beforehand and pass `--pair models/pairs/stdlib-pair`), timed on the GPU, in a variant of
   `{BASE_SCENARIO}` with every process on the GPU (`scenario.yaml`).
4. **Write** `summary.md`: date, GPU, driver, torch and CUDA versions, git commit, every command with
   its wall time and outcome, the tables; beside it `steps.json`, the profiles, the run directories
   and one log per step, in `{FIGURES}/DATE-DEVICE/` (`--out` for another).

| step | what | H200 s (estimated, not yet run) | CPU toy s (2-core VM) |
|---|---|---|---|
{table}
| | total | about {total(g)} | about {total(t)} |

Each step's deadline keeps the later steps' estimated share, so the check ends within
`--budget-s` ({BUDGET_S:.0f}). Exit status: 0 every step ran (a calibration cut at its deadline
keeps what it measured and counts as run), 1 a step failed or was skipped (its log is in `logs/`),
2 a prerequisite is missing, said in one line: no CUDA device, no spec, no imported profile, no pair.
"""
