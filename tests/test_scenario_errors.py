"""Bad input: one clear line per problem naming the file and the field path, exit code 2,
no traceback. Each case mutates a copy of the reference scenario."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from starsim.cli import main
from starsim.errors import ScenarioError
from starsim.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
REF = REPO / "scenarios" / "starsd_ref_n4.yaml"
_REF = yaml.safe_load(REF.read_text())


def ref() -> dict:
    return copy.deepcopy(_REF)


def write(tmp_path: Path, data: dict, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert all(ln.startswith("error: ") for ln in lines), err
    return lines


def one_error(err: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


def _set(path: str, value):
    """A mutation setting ``a.b.0.c`` to ``value``."""

    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def _pop(path: str):
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[last]

    return mutate


def _dup_group(d: dict) -> None:
    d["targets"].append(copy.deepcopy(d["targets"][0]))


# (id, mutation, field path in the message, text the message must contain)
CASES = [
    ("unknown_top_level_key", _set("colour", "red"), "colour",
     "unknown key; allowed: name, description, seed, mode, duration_s"),
    ("unknown_nested_key", _set("draft.tree.topk", 3), "draft.tree.topk",
     "unknown key (did you mean 'top_k'?); allowed: top_k, depth, tokens"),
    ("unknown_key_in_timing_spec", _set("draft.time.f", 1.0), "draft.time.f",
     "unknown key; allowed: kind, a, b, c, d, e, cv"),
    ("unknown_key_in_link", _set("targets.0.link.latency", 0.1), "targets.0.link.latency",
     "did you mean 'latency_s'?"),
    ("wrong_type", _set("targets.0.count", "four"), "targets.0.count",
     "Input should be a valid integer (got 'four')"),
    ("fractional_count", _set("targets.0.count", 2.5), "targets.0.count",
     "Input should be a valid integer (got 2.5)"),
    ("mapping_expected", _set("targets.0.link", "fast"), "targets.0.link",
     "expected a mapping with keys from: up, down, latency_s"),
    ("negative_time", _set("targets.0.link.latency_s", -1), "targets.0.link.latency_s",
     "greater than or equal to 0 (got -1)"),
    ("negative_time_one_direction", _set("targets.0.link.up", {"latency_s": -1}), "targets.0.link.up.latency_s",
     "greater than or equal to 0 (got -1)"),
    ("negative_time_in_timing_spec", _set("draft.time", {"kind": "exponential", "mean": -1}), "draft.time.mean",
     "greater than or equal to 0 (got -1)"),
    ("negative_constant_time", _set("targets.0.verify_time", -0.5), "targets.0.verify_time",
     "greater than or equal to 0 (got -0.5)"),
    ("negative_duration", _set("duration_s", -5), "duration_s", "greater than 0 (got -5)"),
    ("not_a_number", _set("window_s", float("nan")), "window_s", "finite number"),
    ("timing_spec_not_a_mapping", _set("draft.time", "fast"), "draft.time",
     "expected a number or a mapping with a 'kind' (one of: constant, empirical, exponential"),
    ("unknown_timing_kind", _set("draft.time", {"kind": "weibull", "mean": 1}), "draft.time",
     "unknown kind 'weibull'; expected one of: 'constant'"),
    ("timing_spec_without_kind", _set("draft.time", {"mean": 1}), "draft.time", "a 'kind' is required here"),
    ("uniform_high_below_low", _set("workload.pause", {"kind": "uniform", "low": 2, "high": 1}),
     "workload.pause", "high (1.0) must be >= low (2.0)"),
    ("probability_above_one", _set("acceptance.curve", [1.2, 0.5]), "acceptance.curve.0",
     "less than or equal to 1 (got 1.2)"),
    ("probability_below_zero", _set("acceptance", {"kind": "geometric", "alpha": -0.1}), "acceptance.alpha",
     "greater than or equal to 0 (got -0.1)"),
    ("non_increasing_marginal_curve", _set("acceptance.curve", [0.5, 0.7]), "acceptance.curve",
     "must be non-increasing (curve[1]=0.7 > curve[0]=0.5); did you mean kind: conditional?"),
    ("unknown_acceptance_kind", _set("acceptance.kind", "magic"), "acceptance", "unknown kind 'magic'"),
    ("device_not_defined", _set("targets.0.device", "tpu"), "targets.0.device",
     "device 'tpu' is not defined in devices (defined: draft_gpu, gpu)"),
    ("device_unit_out_of_range", _set("targets.0.device", "gpu[9]"), "targets.0.device",
     "unit 9 out of range: device 'gpu' has count 4"),
    ("device_reference_malformed", _set("draft.device", "gpu[x"), "draft.device", "is not NAME or NAME[UNIT]"),
    # a device pool named like a timing-spec kind keeps its name in the path
    ("device_pool_named_like_a_kind", _set("devices.linear", {"count": 0}), "devices.linear.count",
     "greater than or equal to 1 (got 0)"),
    ("unknown_policy", _set("draft.policy", "lifo"), "draft.policy",
     "unknown policy 'lifo'; expected one of: edf, fifo, round_robin, wfq"),
    ("tree_tokens_exceed_tree", _set("draft.tree", {"top_k": 2, "depth": 2, "tokens": 10}), "draft.tree.tokens",
     "tokens=10 exceeds the 6 nodes a top_k=2, depth=2 tree can have"),
    ("warmup_not_before_end", _set("warmup_s", 300), "warmup_s",
     "warmup_s + cooldown_s (305.0) must be < duration_s (300.0)"),
    ("run_never_ends", _pop("duration_s"), "duration_s", "give duration_s and/or max_requests"),
    ("lengths_file_missing", _set("workload.lengths_file", "no_such_lengths.csv"), "workload.lengths_file",
     "file not found: "),
    ("unknown_workload_kind", _set("workload.kind", "sometimes"), "workload", "unknown kind 'sometimes'"),
    ("unknown_mode", _set("mode", "many_for_one"), "mode", "Input should be 'star', 'one_for_one' or 'autoregressive'"),
    ("required_field_missing", _pop("targets.0.verify_time"), "targets.0.verify_time", "required field is missing"),
    ("draft_time_missing", _pop("draft.time"), "draft", "give exactly one of draft.time (tree only) and "),
    ("no_targets", _set("targets", []), "targets", "at least 1 item"),
    ("duplicate_group_names", _dup_group, "targets", "duplicate group names: vicuna7b"),
    # serving targets (continuous batching)
    ("serving_budget_below_a_tree", _set("targets.0.serving", {"max_batched_tokens": 10}),
     "targets.0.serving.max_batched_tokens", "10 is below one sequence's step (60 tokens: the tree and its root)"),
    ("serving_batch_without_step_time", _set("targets.0.serving", {"max_seqs": 8}), "targets.0.serving",
     "max_seqs > 1 needs step_time, the cost of one batched engine step"),
    ("serving_no_seqs", _set("targets.0.serving", {"max_seqs": 0}), "targets.0.serving.max_seqs",
     "greater than or equal to 1 (got 0)"),
    ("serving_kv_twice", _set("targets.0.serving", {"kv_capacity_tokens": 9000, "kv_capacity_bytes": 10**9}),
     "targets.0.serving", "give kv_capacity_tokens or kv_capacity_bytes, not both"),
    ("serving_kv_bytes_without_size", _set("targets.0.serving", {"kv_capacity_bytes": 10**9}), "targets.0.serving",
     "kv_capacity_bytes needs kv_bytes_per_token"),
    ("serving_batched_draft_without_batch_time", _set("targets.0.serving", {"max_seqs": 8, "step_time": {
     "weights_s": 0.01}}), "draft.batch.time", "the draft needs batch.time, the cost of a batched round"),
    ("serving_with_adaptive_depth", lambda d: (d["targets"][0].update(serving={}),
                                               d["draft"].update(adaptive={"policy": "goodput"})),
     "draft.adaptive.policy", "not modelled with serving targets yet"),
    ("concurrency_zero", _set("workload.concurrency", 0), "workload.concurrency", "greater than or equal to 1 (got 0)"),
    ("by_category_without_categories", _set("acceptance", {"kind": "by_category", "models": {
     "coding": {"kind": "geometric", "alpha": 0.8}}}), "acceptance", "kind: by_category needs the categories"),
    ("no_rounds_without_serving", _set("record_rounds", False), "record_rounds",
     "false needs every target group to serve"),
    ("concurrency_without_serving", _set("workload.concurrency", 8), "workload.concurrency",
     "more than one request at a time per target needs every target group to serve"),
    ("router_without_serving", _set("workload", {"kind": "poisson", "rate_per_s": 5, "router": "round_robin"}),
     "workload.router", "round_robin queues requests at each target: every target group must serve"),
]


@pytest.mark.parametrize("mutate,field,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_scenario_one_line(tmp_path, capsys, mutate, field, text):
    data = ref()
    mutate(data)
    bad = write(tmp_path, data)
    rc, out, err = cli(capsys, "check", bad)
    assert rc == 2
    assert out == ""
    line = one_error(err)
    assert line.startswith(f"error: {bad}: {field}: "), line
    assert text in line, line


def test_distinct_kinds_covered():
    assert len({c[0] for c in CASES}) == len(CASES) >= 12


def test_several_problems_one_line_each(tmp_path, capsys):
    data = ref()
    data["colour"] = "red"
    data["targets"][0]["count"] = 0
    data["acceptance"]["curve"] = [1.5]
    bad = write(tmp_path, data)
    rc, _, err = cli(capsys, "run", bad)
    assert rc == 2
    lines = error_lines(err)
    assert sorted(ln.split(": ")[2] for ln in lines) == ["acceptance.curve.0", "colour", "targets.0.count"]


def test_run_and_analyze_report_the_same_way(tmp_path, capsys):
    data = ref()
    data["targets"][0]["link"]["latency_s"] = -1
    bad = write(tmp_path, data)
    for cmd in ("run", "analyze"):
        rc, out, err = cli(capsys, cmd, bad)
        assert rc == 2 and out == ""
        assert one_error(err).startswith(f"error: {bad}: targets.0.link.latency_s: ")


# --------------------------------------------------------------------------- files that are not scenarios


RAW = [
    ("bad_indentation", "name: x\n  seed: 1\n", "broken YAML: line 2, column 7: mapping values are not allowed here"),
    ("unclosed_bracket", "name: x\ndevices: {a: [1, 2\nseed: 1\n",
     "broken YAML: line 3, column 5: expected ',' or ']'"),
    ("tab_indentation", "name: x\n\tseed: 1\n", "broken YAML: line 2, column 1: found character '\\t'"),
    ("duplicate_key", "name: a\nseed: 1\nname: b\n", "broken YAML: line 3, column 1: duplicate key 'name'"),
    ("empty_file", "", "the file is empty"),
    ("only_comments", "# nothing here\n", "the file is empty"),
    ("top_level_list", "- a\n- b\n", "expected a mapping at the top level, got list"),
    ("top_level_scalar", "hello\n", "expected a mapping at the top level, got str"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_not_a_scenario(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    rc, out, err = cli(capsys, "check", bad)
    assert rc == 2 and out == ""
    line = one_error(err)
    assert line.startswith(f"error: {bad}: {message}"), line


def test_not_utf8(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    rc, _, err = cli(capsys, "check", bad)
    assert rc == 2
    assert one_error(err) == f"error: {bad}: not a UTF-8 text file"


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    for cmd in ("run", "analyze", "check"):
        rc, out, err = cli(capsys, cmd, missing)
        assert rc == 2 and out == ""
        assert one_error(err) == f"error: {missing}: file not found"


def test_directory_instead_of_file(tmp_path, capsys):
    rc, _, err = cli(capsys, "check", tmp_path)
    assert rc == 2
    assert one_error(err) == f"error: {tmp_path}: is a directory, not a scenario file"


def test_relative_lengths_file_names_the_resolved_path(tmp_path, capsys):
    data = ref()
    data["workload"]["lengths_file"] = "lengths.csv"
    bad = write(tmp_path, data)
    rc, _, err = cli(capsys, "check", bad)
    assert rc == 2
    assert one_error(err) == f"error: {bad}: workload.lengths_file: file not found: {tmp_path / 'lengths.csv'}"


# --------------------------------------------------------------------------- --set


def test_set_path_out_of_range(capsys):
    rc, _, err = cli(capsys, "check", REF, "--set", "targets.5.count=2")
    assert rc == 2
    assert one_error(err) == (
        f"error: {REF} (--set targets.5.count): targets.5: no list item '5': the list has 1 item"
    )


def test_set_without_equals(capsys):
    rc, _, err = cli(capsys, "run", REF, "--set", "seed")
    assert rc == 2
    assert one_error(err) == "error: --set: expected FIELD=VALUE, got 'seed'"


def test_set_value_not_yaml(capsys):
    rc, _, err = cli(capsys, "check", REF, "--set", "workload.prompts=[1,")
    assert rc == 2
    line = one_error(err)
    assert line.startswith("error: --set: workload.prompts: value '[1,' is not valid YAML: line 1, column"), line


def test_set_into_a_scalar(capsys):
    rc, _, err = cli(capsys, "check", REF, "--set", "name.first=x")
    assert rc == 2
    assert one_error(err).startswith(f"error: {REF} (--set name.first): name.first: cannot set a field inside")


def test_set_bad_value_names_the_override(capsys):
    rc, _, err = cli(capsys, "check", REF, "--set", "targets.0.count=four")
    assert rc == 2
    assert one_error(err) == (
        f"error: {REF} (--set targets.0.count): targets.0.count: Input should be a valid integer (got 'four')"
    )


def test_set_unknown_key(capsys):
    rc, _, err = cli(capsys, "check", REF, "--set", "draft.tree.topk=3")
    assert rc == 2
    assert one_error(err).startswith(f"error: {REF} (--set draft.tree.topk): draft.tree.topk: unknown key")


def test_set_mixed_with_file_problems(tmp_path, capsys):
    data = ref()
    data["colour"] = "red"
    bad = write(tmp_path, data)
    rc, _, err = cli(capsys, "check", bad, "--set", "seed=-1")
    assert rc == 2
    lines = error_lines(err)
    assert f"error: {bad}: seed: Input should be greater than or equal to 0 (got -1) (set by --set seed)" in lines
    assert any(ln.startswith(f"error: {bad}: colour: unknown key") for ln in lines)


def test_bad_n_range(capsys):
    rc, _, err = cli(capsys, "analyze", REF, "--n", "3-x")
    assert rc == 2
    assert one_error(err) == "error: --n: expected e.g. 1-8 or 1,2,4,8, got '3-x'"


# --------------------------------------------------------------------------- data files read while running


SHORT = ["--set", "duration_s=20"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("a,b\n1,2\n", "missing column(s) prompt_tokens, output_tokens (the header is a,b)"),
        ("prompt_tokens,output_tokens\n", "no data rows"),
        ("prompt_tokens,output_tokens\n10,20\n10,lots\n", "line 3: output_tokens must be a number, got 'lots'"),
        ("prompt_tokens,output_tokens\n10,\n", "line 2: output_tokens must be a number, got an empty cell"),
        ("", "the file is empty (expected a CSV with columns prompt_tokens,output_tokens)"),
    ],
    ids=["wrong_columns", "no_rows", "not_a_number", "empty_cell", "empty_file"],
)
def test_bad_lengths_csv(tmp_path, capsys, content, message):
    csv = tmp_path / "lengths.csv"
    csv.write_text(content)
    data = ref()
    data["workload"]["lengths_file"] = "lengths.csv"
    sc = write(tmp_path, data)
    for cmd in ("run", "analyze"):
        rc, out, err = cli(capsys, cmd, sc, *SHORT)
        assert rc == 2 and out == ""
        assert one_error(err) == f"error: {csv.resolve()}: {message}"


def test_bad_prompts_jsonl(tmp_path, capsys):
    jl = tmp_path / "q.jsonl"
    jl.write_text('{"turns": ["What is two plus two?"]}\n{"question": "x"}\n')
    rc, _, err = cli(capsys, "run", REF, *SHORT, "--set", f"workload.prompts_jsonl={jl}")
    assert rc == 2
    assert one_error(err) == f"error: {jl}: line 2: expected a record with a 'turns' list of strings"


def test_bad_trace_csv(tmp_path, capsys):
    # The trace is read inside a SimPy process: the error must survive SimPy's re-raise.
    tr = tmp_path / "trace.csv"
    tr.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,20\n")
    for cmd in ("run", "analyze"):
        rc, _, err = cli(capsys, cmd, REF, *SHORT, "--set", f"workload={{kind: trace, path: {tr}}}")
        assert rc == 2
        assert one_error(err).startswith(f"error: {tr}: TIMESTAMP: ")


def test_scenario_error_rebuilds_from_args():
    # SimPy re-raises a failed process's exception as type(e)(*e.args).
    e = ScenarioError("f.yaml", [("a.b", "bad"), ("", "worse")])
    again = type(e)(*e.args)
    assert str(again) == str(e) == "f.yaml: a.b: bad\nf.yaml: worse"
    assert again.problems == e.problems


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("")
    rc, _, err = cli(capsys, "run", REF, *SHORT, "--out", f)
    assert rc == 2
    assert one_error(err) == f"error: --out {f}: exists and is not a directory"


def test_api_reports_problems():
    with pytest.raises(ScenarioError) as ei:
        load_scenario(REF, ["targets.0.count=0", "draft.tree.topk=1"])
    assert [p for p, _ in ei.value.problems] == ["draft.tree.topk", "targets.0.count"]


# --------------------------------------------------------------------------- a real process


def _run_process(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, **kw)


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    data = ref()
    data["draft"]["tree"]["topk"] = 3
    bad = write(tmp_path, data)
    p = _run_process([sys.executable, "-m", "starsim.cli", "run", str(bad), "--out", str(tmp_path / "out")])
    assert p.returncode == 2
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert p.stderr.strip() == (
        f"error: {bad}: draft.tree.topk: unknown key (did you mean 'top_k'?); allowed: top_k, depth, tokens"
    )
    assert not (tmp_path / "out").exists()


_SCRIPT = Path(sys.executable).with_name("starsim")
SCRIPT = str(_SCRIPT) if _SCRIPT.exists() else shutil.which("starsim")


@pytest.mark.skipif(SCRIPT is None, reason="the starsim console script is not installed")
def test_console_script_broken_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndevices: {a: [1, 2\n")
    p = _run_process([SCRIPT, "check", str(bad)])
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith(f"error: {bad}: broken YAML: line ")
