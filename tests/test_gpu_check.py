"""analysis/gpu_check.py: the GPU check's own code, run end to end on the CPU at toy size.

The CPU run goes through every step the GPU run does (calibrate per role, the comparison
with an imported profile, the pair, its profiles, the device variant of the scenario,
execute, validate, the summary); only the device string and the sizes differ. The
aiconfigurator import is not on this machine, so the imported profile here is synthetic.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "analysis" / "gpu_check.py"


def _load():
    from starsim.calibrate import gpu_check

    return gpu_check


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _imported(tmp: Path, spec_name: str) -> str:
    """Synthetic imported profiles in the file layout the import writes; returns the --imported template."""
    from starsim.profiles import ProfileFile, build_op, write_profile

    def rows(f, *grid):
        return [(*x, f(*x), f(*x) * 0.95, f(*x) * 1.05, 10) for x in grid]

    tc = [(t, c) for t in (1, 8, 32) for c in (16, 256, 1024)]
    target = {"prefill": build_op(["tokens"], rows(lambda t: 2e-3 + 2e-5 * t, (8,), (64,), (512,))),
              "verify": build_op(["tokens", "context"], rows(lambda t, c: 3e-3 + 5e-5 * t + 1e-8 * t * c, *tc)),
              # the import's one-token step, which the check compares with the measured verify at tokens 1
              "decode": build_op(["context"], rows(lambda c: 3e-3 + 1e-8 * c, (16,), (256,), (1024,)))}
    draft = {"draft_round": build_op(["tokens", "context"], rows(lambda t, c: 4e-3 + 1e-5 * t + 1e-7 * c, *tc),
                                     fixed={"tree": {"top_k": 8, "depth": 5, "tokens": 48}}),
             "draft_idle": build_op(["gap_s"], rows(lambda g: 5e-3, (0.0,), (0.01,)))}  # no fit: not compared
    template = str(tmp / "imported" / "{spec}.{role}.{system}-{backend}-tp{tp}.{dtype}.yaml")
    for role, ops in (("target", target), ("draft", draft)):
        prof = ProfileFile(kind="compute", model={"spec": spec_name, "role": role},
                           device={"name": "test_sys"}, provenance={"tool": "synthetic (test)"}, ops=ops)
        write_profile(prof, template.format(spec=spec_name, role=role, system="test_sys", backend="vllm", tp=1,
                                            dtype="float32"))
    return template


def test_help_and_readme_start_no_work():
    out = _run("--help", timeout=60)
    assert out.returncode == 0 and "--device" in out.stdout and "--imported" in out.stdout
    out = _run("--readme", timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("## GPU check")
    out = subprocess.run(["sh", str(REPO / "analysis" / "gpu_check.sh"), "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--device" in out.stdout


def test_system_names():
    gc = _load()
    assert gc.system_for("NVIDIA H200") == ("h200_sxm", True)
    assert gc.system_for("NVIDIA H100 80GB HBM3") == ("h100_sxm", True)
    assert gc.system_for("NVIDIA A100-SXM4-80GB") == ("a100_sxm", True)
    assert gc.system_for("NVIDIA H100 PCIe") == ("h100_sxm", False)  # nearest: the database has SXM parts
    assert gc.system_for("NVIDIA B200") == ("b200_sxm", True)
    assert gc.system_for("NVIDIA L4") is None
    assert gc.role_ops("prefill,draft_round") == {"target": "prefill", "draft": "draft_round"}
    assert gc.role_ops("verify") == {"target": "verify"}


def test_missing_prerequisites_are_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    cases = [("--device", "cpu", "--spec", "no-such-spec"),
             ("--device", "cpu", "--pair", str(tmp_path / "no-pair")),
             ("--device", "cpu", "--system", "test_sys", "--imported", str(tmp_path / "{spec}.{role}.yaml"))]
    if not torch.cuda.is_available():
        cases.append(("--device", "cuda:0"))
    for args in cases:
        out = _run(*args, "--out", str(tmp_path / "out"), timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, out.stderr)
    assert not (tmp_path / "out").exists()  # nothing started


def test_cpu_run_end_to_end(tmp_path):
    """The whole check on the CPU: what a GPU run does, at toy size (about 80 s on 2 idle cores)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    template = _imported(tmp_path, "tiny-cpu")
    out = tmp_path / "check"
    # --ops: a role's own ops go to its calibrate process; --targets 1 keeps the test short
    # (a second target is the same code with another count)
    res = _run("--device", "cpu", "--system", "test_sys", "--imported", template, "--ops",
               "prefill,verify,draft_round", "--targets", "1", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr

    steps = json.loads((out / "steps.json").read_text())
    assert [s["step"] for s in steps["steps"]] == ["calibrate-target", "calibrate-draft", "build-pair",
                                                   "calibrate-pair", "execute-n1", "validate"]
    assert all(s["status"] == "ok" for s in steps["steps"]), steps["steps"]
    assert steps["system"] == "test_sys" and steps["device"] == "cpu" and steps["torch"]

    with (out / "compare.csv").open() as fh:
        ops = {(r["role"], r["op"]): r for r in csv.DictReader(fh)}
    assert set(ops) == {("target", "prefill"), ("target", "verify"), ("target", "decode"), ("draft", "draft_round")}
    for r in ops.values():
        assert 0 < float(r["ratio_min"]) <= float(r["ratio_median"]) <= float(r["ratio_max"])
    assert "tree 4/4/16 measured vs 8/5/48 imported" in ops["draft", "draft_round"]["note"]
    assert ops["target", "decode"]["note"] == "measured: verify at tokens 1"
    with (out / "compare_points.csv").open() as fh:
        points = list(csv.DictReader(fh))
    assert len(points) == sum(int(r["points"]) for r in ops.values())

    scenario = (out / "scenario.yaml").read_text()
    assert "torch: cpu" in scenario and "pair: quick-pair" in scenario  # relative: the directory travels whole
    run = json.loads((out / "runs" / "execute-n1" / "summary.json").read_text())
    assert run["requests_completed"] >= 1 and run["provenance"]["source"] == "real"
    v = json.loads((out / "validate" / "validation.json").read_text())
    assert [p["point"] for p in v["points"]] == ["targets.0.count=1"]
    assert (out / "validate" / "targets.0.count=1" / "real" / "summary.json").exists()

    summary = (out / "summary.md").read_text()
    for part in ("## Steps", "## Measured vs imported", "| target | verify |", "## Real runs on cpu",
                 "| targets.0.count=1 |", "torch "):
        assert part in summary, part


def test_gpu_only_branches(tmp_path):
    """What only a GPU run reaches, without one: the device variant of the scenario (every
    process on cuda:0, no shared cores), the summary's CUDA lines, the default directory name."""
    from starsim.real.models import torch_device
    from starsim.scenario import load_scenario

    gc = _load()
    info = {"kind": "cuda", "device": "cuda:0", "name": "NVIDIA H200"}
    prof = REPO / "models" / "profiles"
    path = gc.scenario(tmp_path, info, gc.GPU, tmp_path / "quick-pair",
                       prof / "stdlib-pair.target.cpu-amd-epyc-2-logical.float32.yaml",
                       prof / "stdlib-pair.draft.cpu-amd-epyc-2-logical.float32.yaml", 2)
    sc = load_scenario(path, ["targets.0.count=2"])
    assert sc.devices["dev"].torch == "cuda:0" and sc.devices["dev"].cores is None
    assert {torch_device(sc, f"dev[{k}]") for k in range(3)} == {"cuda:0"}  # `torch: cuda` would spread them
    assert sc.draft.device == "dev[2]" and sc.real.max_wall_s == gc.GPU.max_wall_s
    assert gc.slug(info["name"]) == "nvidia-h200"

    prov = {"started": "2026-01-01T00:00:00Z", "wall_s": 300.0, "budget_s": 480.0, "torch": "2.11.0+cu130",
            "cuda": "13.0", "cudnn": 91000, "transformers": "5.17.0", "python": "3.12.3", "host": "h",
            "platform": "Linux", "memory_gib": 139.8, "multiprocessors": 132, "capability": "9.0",
            "driver": "580.159.04", "system": "h200_sxm", "system_match": "exact", "spec": gc.DEFAULT_SPEC,
            "dtype": "bfloat16", "grid": "default", "pair": str(tmp_path / "quick-pair"), "pair_built": True,
            "targets": [1, 2], "starsim_git": "abc", "command": "python analysis/gpu_check.py", "steps": [],
            "compare": {}, **info}
    md = gc.summary_md(tmp_path, prov, {}, [1, 2])
    assert "(CUDA 13.0, cuDNN 91000)" in md and "driver 580.159.04" in md and "h200_sxm (exact)" in md
