"""Where a real run's models and prompts come from (torch, imported by the functions).

Three sources, one per scenario role (``real.pair`` fills both roles):

- the offline pair (``starsim models build-pair``): ``target/``, ``draft/``, ``tokenizer.json``;
- ``{kind: pretrained, path}``: any local Hugging Face model directory (``gguf_file`` for a
  GGUF checkpoint, which transformers loads with the ``gguf`` package installed);
- ``{kind: spec, spec}``: a calibration spec's network with random weights, for timing at
  scale (a 7B target on a GPU) without weights; its acceptance is whatever such a pair
  measures, never set.

Prompts are token ids of text neither model trained on when a tokenizer exists (held-out
standard-library sources; see :func:`prompt_text`) and random ids in the vocabulary when it
does not (a spec pair), cut at the lengths the scenario's workload draws.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from ..errors import StarsimError
from ..scenario import PretrainedModel, Real, Scenario
from ..streams import Stream, rng_for
from ..workload import prompt_set
from .pair import pair_info


def role_source(real: Real, role: str) -> dict[str, Any] | None:
    """The model source of ``role`` (target | draft) as a plain dict (it travels to the target processes)."""
    own = real.target_model if role == "target" else real.draft_model
    if own is not None:
        return own.model_dump()
    if real.pair is not None:
        return PretrainedModel(kind="pretrained", path=str(Path(real.pair) / role)).model_dump()
    return None


def check_sources(scenario: Scenario) -> None:
    """Fail early, with the field to fix, on a source that cannot load."""
    from ..models.specs import load_spec

    real = scenario.real
    if real.pair is not None:
        pair = Path(real.pair)
        missing = [p for p in ("target", "draft", "tokenizer.json") if not (pair / p).exists()]
        if missing:
            raise StarsimError(f"real.pair: {pair} is not a draft/target pair (missing {', '.join(missing)}); "
                               f"build it with `starsim models build-pair --out {pair}`")
    roles = ["target"] + (["draft"] if scenario.mode != "autoregressive" else [])
    for role in roles:
        src = role_source(real, role)
        field = f"real.{role}_model" if (real.target_model if role == "target" else real.draft_model) else "real.pair"
        if src is None:
            raise StarsimError(f"{field}: mode {scenario.mode} needs a {role} model (real.{role}_model or real.pair)")
        if src["kind"] == "pretrained":
            p = Path(src["path"])
            if not (p / "config.json").is_file() and not (src["gguf_file"] and (p / src["gguf_file"]).is_file()):
                what = "no config.json" + (f", no {src['gguf_file']}" if src["gguf_file"] else "")
                raise StarsimError(f"{field}: {p} holds no model ({what})")
        else:
            load_spec(src["spec"])  # a bad name is a one-line error naming the known specs
    if len(roles) == 2:
        vt, vd = source_vocab(role_source(real, "target"), "target"), source_vocab(role_source(real, "draft"), "draft")
        if vt != vd:
            raise StarsimError(f"real: the draft's vocabulary ({vd}) is not the target's ({vt}); "
                               "speculation needs one tokenizer")


def torch_device(scenario: Scenario, unit: str) -> str:
    """The torch device of a placed unit (``pool[k]``): the pool's ``torch`` setting."""
    from ..scenario import parse_device_ref

    pool, k = parse_device_ref(unit)
    dev = scenario.devices[pool].torch
    return f"cuda:{k}" if dev == "cuda" else dev


