"""Shared scenario builders for the tests (plain dicts, validated by starsim itself)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

CONST_STAR = {
    "name": "const",
    "seed": 1,
    "mode": "star",
    "duration_s": 120.0,
    "warmup_s": 5.0,
    "devices": {"d": {"type": "draft"}, "g": {"type": "gpu", "count": 16}},
    "draft": {
        "device": "d",
        "time": 0.004,
        "encode_per_token_s": 0.0,
        "tree": {"top_k": 4, "depth": 4, "tokens": 16},
        "kv_bytes_per_token": 1000,
    },
    "targets": [
        {
            "name": "t",
            "count": 4,
            "device": "g",
            "verify_time": 0.010,
            "prefill_time": 0.002,
            "link": {"latency_s": 0.001},
            "payload": {"header_bytes": 0, "hidden_bytes_per_token": 0},
        }
    ],
    "acceptance": {"kind": "marginal", "curve": [1, 1, 1, 0]},
    "workload": {"kind": "closed", "prompts": 8, "prompt_tokens": 50, "output_tokens": 401},
}


# Test tiers (markers registered in pyproject.toml): CI runs every test; the quick tier,
# ``pytest -m "not real and not fuzz and not slow"``, leaves these out.
REAL = {"test_execute", "test_real_adaptive", "test_real_batch", "test_real_fabric", "test_real_pipeline",
        "test_declared_resources", "test_validate", "test_server", "test_server_flood", "test_worker", "test_clock",
        "test_calibrate", "test_calibrate_link", "test_calibrate_step", "test_pair", "test_speculation",
        "test_sampling", "test_gpu_check", "test_batch_verify", "test_real_serving", "test_draft_seqs",
        "test_pair_repro"}
FUZZ = {"test_fuzz_files", "test_fuzz_scenarios", "test_fuzz_wire"}
SLOW = {  # simulator tests of 5 s or more on 2 cores (pytest --durations shows where the time goes)
    "test_no_top_five_candidate_of_a_shipped_plan_is_pruned",  # every shipped plan, simulated whole
    "test_the_recommended_answer_is_the_exhaustive_best_of_stars_and_baselines",
    "test_fast_and_general_loops_give_the_same_tables",
    "test_ray_gives_the_same_table",  # starts a Ray cluster
    "test_the_python_api_example_runs",  # the README's example: a simulation, a report, a sweep
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        stem = item.path.stem
        if stem in REAL:
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.xdist_group("real"))  # one worker runs them, one at a time
        if stem in FUZZ:
            item.add_marker(pytest.mark.fuzz)
        if item.originalname in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def const_star() -> dict:
    """Constant times, deterministic acceptance, identical targets, closed loop, no pauses."""
    return copy.deepcopy(CONST_STAR)


@pytest.fixture(scope="session")
def quick_pair(tmp_path_factory) -> Path:
    """The offline draft/target pair at its --quick size, built once per test session."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from starsim.real.pair import QUICK, build_pair

    d = tmp_path_factory.mktemp("quick-pair")
    build_pair(d, QUICK)
    return d


# Python-source prompts (the pair was trained on such text) for the real-backend tests.
CODE_PROMPTS = ["def main(argv=None):\n    ", "import os\nimport sys\n\nclass ", "    for i in range(len(self."]


@pytest.fixture(scope="session")
def quick_models(quick_pair):
    """(tokenizer, target, draft) of the quick pair, loaded once."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(str(quick_pair / "tokenizer.json"))
    target = AutoModelForCausalLM.from_pretrained(quick_pair / "target").eval()
    draft = AutoModelForCausalLM.from_pretrained(quick_pair / "draft").eval()
    return tok, target, draft


def analysis_script(name: str):
    """The script ``analysis/NAME.py`` imported as a module (analysis/ on sys.path only while
    it loads, as when the script runs)."""
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "analysis"))


def wait_for(cond, timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds (a server's threads catch up), failing after ``timeout`` s."""
    import time

    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


def serve_targets(server, target, prompts: list[list[int]], n: int) -> dict:
    """One greedy speculative target per prompt against a real draft ``server``, concurrently
    (a thread and a connection each); ``{i: (output, rounds)}``."""
    import threading

    from starsim.real.client import DraftClient
    from starsim.real.speculation import speculative_generate

    results: dict[int, tuple] = {}

    def run(i: int) -> None:
        client = DraftClient(server.address)
        drafts = lambda new, start, seed=None, hidden=None: client.draft(new, start, 0.0, seed, hidden)[0]  # noqa: E731
        results[i] = speculative_generate(target, drafts, prompts[i], n)
        client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results
