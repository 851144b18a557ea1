"""Acceptance by category (``acceptance: {kind: by_category}``): each request's rounds draw
from its prompt's category's model, for targets that verify one request at a time and for
serving targets; the closed form mixes the categories by their share of the rounds; a
category without a model (and no default) is one line, exit 2."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml
from conftest import CONST_STAR

from starsim.analytic import analyze
from starsim.cli import main
from starsim.errors import StarsimError
from starsim.scenario import load_scenario
from starsim.sim import simulate

# a synthetic prompt set (MT-Bench's record shape): coding accepts the whole tree, the rest nothing
PROMPTS = [("coding", 30), ("writing", 20), ("coding", 40), ("math", 25), ("writing", 35)]
ALL, NONE = {"kind": "marginal", "curve": [1, 1, 1, 1]}, {"kind": "marginal", "curve": [0, 0, 0, 0]}


def _scenario(tmp_path, acceptance: dict, serving: dict | None = None, **top) -> object:
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"question_id": i, "category": c, "turns": [" ".join(["w"] * n)]}) + "\n"
        for i, (c, n) in enumerate(PROMPTS)))
    sc = copy.deepcopy(CONST_STAR)
    sc.update(top)
    sc["acceptance"] = acceptance
    sc["workload"] = {"kind": "closed", "prompts_jsonl": "prompts.jsonl", "output_tokens": 101}
    if serving is not None:
        sc["targets"][0]["serving"] = serving
        sc["draft"]["batch"] = {"time": {"kind": "linear", "a": 0.002, "b": 0.0002}}
        sc["workload"]["concurrency"] = serving["max_seqs"]
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc))
    return f


def _category_of_each_round(records) -> np.ndarray:
    """Each round's request's category: a target walks the prompt set in its requests' order."""
    req = records.requests.sort_values(["target", "request"])
    nth = req.groupby("target").cumcount().to_numpy()
    cat = dict(zip(req["request"], (PROMPTS[k % len(PROMPTS)][0] for k in nth)))
    return records.rounds["request"].map(cat).to_numpy()


@pytest.mark.parametrize("serving", [None, {"max_seqs": 4, "step_time": {"weights_s": 0.01, "per_token_s": 1e-5}}])
def test_each_request_draws_from_its_category(tmp_path, serving):
    f = _scenario(tmp_path, {"kind": "by_category", "models": {"coding": ALL}, "default": NONE}, serving,
                  duration_s=40.0)
    rec = simulate(load_scenario(f)).records
    spec = rec.rounds["draft"].to_numpy() >= 0
    cats = _category_of_each_round(rec)[spec]
    accepted = rec.rounds["accepted"].to_numpy()[spec]
    assert set(cats) == {"coding", "writing", "math"}
    assert (accepted[cats == "coding"] == 4).all() and (accepted[cats != "coding"] == 0).all()


def test_the_closed_form_mixes_the_categories_by_rounds(tmp_path):
    models = {"coding": {"kind": "marginal", "curve": [0.95, 0.9, 0.8, 0.7]},
              "writing": {"kind": "marginal", "curve": [0.5, 0.2, 0.1, 0.0]}}
    sc = load_scenario(_scenario(tmp_path, {"kind": "by_category", "models": models,
                                            "default": {"kind": "geometric", "alpha": 0.7}}, duration_s=600.0))
    a, s = analyze(sc), simulate(sc).summary
    for k in ("mean_accepted_tokens", "throughput_tokens_per_s"):
        assert a[k] == pytest.approx(s[k], rel=0.02), k


def test_a_category_without_a_model_is_one_line(tmp_path, capsys):
    f = _scenario(tmp_path, {"kind": "by_category", "models": {"coding": ALL}}, duration_s=10.0)
    with pytest.raises(StarsimError, match=r"category 'writing' \(of the workload's prompts\) has no model"):
        simulate(load_scenario(f))
    assert main(["run", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "acceptance.default is null" in err


def test_a_lengths_file_without_categories_takes_the_default(tmp_path, capsys):
    (tmp_path / "lengths.csv").write_text("prompt_tokens,output_tokens\n30,101\n40,101\n")
    sc = copy.deepcopy(CONST_STAR)
    sc.update(duration_s=10.0, acceptance={"kind": "by_category", "models": {"coding": NONE}, "default": ALL},
              workload={"kind": "closed", "lengths_file": "lengths.csv"})
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc))
    rounds = simulate(load_scenario(f)).records.rounds
    assert (rounds.loc[rounds["draft"] >= 0, "accepted"] == 4).all()
    del sc["acceptance"]["default"]
    f.write_text(yaml.safe_dump(sc))
    assert main(["run", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "a prompt without a category" in err
