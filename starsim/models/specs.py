"""Named model specs: a target and its draft, written as architecture hyper-parameters.

A spec file (``models/specs/NAME.yaml``) says what to build; :func:`build_model` builds it
from a transformers config with random weights (timing needs no trained weights and no
download). An architecture is either inline hyper-parameters (``family`` plus the config
keys of that family) or ``hf_config``: a local directory or ``config.json`` of a Hugging Face
model, whose config is read and whose weights are ignored.

Draft kinds:

- ``causal_lm``: an independent small language model (e.g. Llama-3.2-1B for Llama-3.1-8B).
- ``eagle``: an EAGLE head: ``fc`` over [token embedding; target hidden state] (2h -> h),
  ``num_hidden_layers`` decoder layers, and the target's embedding and LM head (so its
  ``vocab_size`` and ``hidden_size`` are the target's).
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ScenarioError, StarsimError
from ..yaml_files import read_mapping

SPEC_DIR = Path(__file__).resolve().parent.parent.parent / "models" / "specs"


class Arch(BaseModel):
    """One network: a transformers model family and its config keys (or a local HF config)."""

    model_config = ConfigDict(extra="allow")

    family: str | None = Field(None, description="transformers model_type, e.g. llama, qwen2")
    hf_config: str | None = Field(None, description="local HF model dir or config.json (weights unused)")
    kind: Literal["causal_lm", "eagle"] = "causal_lm"

    @model_validator(mode="after")
    def _one_source(self):
        if self.family is not None and self.hf_config is not None:
            raise ValueError("give one of family (inline hyper-parameters) and hf_config, not both")
        if self.kind == "causal_lm" and self.family is None and self.hf_config is None:
            raise ValueError("give family (inline hyper-parameters) or hf_config")
        return self

    def config_dict(self, base_dir: Path) -> dict[str, Any]:
        if self.hf_config is not None:
            p = Path(self.hf_config).expanduser()
            if not p.is_absolute():
                p = base_dir / p
            if p.is_dir():
                p = p / "config.json"
            cfg = json.loads(p.read_text())
            cfg.update(self.model_extra or {})  # inline keys override, e.g. num_hidden_layers
            return cfg
        return {"model_type": self.family, **(self.model_extra or {})}


class TreeShape(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(ge=1)
    depth: int = Field(ge=1)
    tokens: int = Field(ge=1)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    source: str = Field("", description="where the hyper-parameters come from")
    target: Arch
    draft: Arch
    tree: TreeShape = Field(description="the tree a draft round is measured with by default")
    dtype: dict[str, str] = Field(
        default_factory=lambda: {"cpu": "float32", "cuda": "bfloat16"}, description="device type -> dtype"
    )
    cpu_ok: bool = Field(False, description="small enough to calibrate on a CPU in minutes")
    path: str | None = None  # where it was read from (filled in)


def list_specs(spec_dir: Path = SPEC_DIR) -> list[str]:
    return sorted(p.stem for p in spec_dir.glob("*.yaml"))


def load_spec(name_or_path: str, spec_dir: Path = SPEC_DIR) -> ModelSpec:
    """A spec by name (``models/specs/NAME.yaml``), by file path, or a local HF model dir.

    A HF model dir gives a spec whose target is that model and whose draft is an EAGLE head
    of the same width (one layer): the common case of timing a model you have on disk.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return ModelSpec(
            name=p.name,
            description=f"local model {p}",
            source=str(p / "config.json"),
            target=Arch(hf_config=str(p.resolve())),
            draft=Arch(hf_config=str(p.resolve()), kind="eagle", num_hidden_layers=1),
            tree=TreeShape(top_k=10, depth=5, tokens=59),
            path=str(p.resolve()),
        )
    if not p.suffix:
        p = spec_dir / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(list_specs(spec_dir))
        raise ScenarioError(str(name_or_path), [("", f"no such model spec; known specs: {known}")])
    data = read_mapping(p, "model spec")
    try:
        spec = ModelSpec.model_validate({**data, "path": str(p.resolve())})
    except ValidationError as e:
        raise ScenarioError.from_validation(str(p), e) from None
    return spec


