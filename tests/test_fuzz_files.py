"""Fuzzing the files and flags beside scenarios (issue 16): sweep files, latency profiles and
command-line flags, mutated field by field. Each input either works (finite times, valid
points) or is refused with one line (exit 2 from the command line) that names the file or
flag; never another exception, never a hang, and an existing output directory is left as
it was when a command refuses its input. Seeded; ``STARSIM_FUZZ_EXAMPLES=N`` runs more.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_scenarios import _wall, mutate

from starsim.cli import main
from starsim.errors import ScenarioError, StarsimError
from starsim.profiles import idle_factor, op_sampler, read_profile
from starsim.sweep.run import run_point
from starsim.sweep.sweep_file import load_sweep

REPO = Path(__file__).resolve().parent.parent
SWEEPS = sorted((REPO / "scenarios" / "sweeps").glob("*.yaml"))
# latency profiles (what scenarios read); link and stack profiles are reports the tool writes
PROFILES = sorted(p for p in (REPO / "models" / "profiles").glob("*.yaml") if "ops" in yaml.safe_load(p.read_text()))
EXAMPLES = int(os.environ.get("STARSIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=max(EXAMPLES // 5, 20), deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@st.composite
def mutated(draw, files: list[Path]):
    """(file, field path, mutated data): one value replaced, one key deleted or one added."""
    path = draw(st.sampled_from(files))
    data = copy.deepcopy(_load(path))
    field, _how = mutate(draw, data)
    return path, field, data


@functools.cache
def _load(path: Path):
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    # NaN and inf as YAML's .nan/.inf
    p.write_text(yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), allow_unicode=True))
    return p


def _one_line(e: Exception) -> None:
    if isinstance(e, ScenarioError):
        assert e.problems and all(isinstance(f, str) and m and "\n" not in m for f, m in e.problems), e.problems
    else:
        assert str(e).strip() and "\n" not in str(e).strip(), e


@FUZZ
@given(case=mutated(SWEEPS))
def test_a_mutated_sweep_file_gives_valid_points_or_names_a_field(tmp_path, case):
    src, _field, data = case
    if isinstance(data, dict) and isinstance(data.get("base"), str):
        data["base"] = str((src.parent / data["base"]).resolve())  # the copy is read from elsewhere
    path = _write(tmp_path, src.name, data)
    with _wall(60):
        try:
            sweep = load_sweep(path)
            points = sweep.points()
        except (ScenarioError, StarsimError) as e:
            _one_line(e)
            return
        for p in points[:3]:  # each point's closed form runs (the simulator is the scenario fuzz's)
            try:
                s = run_point(p.scenario, analytic=True)["summary"]
            except StarsimError as e:
                _one_line(e)
                continue
            for key in ("draft_utilization", "throughput_tokens_per_s"):
                v = s.get(key)
                assert v is None or math.isnan(v) or (math.isfinite(v) and v >= 0), (key, v)


@FUZZ
@given(case=mutated(PROFILES))
def test_a_mutated_profile_gives_finite_times_or_names_a_field(tmp_path, case):
    src, _field, data = case
    path = _write(tmp_path, src.name, data)
    with _wall(30):
        try:
            prof = read_profile(path)
        except (ScenarioError, StarsimError) as e:
            _one_line(e)
            return
        rng = np.random.default_rng(0)
        for name, op in prof.ops.items():
            if op.fit is None:
                continue
            f = op_sampler(str(path), name, prof, rng)
            for tokens, context in ((1, 1), (16, 512), (64, 8192)):
                t = f(tokens, context, 4)
                assert math.isfinite(t) and t >= 0, (name, tokens, context, t)
        if "draft_idle" in prof.ops:
            g = idle_factor(prof)
            if g is not None:
                assert math.isfinite(g(0.01)) and g(0.01) >= 0


# ------------------------------------------------------------------ command-line flags

REF = REPO / "scenarios" / "starsd_ref_n1.yaml"
CONST = REPO / "scenarios" / "const_star.yaml"
NUMBERS = st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e308", "1e-300", "", "x", "10" * 20, "2",
                           "0.5", "1-3", "1,2", "1-1000000000", "3-1", "0-4",
                           "&a [*a]", "&a {k: *a}"])  # values that contain themselves (recursive aliases)


@st.composite
def argvs(draw, out: Path):
    cmd = draw(st.sampled_from(["run", "analyze", "check"]))
    argv = [cmd, str(REF), "--set", "duration_s=5", "--set", "warmup_s=0"]
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(["duration_s", "window_s", "targets.0.count", "draft.tree.depth", "seed",
                                      "draft.time", "workload.prompts", "nope", "targets.9.count", "draft"]))
        argv += ["--set", f"{field}={draw(NUMBERS)}"]
    if cmd == "run":
        argv += ["--out", str(out), "--csv"]
        if draw(st.booleans()):
            argv += ["--trace-s", draw(NUMBERS)]
    if cmd == "analyze" and draw(st.booleans()):
        argv += ["--n", draw(NUMBERS)]
    return argv


@pytest.fixture
def existing(tmp_path) -> Path:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("a user's earlier results\n")
    return out


def _listing(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@FUZZ
@given(data=st.data())
def test_fuzzed_flags_exit_0_or_2_in_one_line_and_leave_the_output_alone_on_error(existing, capsys, data):
    before = _listing(existing)
    argv = data.draw(argvs(existing))
    with _wall(60):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals
            code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
        assert lines and all(ln.startswith("error: ") for ln in lines), err  # one line per problem
        assert _listing(existing) == before, argv  # refused: nothing written, nothing removed


@pytest.mark.parametrize("damage", ["bad-scenario", "too-much-work", "bad-flag"])
def test_a_refused_run_leaves_an_existing_output_directory_as_it_was(existing, tmp_path, damage):
    before = _listing(existing)
    argv = {"bad-scenario": ["run", str(REF), "--set", "draft.tree.depth=-1"],
            "too-much-work": ["run", str(CONST), "--set", "draft.time=0", "--set", "targets.0.verify_time=0",
                              "--set", "targets.0.prefill_time=0", "--set", "targets.0.link.latency_s=0"],
            "bad-flag": ["run", str(REF), "--trace-s", "nan"]}[damage]
    try:
        code = main([*argv, "--out", str(existing)])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert _listing(existing) == before


def test_mutation_helpers_cover_every_file():
    assert SWEEPS and PROFILES
    for p in SWEEPS:
        load_sweep(p)
    for p in PROFILES:
        read_profile(p)
