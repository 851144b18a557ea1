"""The offline draft/target pair: built from the stdlib sources, deterministic, loadable offline."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from starsim.cli import main  # noqa: E402
from starsim.real.pair import stdlib_corpus  # noqa: E402


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, quick_pair):
    a = tmp_path_factory.mktemp("pair-a")
    assert main(["models", "build-pair", "--quick", "--quiet", "--out", str(a)]) == 0
    return a, quick_pair


def test_same_settings_same_weights(pairs):
    a, b = (yaml.safe_load((p / "pair.yaml").read_text()) for p in pairs)
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["losses"] == b["losses"] and a["holdout"] == b["holdout"]
    assert a["corpus"]["sha256"] == b["corpus"]["sha256"]


def test_training_learned_something(pairs):
    info = yaml.safe_load((pairs[0] / "pair.yaml").read_text())
    assert info["losses"]["target_last"] < info["losses"]["target_first"] - 0.5
    assert info["losses"]["draft_last"] < info["losses"]["draft_first"]
    # far above chance (1 / vocab): the draft predicts what the target predicts
    assert info["holdout"]["draft_target_top1_agreement"] > 10 / info["tokenizer"]["vocab_size"]
    assert info["corpus"]["source"].startswith("CPython standard library")
    assert info["provenance"]["torch"] and info["settings"]["seed"] == 0


def test_loads_offline_with_transformers(pairs, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = pairs[0]
    tok = AutoTokenizer.from_pretrained(d / "target")
    text = "def main(argv=None):\n    return 0\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    for role in ("target", "draft"):
        model = AutoModelForCausalLM.from_pretrained(d / role).eval()
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits
        assert logits.shape == (1, len(ids), tok.vocab_size) and torch.isfinite(logits).all()


def test_corpus_is_the_stdlib_in_sorted_order():
    text, files = stdlib_corpus(50_000)
    assert len(text.encode()) <= 50_000 and files == sorted(files) and all(f.endswith(".py") for f in files)


def test_the_stdlib_pair_spec_is_the_default_pair():
    """models/specs/stdlib-pair.yaml (what calibration times) describes what build-pair trains."""
    from starsim.models.specs import load_spec
    from starsim.real.pair import PairSettings, _llama

    spec = load_spec("stdlib-pair")
    s = PairSettings()
    for arch, built in ((spec.target, _llama(s.target, s.vocab_size, s.seq_len)),
                        (spec.draft, _llama(s.draft, s.vocab_size, s.seq_len))):
        cfg = built.config
        for key, value in (arch.model_extra or {}).items():
            assert getattr(cfg, key) == value, key
