"""Every answer with its alternatives: the file as a star, alone and one-for-one, per GPU; N*,
saturation and the break-even N against the closed form they come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from starsim.alternatives import alternatives, break_even, gpus
from starsim.analytic import analyze
from starsim.cli import main
from starsim.scenario import as_mode, load_scenario

ROOT = Path(__file__).resolve().parent.parent
REF = ROOT / "scenarios" / "starsd_ref_n4.yaml"
QWEN = ROOT / "scenarios" / "gpu" / "qwen3-8b-qwen3-06b-h100_sxm.yaml"


def test_as_mode_turns_the_servers_features_off():
    sc = load_scenario(ROOT / "scenarios" / "beyond_fabric.yaml")
    assert sc.draft.fabric.servers > 1 and sc.draft.fabric.failures
    for mode in ("autoregressive", "one_for_one"):
        alt = as_mode(sc, mode)
        assert alt.mode == mode and alt.draft.fabric.servers == 1 and not alt.draft.fabric.failures
        assert alt.targets == sc.targets and alt.workload == sc.workload and alt.devices == sc.devices
    assert as_mode(sc, "star").to_dict() == {**sc.to_dict()}


def test_gpus_count_units_in_use_times_their_accelerators():
    sc = load_scenario(REF)  # one draft GPU, 4 targets each on its own of 4
    assert gpus(sc) == 5 and gpus(as_mode(sc, "autoregressive")) == 4 and gpus(as_mode(sc, "one_for_one")) == 4
    shared = load_scenario(REF, ["targets.0.count=8"])  # 8 targets on the file's 4 units
    assert gpus(shared) == 5
    tp8 = load_scenario(ROOT / "scenarios" / "gpu" / "llama31-70b-llama31-8b-h100_sxm-tp8.yaml")
    assert gpus(tp8) == 1 + 4 * 8


@pytest.mark.parametrize("path", [REF, QWEN])
def test_the_break_even_n_is_where_a_target_falls_below_decoding_alone(path):
    """At the break-even N a target of the star still gets at least decoding alone's tokens/s
    (closed form, each target on its own unit); one more and it does not."""
    sc = load_scenario(path)
    alt = alternatives(sc)
    be = alt["break_even_n"]
    alone = analyze(as_mode(sc, "autoregressive"))["per_target"][0]["tokens_per_s"]

    def per_target(n):
        s = load_scenario(path, [f"targets.0.count={n}", f"devices.gpu.count={max(n, 16)}"])
        return analyze(s)["per_target"][0]["tokens_per_s"]

    if be:
        assert per_target(be) >= alone * (1 - 1e-9)
    assert per_target(be + 1) < alone
    assert alt["n_saturation"] == pytest.approx(analyze(sc)["n_saturation"])
    assert alt["saturated"] == (sc.targets[0].count > alt["n_saturation"])


def test_break_even_zero_when_one_target_is_already_slower():
    star = {"per_target": [{"draft_s": 0.03, "cycle_alone_s": 0.05, "tokens_per_s": 60.0, "cycle_s": 0.05}]}
    alone = {"per_target": [{"tokens_per_s": 100.0}]}
    assert break_even(star, alone, 1) == 0
    fast = {"per_target": [{"tokens_per_s": 50.0}]}  # m = 3 tokens a round: 3 / (k 0.03) >= 50 for k <= 2
    assert break_even(star, fast, 1) == 2 and break_even(star, fast, 3) == 6
    free = {"per_target": [{"draft_s": 0.0, "cycle_alone_s": 0.05, "tokens_per_s": 60.0, "cycle_s": 0.05}]}
    assert break_even(free, fast, 1) is None  # a draft that costs nothing is never the bottleneck


def test_each_option_is_its_modes_closed_form_per_gpu():
    sc = load_scenario(QWEN)
    alt = alternatives(sc)
    by = {o["mode"]: o for o in alt["options"]}
    for mode in ("star", "autoregressive", "one_for_one"):
        a = analyze(as_mode(sc, mode))
        assert by[mode]["throughput_tokens_per_s"] == pytest.approx(a["throughput_tokens_per_s"])
        assert by[mode]["throughput_per_gpu"] == pytest.approx(a["throughput_tokens_per_s"] / by[mode]["gpus"])
    # the example: the shipped file is past saturation and worse per GPU than either baseline
    assert alt["saturated"] and by["star"]["throughput_per_gpu"] < by["autoregressive"]["throughput_per_gpu"]


def test_run_prints_the_alternatives_and_simulates_them_on_request(capsys):
    assert main(["run", str(QWEN), "--set", "duration_s=30"]) == 0
    out = capsys.readouterr().out
    assert "alternatives (the same file as each mode, per GPU; closed form" in out
    assert "SATURATED at 4 targets" in out and "break-even N = 2" in out and "best per GPU: one_for_one" in out
    assert main(["run", str(QWEN), "--set", "duration_s=30", "--baselines", "--json"]) == 0
    alt = json.loads(capsys.readouterr().out)["alternatives"]
    assert [o["source"] for o in alt["options"]] == ["simulated"] * 3
    assert main(["analyze", str(REF)]) == 0
    assert "break-even N = 12" in capsys.readouterr().out