def check_device(device: str, what: str) -> None:
    """A one-line error for a torch device this machine does not have (``what``: where it was asked)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise StarsimError(f"{what}: {device}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise StarsimError(f"{what}: {device} asked for, but this torch ({torch.__version__}) sees no CUDA device")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise StarsimError(f"{what}: {device} asked for, but only {torch.cuda.device_count()} CUDA device(s) here")


def resolve_dtype(real: Real, src: dict[str, Any], device: str) -> str:
    if real.dtype != "auto":
        return real.dtype
    if not device.startswith("cuda"):
        return "float32"  # half precision on a CPU is slow and not what anyone serves with
    if src["kind"] == "spec":
        from ..models.specs import load_spec

        return load_spec(src["spec"]).dtype.get("cuda", "bfloat16")
    return "auto"  # the checkpoint's own


def load_model(src: dict[str, Any], role: str, device: str, dtype: str):
    """The model of ``role`` on ``device``: a transformers causal LM, or for an EAGLE draft
    spec a :class:`~starsim.models.specs.Net` (an LM behind the ``fc`` that mixes in the
    target's hidden states)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per model and process would bury the run's own output
    if src["kind"] == "spec":
        from ..models.specs import build_model, load_spec, torch_dtype

        net = build_model(load_spec(src["spec"]), role, device, torch_dtype(dtype), seed=src.get("seed", 0))
        return net if net.eagle else net.lm
    kw: dict[str, Any] = {"local_files_only": True}
    if src.get("gguf_file"):
        kw["gguf_file"] = src["gguf_file"]
    kw["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(src["path"], **kw)
    except (OSError, ValueError, ImportError) as e:
        hint = " (GGUF files need `pip install -e '.[gguf]'`)" if src.get("gguf_file") else ""
        raise StarsimError(f"real.{role}_model: cannot load {src['path']}: {' '.join(str(e).split())}{hint}") from None
    return model.to(device).eval()


def source_config(src: dict[str, Any], role: str):
    """The transformers config of ``role``'s source (no weights loaded)."""
    if src["kind"] == "spec":
        from ..models.specs import _hf_config, load_spec

        spec = load_spec(src["spec"])
        arch = spec.draft if role == "draft" and spec.draft.kind == "causal_lm" else spec.target  # EAGLE: the target's
        return _hf_config(arch, Path(spec.path).parent if spec.path else Path("."))
    from transformers import AutoConfig

    kw = {"gguf_file": src["gguf_file"]} if src.get("gguf_file") else {}
    return AutoConfig.from_pretrained(src["path"], local_files_only=True, **kw)


def source_vocab(src: dict[str, Any], role: str) -> int:
    """The vocabulary size of ``role``'s source, from its config alone (no weights loaded)."""
    return int(source_config(src, role).vocab_size)


def eos_ids(model, src: dict[str, Any]) -> frozenset[int]:
    """End-of-sequence ids; none for random-weight spec models (they would stop at random)."""
    if src["kind"] == "spec":
        return frozenset()
    eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset(eos if isinstance(eos, list) else [eos])


# --------------------------------------------------------------------------- prompts


def prompt_text(pair: str | Path | None = None) -> str:
    """Standard library sources the models never trained on: for the offline ``pair``, the
    files after its corpus (sorted names); for other models (no pair), all of them."""
    last = (pair_info(pair).get("corpus") or {}).get("last", "") if pair else ""
    files = [f for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")) if f.name > last]
    if not files:
        raise StarsimError(f"no held-out standard library sources after {last!r} for prompts")
    return "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def tokenizer_encode(real: Real):
    """``text -> token ids`` for the target's tokenizer, or None (a random-weight spec target)."""
    if real.target_model is None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(real.pair) / "tokenizer.json"))
        return lambda text: tok.encode(text).ids
    src = real.target_model
    if src.kind == "spec":
        return None
    from transformers import AutoTokenizer

    kw = {"gguf_file": src.gguf_file} if src.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(src.path, local_files_only=True, **kw)
    except (OSError, ValueError) as e:
        raise StarsimError(f"real.target_model: no tokenizer in {src.path}: {e}") from None
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def build_prompts(scenario: Scenario, encode, vocab: int,
                  lengths: list[tuple[int, int]] | None = None) -> list[tuple[list[int], int]]:
    """Token ids (prompt, output tokens) for each of ``lengths`` in order, deterministic by
    seed: slices of :func:`prompt_text` when there is a tokenizer, random ids otherwise.
    ``lengths``: an open loop's requests (``(prompt, output)`` of request i at i); by default
    the closed loop's prompt set."""
    if lengths is None:
        lengths = prompt_set(scenario.workload, rng_for(scenario.seed, Stream.WORKLOAD))
    rng = rng_for(scenario.seed, Stream.PROMPT_IDS)
    if encode is None:
        return [(rng.integers(0, vocab, int(p)).tolist(), int(o)) for p, o in lengths]
    real = scenario.real
    ids = encode(prompt_text(real.pair if real.target_model is None else None))
    out = []
    for p, o in lengths:
        p = min(int(p), len(ids) - 1)
        start = int(rng.integers(0, len(ids) - p))
        out.append((list(ids[start:start + p]), int(o)))
    return out