def need_torch() -> None:
    """Torch and transformers, or one line saying how to install them (exit code 2)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise StarsimError(
            f"calibration needs torch and transformers ({e.name} is missing): "
            "pip install torch==2.13.0 -e '.[torch]' (CPU-only) or pip install -e '.[torch]'"
        ) from None


def parse_tree(text: str | None) -> TreeShape | None:
    """``--tree TOP_K,DEPTH,TOKENS`` (None: the spec's)."""
    if text is None:
        return None
    try:
        k, d, t = (int(v) for v in text.split(","))
        return TreeShape(top_k=k, depth=d, tokens=t)
    except ValueError:
        raise StarsimError(f"--tree: expected TOP_K,DEPTH,TOKENS (e.g. 10,5,59), got {text!r}") from None


# --------------------------------------------------------------------------- building (torch)


def torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        msg = f"unknown dtype {name!r}; expected float32, float16 or bfloat16"
        raise ScenarioError("--dtype", [("", msg)]) from None


def _hf_config(arch: Arch, base_dir: Path, layers: int | None = None):
    from transformers import AutoConfig

    cfg = dict(arch.config_dict(base_dir))
    cfg.pop("kind", None)
    model_type = cfg.pop("model_type")
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    for k in ("architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path"):
        cfg.pop(k, None)
    return AutoConfig.for_model(model_type, **cfg)


def _from_config(config, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    return model.eval()


def build_model(spec: ModelSpec, role: str, device: str, dtype, seed: int = 0):
    """A randomly initialised model for ``role`` (target | draft) on ``device``.

    Returns a callable wrapper (see :class:`Net`) so calibration treats both draft kinds alike.
    """
    import torch

    torch.manual_seed(seed)
    base = Path(spec.path).parent if spec.path else Path(".")
    arch = spec.target if role == "target" else spec.draft
    if arch.kind == "eagle":
        layers = int((arch.model_extra or {}).get("num_hidden_layers", 1))
        # The head runs at the target's width and vocabulary; its own keys may override.
        own = arch.model_dump(exclude_none=True)
        tgt = spec.target.model_dump(exclude_none=True)
        if "family" in own or "hf_config" in own:  # its own source replaces the target's
            tgt.pop("family", None), tgt.pop("hf_config", None)
        merged = Arch(**{**tgt, **own})
        merged_cfg = _hf_config(merged, base, layers=layers)
        lm = _from_config(merged_cfg, dtype, device)
        h = merged_cfg.hidden_size
        with torch.device(device):
            fc = torch.nn.Linear(2 * h, h, bias=True, dtype=dtype)
        return Net(lm, fc=fc)
    return Net(_from_config(_hf_config(arch, base), dtype, device))


class Net:
    """A causal LM, optionally behind an EAGLE ``fc`` that mixes in hidden states."""

    def __init__(self, lm, fc=None):
        self.lm, self.fc = lm, fc
        self.config = lm.config
        self.hidden_size = lm.config.hidden_size
        self.vocab_size = lm.config.vocab_size
        self.params = sum(p.numel() for p in lm.parameters()) + (
            sum(p.numel() for p in fc.parameters()) if fc is not None else 0
        )

    @property
    def eagle(self) -> bool:
        return self.fc is not None

    def __call__(self, ids, cache=None, mask=None, positions=None, hidden=None, last_only=False):
        """One forward; returns ``(logits, last hidden states)`` (hidden only for EAGLE).

        ``last_only``: logits of the last position only, as a prefill or a draft's prefix
        encoding needs (the LM head over every position would dominate a small model's time).
        """
        import torch

        kw = {cache_kw(self.lm): cache, "use_cache": True, "attention_mask": mask, "position_ids": positions}
        if last_only:
            kw["logits_to_keep"] = 1
        if self.fc is None:
            out = self.lm(input_ids=ids, **kw)
            return out.logits, None
        emb = self.lm.get_input_embeddings()(ids)
        x = self.fc(torch.cat([emb, hidden], dim=-1))
        out = self.lm(inputs_embeds=x, output_hidden_states=True, **kw)
        return out.logits, out.hidden_states[-1]


def new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def cache_kw(model) -> str:
    """The name ``model.forward`` takes its KV cache by: ``cache`` (transformers >= 5.2x,
    where ``past_key_values`` is deprecated and goes in 5.40) or ``past_key_values`` (older)."""
    return _cache_kw(type(model))


@functools.cache
def _cache_kw(cls) -> str:
    # inspect follows the deprecation decorator's __wrapped__ to the real signature
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def crop_cache(cache, length: int) -> None:
    """Drop everything after the first ``length`` positions (negative crop: 4.x and 5.x)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
