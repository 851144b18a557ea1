"""Bounded YAML reading (issue 16): no file a user can write hangs, exhausts memory or raises
a traceback before its schema is checked; each bound fails with one line naming the file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from starsim.cli import main
from starsim.errors import ScenarioError
from starsim.yaml_files import MAX_ALIAS_VALUES, MAX_BYTES, MAX_DEPTH, MAX_INT_DIGITS, MAX_NODES, parse_yaml, read_yaml

REPO = Path(__file__).resolve().parent.parent
REF = REPO / "scenarios" / "starsd_ref_n4.yaml"


def _laughs(levels: int, width: int = 10) -> str:
    """The "billion laughs": each level an alias list of ``width`` copies of the level below."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(width))}]")
    return "\n".join(lines) + f"\nname: *a{levels}\n"


def _problem(text: str) -> str:
    with pytest.raises(ScenarioError) as e:
        parse_yaml(text, "f.yaml")
    (line,) = e.value.lines()
    return line


def test_an_alias_bomb_is_refused_in_time_linear_in_the_file():
    line = _problem(_laughs(9))  # 10^9 values when expanded
    assert line.startswith("f.yaml: broken YAML: line ") and f"by more than {MAX_ALIAS_VALUES:,} values" in line


@pytest.mark.parametrize("text", ["&a [*a]", "x: &a {k: [1, *a]}", "&a [[[*a]]]"])
def test_a_value_that_contains_itself_is_refused_at_once(text):
    assert "an alias (*name) inside its own anchor" in _problem(text)


def test_a_recursive_alias_in_set_is_one_line(capsys):
    from starsim.cli import main

    assert main(["check", str(Path(__file__).resolve().parent.parent / "scenarios" / "starsd_ref_n4.yaml"),
                 "--set", "description=&a [*a]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inside its own anchor" in err and "Traceback" not in err


def test_aliases_that_expand_little_are_kept():
    data = parse_yaml(_laughs(3))  # 1,000 values
    assert len(data["name"]) == 10 and data["name"][0][0][0] == "lol"


DEEP_BLOCK = "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200))  # block style, one level a line


@pytest.mark.parametrize("text", ["[" * 20_000 + "]" * 20_000, DEEP_BLOCK])
def test_deep_nesting_is_refused(text):
    assert f"nested deeper than {MAX_DEPTH} levels" in _problem(text)


def test_nesting_within_the_bound_is_kept():
    depth = MAX_DEPTH - 2
    assert parse_yaml("[" * depth + "1" + "]" * depth) is not None


def test_too_many_values_are_refused_while_parsing():
    assert f"more than {MAX_NODES:,} values" in _problem("[" + "1," * MAX_NODES + "1]")


def test_a_large_file_is_refused_before_it_is_read(tmp_path, capsys):
    f = tmp_path / "log.csv"
    f.write_text("t,tokens\n" + "0.5,17\n" * (MAX_BYTES // 7))
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"a scenario file is at most {MAX_BYTES / 1e6:g} MB" in err, err


def test_a_huge_integer_is_refused():
    assert f"an integer of 5000 digits (at most {MAX_INT_DIGITS})" in _problem("seed: " + "9" * 5000)
    assert parse_yaml("seed: " + "9" * MAX_INT_DIGITS)["seed"] == int("9" * MAX_INT_DIGITS)


def test_a_key_given_twice_is_refused():
    assert "line 3, column 1: duplicate key 'name'" in _problem("name: a\nseed: 1\nname: b\n")


@pytest.mark.parametrize("kind, write, expected", [
    ("large", lambda p: p.write_text("x" * 2_000), "is 0.0 MB; a scenario file is at most 0.001 MB"),
    ("gzip", lambda p: p.write_bytes(gzip.compress(b"name: x\n")), "a gzip file"),
    ("binary", lambda p: p.write_bytes(b"name: x\x00\x01"), "a binary file"),
    ("latin1", lambda p: p.write_bytes("name: caf\xe9\n".encode("latin-1")), "not a UTF-8 text file"),
    ("dir", lambda p: p.mkdir(), "is a directory, not a scenario file"),
    ("missing", lambda p: None, "file not found"),
])
def test_files_that_are_not_yaml_text(tmp_path, kind, write, expected):
    p = tmp_path / f"{kind}.yaml"
    write(p)
    with pytest.raises(ScenarioError) as e:
        read_yaml(p, "scenario", max_bytes=1_000)
    (line,) = e.value.lines()
    assert line.startswith(str(p)) and expected in line, line


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.text(alphabet=st.sampled_from(list("&*ab01:-[]{},\n \"'!#|>%@`\t\\")), max_size=200))
def test_any_text_parses_or_fails_with_one_line(text):
    """Whatever the characters, a value or one ScenarioError line, never another exception."""
    try:
        parse_yaml(text, "f.yaml")
    except ScenarioError as e:
        assert len(e.lines()) == 1 and "\n" not in e.lines()[0]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                    max_leaves=30))
def test_what_yaml_writes_reads_back(value):
    assert parse_yaml(yaml.safe_dump(value)) == value


@pytest.mark.parametrize("name, text", [
    ("bomb", None),
    ("deep", "name: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("bigint", "seed: " + "7" * 5000 + "\n"),
])
def test_check_exits_2_with_one_line(tmp_path, capsys, name, text):
    f = tmp_path / f"{name}.yaml"
    f.write_text(REF.read_text().replace("name:", "old_name:", 1) + _laughs(9) if text is None else text)
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: {f}: broken YAML"), err


def test_the_other_files_are_read_within_the_bounds(tmp_path):
    from starsim.models.specs import load_spec
    from starsim.profiles import read_profile
    from starsim.sweep.sweep_file import load_sweep

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs(9))
    for read in (read_profile, load_sweep, lambda p: load_spec(str(p))):
        with pytest.raises(ScenarioError) as e:
            read(bomb)
        assert f"by more than {MAX_ALIAS_VALUES:,} values" in str(e.value)


def test_a_gzipped_profile_through_the_cli(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_bytes(gzip.compress(REF.read_bytes()))
    p = subprocess.run([sys.executable, "-m", "starsim.cli", "check", str(f)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "a gzip file" in p.stderr


PROFILE = REPO / "models" / "profiles" / "stdlib-pair.draft.cpu-amd-epyc-2-logical.float32.yaml"


@pytest.mark.parametrize("mutate, expected", [
    (lambda op: op["fit"]["coef"].__setitem__(0, float("nan")), "ops.draft_round.fit.coef.0"),
    (lambda op: op["fit"]["coef"].__setitem__(0, -1e-3), "greater than or equal to 0"),
    (lambda op: op["fit"]["features"].__setitem__(0, "tokens^3"), "unknown fit feature 'tokens^3'"),
    (lambda op: op["rows"][0].__setitem__(-2, float("inf")), "ops.draft_round.rows.0"),
    (lambda op: op.__setitem__("noise_cv", float("nan")), "ops.draft_round.noise_cv"),
])
def test_a_profile_with_a_number_out_of_range_is_an_error(tmp_path, capsys, mutate, expected):
    """A NaN coefficient ran and reported 0% utilization; a negative one crashed mid-run."""
    data = yaml.safe_load(PROFILE.read_text())
    mutate(data["ops"]["draft_round"])
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump(data))
    sc = yaml.safe_load((REPO / "scenarios" / "real_cpu_batch.yaml").read_text())
    text = json.dumps(sc).replace(str(Path("..") / "models" / "profiles" / PROFILE.name), str(prof))
    f = tmp_path / "s.yaml"
    f.write_text(text)
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(prof) in err and expected in err and "Traceback" not in err, err
