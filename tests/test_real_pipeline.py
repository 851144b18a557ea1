"""Pipelined drafting in the real backend: the next tree drafted while the target verifies,
served at once on a hit, dropped on a miss; outputs unchanged."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import CODE_PROMPTS, serve_targets  # noqa: E402

from starsim.real.draft_engine import main_path, subtree  # noqa: E402
from starsim.real.server import DraftServer, ServerOptions  # noqa: E402
from starsim.real.speculation import Drafter, TreeDraft, target_generate  # noqa: E402


def test_main_path_and_subtree():
    #        root children: 10 (0), 11 (1); 10 -> 20 (2), 21 (3); 11 -> 22 (4); 20 -> 30 (5)
    t = TreeDraft([10, 11, 20, 21, 22, 30], [-1, -1, 0, 0, 1, 2], [1, 1, 2, 2, 2, 3])
    assert main_path(t) == [10, 20, 30]
    sub = subtree(t, 10)
    assert (sub.tokens, sub.parents, sub.depths) == ([20, 21, 30], [-1, -1, 0], [1, 1, 2])
    assert subtree(t, 11).tokens == [22] and subtree(t, 99) is None
    assert main_path(TreeDraft([], [], [])) == []


def test_pipelined_trees_hit_when_the_target_agrees(quick_models):
    """The draft model as its own target accepts its trees' main paths: most pipelined trees
    hit, and the outputs are the target's own greedy ones."""
    tok, _, draft = quick_models
    prompts = [tok.encode(p).ids for p in CODE_PROMPTS[:2]]
    with DraftServer(Drafter(draft, 4, 4, 16), options=ServerOptions(pipeline=True)) as server:
        got = serve_targets(server, draft, prompts, 40)
        for i, (out, _) in got.items():
            assert out == target_generate(draft, prompts[i], 40)
        assert server.pipeline_stats.hits > server.pipeline_stats.misses > 0  # a request's last tree misses
        assert not server.rejected


def test_pipelined_trees_miss_and_waste_without_changing_outputs(quick_models):
    tok, target, draft = quick_models
    prompts = [tok.encode(p).ids for p in CODE_PROMPTS]
    with DraftServer(Drafter(draft, 4, 4, 16), options=ServerOptions(pipeline=True)) as server:
        got = serve_targets(server, target, prompts, 40)
        for i, (out, _) in got.items():
            assert out == target_generate(target, prompts[i], 40)
        assert server.pipeline_stats.misses > 0 and server.pipeline_stats.wasted_s > 0
        busy = sum(e - s for _, s, e, _ in server.intervals)
        assert server.pipeline_stats.wasted_s < busy
        assert not server.rejected


def test_execute_with_pipelined_drafting(tmp_path, quick_pair, quick_models):
    import copy

    import yaml
    from conftest import CONST_STAR

    from starsim import load_scenario
    from starsim.real.execute import execute

    _, target, _ = quick_models
    sc = copy.deepcopy(CONST_STAR)
    sc["targets"][0]["count"] = 2
    sc["draft"]["pipeline"] = True
    sc.update(max_requests=4, duration_s=60.0, warmup_s=0.0, real={"pair": str(quick_pair)},
              workload={"kind": "closed", "prompts": 3, "prompt_tokens": 30, "output_tokens": 40})
    f = tmp_path / "pipe.yaml"
    f.write_text(yaml.safe_dump(sc))
    res = execute(load_scenario(f))
    s, pipe = res.summary, res.records.meta["pipeline"]
    assert not s["provenance"]["failures"] and s["requests_completed"] == 4
    assert pipe["hits"] + pipe["misses"] > 0 and s["pipeline_hit_rate"] is not None
    assert s["draft_wasted_fraction"] is not None and 0 <= s["draft_wasted_fraction"] < 1
    r = res.rounds
    spec = r[r["draft"] >= 0]
    assert (spec["t_send"] <= spec["t_draft_arrive"]).all()  # a hit's round begins when its tree was queued
    for o in res.outputs:
        assert o["output"] == target_generate(target, o["prompt"], 40, eos=target.config.eos_token_id)
