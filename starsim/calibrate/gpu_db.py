"""``starsim calibrate import aiconfigurator``: profiles from a measured GPU kernel database.

`aiconfigurator-core <https://pypi.org/project/aiconfigurator-core/>`_ (NVIDIA, Apache-2.0,
the optional extra ``gpu-db``) ships kernel timings measured on real GPUs (GEMM, attention,
communication; per system, serving backend and backend version) and an estimator that
prices one forward pass of a model from them. This module turns its prices into starsim
profiles: the same file format, ops and fitting as ``calibrate compute``, so every scenario
and tool reads them unchanged. The simulator never imports this module.

How an op is priced (one forward of a model, ``B`` sequences, ``T`` new tokens each over a
cached context ``C``, logits for ``L`` tokens each; :meth:`Pricer.forward`):

- every per-token op (the GEMMs, norms, activation, embedding, TP all-reduces) from the
  estimator's *decode* op list at ``B*T`` tokens: the same kernels a prefill-with-prefix
  walk would price for the GEMMs, but without the prefill path's extra per-layer memory
  terms, so ``verify(1, C)`` equals ``decode(C)`` by construction;
- the LM head at ``B*L`` tokens: a verify needs logits for every tree token, a prefill or
  a draft's prefix encoding for the last one only;
- attention: the decode kernel reading each sequence's ``C`` cached tokens (measured
  ``generation_attention`` rows), plus, for ``T > 1``, what ``T - 1`` more query tokens add
  on the measured prefill-with-prefix kernel (``context_attention(T, C) -
  context_attention(1, C)``, never below 0);
- an EAGLE head's ``fc`` (2h -> h) as one more GEMM at ``B*T`` tokens.

Ops written (inputs as in :mod:`starsim.profiles`): target ``prefill``, ``verify``,
``verify_batched``, ``decode``; draft ``draft_round`` (the spec's tree: encode the new
tokens, then ``depth - 1`` levels that forward the ``top_k`` frontier nodes, as
:class:`starsim.real.speculation.Drafter` does), ``draft_step`` (one level of ``width`` nodes),
``draft_batched`` (``batch`` tags with 1 new token each, encoded one by one, their levels
batched, as starsim's real server does), ``draft_batched_fused`` (the same, encoded in one
forward: a serving engine's batched draft, for serving targets' ``draft.batch.time``). The
warm/cold curves (``draft_idle``, ``verify_idle``) are not in the database.

The times are kernel times. ``overhead_s`` (default 0) adds a fixed cost per forward pass
(kernel launches, the framework's scheduler and sampler between kernels: what a CUDA graph
removes and an eager PyTorch loop pays); every op records it and its forwards per call.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StarsimError

PACKAGE = "aiconfigurator-core"
BACKENDS = ("vllm", "sglang", "trtllm")
DTYPES = ("bfloat16", "float16", "fp8", "fp8_block")  # fp8_block: block-scaled fp8 GEMMs (DeepSeek style)
TARGET_OPS = ("prefill", "verify", "verify_batched", "decode")
DRAFT_OPS = ("draft_round", "draft_step", "draft_batched", "draft_batched_fused")

# Families the estimator builds from a config.json, by transformers ``model_type``.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}


@dataclass
class Grid:
    """Where each op is priced. Chosen for what a star's rounds ask (see ``GRID_WHY``)."""

    contexts: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192])
    verify_tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 26, 32, 48, 60, 64, 96, 128])
    prefill_tokens: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192])
    new_tokens: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 256, 512])
    widths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 10, 16, 32, 64])
    batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    fused_batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])
    verify_batches: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])


GRID_WHY = (
    "contexts 16..8192: MT-Bench-like chats (prompts from ~20 to ~100s of tokens, answers to ~2k) with room "
    "for long ones, "
    "inside every shipped pair's measured attention rows; verify tokens 1..128: a plain decode step (1), "
    "EAGLE's 26-node tree, EAGLE-2's 60, up to Sequoia-size trees, dense where GPU GEMMs change regime "
    "(memory-bound below ~64 rows); new tokens 1..512: a round's 1 + accepted tokens, up to a first round "
    "that encodes a whole prompt; widths 1..64 and batches 1..32: frontier sizes and a draft serving up "
    "to 32 targets at once"
)

QUICK = Grid(contexts=[128, 1024], verify_tokens=[1, 16, 64], prefill_tokens=[64, 512], new_tokens=[1, 8],
             widths=[1, 8], batches=[1, 4], verify_batches=[1, 4], fused_batches=[1, 8])


# --------------------------------------------------------------------------- the package


def require() -> Any:
    """The package, or one line saying how to get it (exit code 2 through StarsimError)."""
    try:
        import aiconfigurator_core  # noqa: F401
        from aiconfigurator_core.sdk import engine
    except ImportError as e:
        raise StarsimError(
            f"calibrate import aiconfigurator needs the optional package {PACKAGE} ({e.name} is missing): "
            "pip install -e '.[gpu-db]'"
        ) from None
    return engine


def package_root() -> Path:
    import aiconfigurator_core

    return Path(aiconfigurator_core.__file__).resolve().parent


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # pragma: no cover - an unpackaged checkout
        return "unknown"


def systems() -> list[str]:
    """Systems with measured data (``systems/<name>.yaml`` and ``systems/data/<name>/``)."""
    root = package_root() / "systems"
    return sorted(p.stem for p in root.glob("*.yaml") if (root / "data" / p.stem).is_dir() and backend_versions(p.stem))


def backend_versions(system: str) -> dict[str, list[str]]:
    """Backend -> the versions with measured GEMM or attention tables on ``system``."""
    data = package_root() / "systems" / "data" / system
    out: dict[str, set[str]] = {}
    for fam in ("gemm", "attention"):
        for b in BACKENDS:
            for v in (data / fam / b).glob("*"):
                if v.is_dir():
                    out.setdefault(b, set()).add(v.name)
    return {b: sorted(v) for b, v in sorted(out.items())}


def bundled_models() -> list[str]:
    """HF ids whose config.json the package bundles (reference architectures for ``--list``)."""
    root = package_root() / "model_configs"
    names = [p.name[: -len("_config.json")] for p in root.glob("*_config.json")
             if not p.name.endswith("_quant_config.json")]
    return sorted(n.replace("--", "/", 1) for n in names)


def bundled_config(name: str) -> Path:
    """The config.json the package bundles for HF id ``name`` (``--target``/``--draft``)."""
    path = package_root() / "model_configs" / f"{name.replace('/', '--', 1)}_config.json"
    if not path.is_file():
        import difflib

        near = difflib.get_close_matches(name, bundled_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see --list"
        raise StarsimError(f"{name!r} is not one of the model configs {PACKAGE} {package_version()} bundles{hint}")
    return path


def bundled_spec(target: str, draft: str, tree=None):
    """A model spec pairing two bundled configs (``draft``: a bundled HF id, or ``eagle`` for a
    one-layer EAGLE head at the target's width), without a spec file."""
    from ..models.specs import Arch, ModelSpec, TreeShape

    t_cfg = bundled_config(target)
    if draft == "eagle":
        d_arch = Arch(hf_config=str(t_cfg), kind="eagle", num_hidden_layers=1)
    else:
        d_arch = Arch(hf_config=str(bundled_config(draft)))
    slug = lambda n: n.split("/")[-1].lower().replace(".", "")  # noqa: E731 - Qwen/Qwen3-0.6B -> qwen3-06b
    return ModelSpec(
        name=f"{slug(target)}-{'eagle' if draft == 'eagle' else slug(draft)}",
        description=f"{target} verified, {draft if draft != 'eagle' else 'a one-layer EAGLE head'} drafting",
        source=f"{PACKAGE} {package_version()}'s bundled config.json of each (starsim calibrate import "
               f"aiconfigurator --target {target} --draft {draft})",
        target=Arch(hf_config=str(t_cfg)), draft=d_arch,
        tree=tree or TreeShape(top_k=10, depth=5, tokens=59),
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The estimator logs a line per fallback table it loads; those are about models we don't price."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(prev)


def resolve_version(system: str, backend: str, version: str | None) -> str:
    """The literal data version a request means (``None``: the backend's current slot)."""
    from aiconfigurator_core.sdk import perf_database

    try:
        with _quiet():
            return str(perf_database.resolve_query_version(system, backend, version or "current"))
    except Exception:
        have = ", ".join(backend_versions(system).get(backend, [])) or "none"
        raise StarsimError(f"--backend-version {version}: not a queryable version of {backend} on {system} "
                           f"(measured: {have}; or current, previous, next)") from None


def check_choice(system: str, backend: str) -> None:
    have = systems()
    if system not in have:
        raise StarsimError(f"--system {system!r}: unknown; the database has {', '.join(have)} (see --list)")
    if backend not in BACKENDS:
        raise StarsimError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend not in backend_versions(system):
        raise StarsimError(f"--backend {backend}: no measured tables on {system} "
                           f"(it has {', '.join(backend_versions(system)) or 'none'})")


# --------------------------------------------------------------------------- models


@dataclass
class ModelRef:
    """One network the estimator prices: a directory holding its config.json."""

    name: str  # what the profile calls it
    path: str  # a local dir with config.json, or a bundled HF id
    config: dict
    eagle_fc: bool = False  # an EAGLE head: one more GEMM (2h -> h) per forward

    @property
    def heads(self) -> tuple[int, int, int]:
        c = self.config
        h = int(c["num_attention_heads"])
        return h, int(c.get("num_key_value_heads") or h), int(c.get("head_dim") or c["hidden_size"] // h)


def spec_refs(spec, workdir: Path) -> dict[str, ModelRef]:
    """The target and the draft of a model spec, each written as a config.json under ``workdir``
    (an EAGLE head: the target's width and vocabulary, its own layer count, plus ``fc``)."""
    base = Path(spec.path).parent if spec.path else Path(".")
    tgt = spec.target.config_dict(base)
    refs = {"target": _write_ref(f"{spec.name}:target", tgt, workdir / "target")}
    d = spec.draft
    if d.kind == "eagle":
        own = {k: v for k, v in (d.model_extra or {}).items()}
        cfg = {**tgt, **own}
        cfg["num_hidden_layers"] = int(own.get("num_hidden_layers", 1))
        refs["draft"] = _write_ref(f"{spec.name}:draft", cfg, workdir / "draft", eagle=True)
    else:
        refs["draft"] = _write_ref(f"{spec.name}:draft", d.config_dict(base), workdir / "draft")
    return refs


def _write_ref(name: str, cfg: dict, where: Path, eagle: bool = False) -> ModelRef:
    cfg = {k: v for k, v in cfg.items() if k != "kind"}
    mt = cfg.get("model_type")
    if "architectures" not in cfg:
        if mt not in ARCHITECTURES:
            raise StarsimError(f"{name}: the estimator builds {', '.join(ARCHITECTURES)} models from a spec; "
                               f"got model_type {mt!r}")
        cfg["architectures"] = [ARCHITECTURES[mt]]
    for need in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if need not in cfg:
            raise StarsimError(f"{name}: the architecture lacks {need} (the estimator needs it)")
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.json").write_text(json.dumps(cfg, indent=1))
    return ModelRef(name, str(where), cfg, eagle_fc=eagle)


# --------------------------------------------------------------------------- pricing


@dataclass
class Priced:
    """A time in seconds and the part of it priced from measured (silicon) table rows."""

    s: float = 0.0
    measured_s: float = 0.0
    forwards: int = 0

    def __add__(self, o: Priced) -> Priced:
        return Priced(self.s + o.s, self.measured_s + o.measured_s, self.forwards + o.forwards)


def _sum(rows) -> Priced:
    ms = sum(float(r[1]) for r in rows)
    measured = sum(float(r[1]) for r in rows if r[3] == "silicon")
    return Priced(ms / 1e3, measured / 1e3)


class Pricer:
    """One model on one system/backend/version/TP: forward passes priced from the database."""

    def __init__(self, ref: ModelRef, system: str, backend: str, version: str, tp: int, dtype: str,
                 overhead_s: float = 0.0):
        engine = require()
        self.ref, self.overhead_s = ref, overhead_s
        kw: dict[str, Any] = {"backend_version": version, "tp_size": tp}
        if dtype in ("fp8", "fp8_block"):
            kw["gemm_quant_mode"] = dtype
        try:
            with _quiet():
                self.h = engine.EngineHandle.compile(ref.path, system, backend, **kw)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StarsimError(f"{ref.name}: the estimator cannot build it on {system}/{backend} {version} "
                               f"(tp {tp}, {dtype}): {msg[:200]}") from None
        from aiconfigurator_core.sdk.config_builders import build_model_config
        from aiconfigurator_core.sdk.models import get_model

        with _quiet():
            mc = build_model_config(tp_size=tp, pp_size=1, attention_dp_size=1, moe_tp_size=1, moe_ep_size=1,
                                    gemm_quant_mode=kw.get("gemm_quant_mode"), kvcache_quant_mode=None,
                                    fmha_quant_mode=None, moe_quant_mode=None, comm_quant_mode=None,
                                    forward_model=None, attention_backend=None)
            model = get_model(ref.path, mc, backend)
        gen = [o._name if hasattr(o, "_name") else getattr(o, "name", "") for o in model.generation_ops]
        ctx = [o._name if hasattr(o, "_name") else getattr(o, "name", "") for o in model.context_ops]
        if not gen or "generation_attention" not in gen or "generation_logits_gemm" not in gen:
            raise StarsimError(f"{ref.name}: not a dense decoder the importer prices (ops: {', '.join(gen)})")
        self.gen_all = list(range(len(gen)))
        self.attn = gen.index("generation_attention")
        self.logits = gen.index("generation_logits_gemm")
        self.per_token = [i for i in self.gen_all if i not in (self.attn, self.logits)]
        self.ctx_all = list(range(len(ctx)))
        self.ctx_attn = ctx.index("context_attention")
        self.fc_json = None
        if ref.eagle_fc:  # the head's fc over [embedding; feature]: a GEMM n = h, k = 2h
            from aiconfigurator_core.sdk.engine import build_ops_json

            qkv = next(o for o in json.loads(build_ops_json(model.generation_ops)) if "Gemm" in o)
            h = int(ref.config["hidden_size"])
            fc = {"Gemm": {**qkv["Gemm"], "name": "eagle_fc", "scale_factor": 1.0, "n": h // tp, "k": 2 * h}}
            self.fc_json = json.dumps([fc])
        self._cache: dict[tuple, Priced] = {}

    def _gen(self, idx: list[int], batch: int, s: int, x: int | None) -> Priced:
        with _quiet():
            return _sum(self.h.evaluate_generation_ops(idx, batch_size=batch, s=max(int(s), 1), x=x))

    def _ctx_attn(self, tokens: int, context: int) -> Priced:
        key = ("ca", tokens, context)
        if key not in self._cache:
            with _quiet():
                rows = self.h.evaluate_context_ops([self.ctx_attn], batch_size=1, s=int(tokens), prefix=int(context))
            self._cache[key] = _sum(rows)
        return self._cache[key]

    def forward(self, tokens: int, context: int, logits: int | None = None, batch: int = 1) -> Priced:
        """One forward: ``batch`` sequences, ``tokens`` new tokens each over ``context`` cached
        ones, logits for ``logits`` tokens each (default: all of them). See the module docstring."""
        logits = tokens if logits is None else logits
        key = ("f", tokens, context, logits, batch)
        if key in self._cache:
            return self._cache[key]
        p = self._gen(self.per_token, batch, context, batch * tokens)
        p = p + self._gen([self.logits], batch, context, batch * logits)
        p = p + self._gen([self.attn], batch, context, None)
        if tokens > 1:
            extra, base = self._ctx_attn(tokens, context), self._ctx_attn(1, context)
            d = max(extra.s - base.s, 0.0)
            frac = extra.measured_s / extra.s if extra.s > 0 else 0.0
            p = p + Priced(batch * d, batch * d * frac)
        if self.fc_json is not None:
            with _quiet():
                rows = self.h.evaluate_ops_json(self.fc_json, is_context=False, batch_size=batch, s=max(context, 1),
                                                x=batch * tokens)
            p = p + _sum(rows)
        p = p + Priced(self.overhead_s, 0.0, 1)
        self._cache[key] = p
        return p

    def prefill(self, tokens: int) -> Priced:
        """A prompt's prefill, empty cache, logits of the last token: the estimator's context phase."""
        with _quiet():
            rows = self.h.evaluate_context_ops(self.ctx_all, batch_size=1, s=int(tokens), prefix=0)
        p = _sum(rows)
        if self.fc_json is not None:
            with _quiet():
                p = p + _sum(self.h.evaluate_ops_json(self.fc_json, is_context=True, batch_size=1, s=int(tokens)))
        return p + Priced(self.overhead_s, 0.0, 1)

    def decode(self, context: int) -> Priced:
        return self.forward(1, context, 1)

    # ----------------------------------------------------------------- draft rounds

    def draft_round(self, new: int, context: int, top_k: int, depth: int) -> Priced:
        """The spec's tree: encode ``new`` tokens (``context`` counts them; logits of the last),
        then ``depth - 1`` levels, each a forward of the ``top_k`` frontier nodes over the
        context and the tree so far (logits for each)."""
        p = self.forward(new, context - new, 1)
        for level in range(1, depth):
            p = p + self.forward(top_k, context + (level - 1) * top_k, top_k)
        return p

    def draft_batched_fused(self, batch: int, context: int, top_k: int, depth: int) -> Priced:
        """``batch`` sequences, 1 new token each at ``context`` (counting it), encoded in one forward,
        then one batched forward per level: a serving engine drafting its running batch at once."""
        p = self.forward(1, context - 1, 1, batch=batch)
        for level in range(1, depth):
            p = p + self.forward(top_k, context + (level - 1) * top_k, top_k, batch=batch)
        return p

    def draft_batched(self, batch: int, context: int, top_k: int, depth: int) -> Priced:
        """``batch`` tags, 1 new token each at ``context`` (counting it): each encoded on its own
        cache, then one batched forward per level."""
        p = Priced()
        for _ in range(batch):
            p = p + self.forward(1, context - 1, 1)
        for level in range(1, depth):
            p = p + self.forward(top_k, context + (level - 1) * top_k, top_k, batch=batch)
        return p


# --------------------------------------------------------------------------- coverage


def coverage(ref: ModelRef, system: str, backend: str, version: str, tp: int, dtype: str,
             grid: Grid) -> tuple[dict, list[str]]:
    """What the chosen backend's own tables measured for this model's shapes, and a warning
    per grid region outside them (the estimator then interpolates, extrapolates or falls back
    to formulas or another backend's rows)."""
    import pandas as pd

    h, kv, hd = ref.heads
    h_tp, kv_tp = max(h // tp, 1), max(kv // tp, 1)
    data = package_root() / "systems" / "data" / system
    warn: list[str] = []
    out: dict[str, Any] = {"heads_per_gpu": h_tp, "kv_heads_per_gpu": kv_tp, "head_dim": hd}
    attn_dtype = "bfloat16" if dtype != "fp8" else None
    for phase in ("generation", "context"):
        f = data / "attention" / backend / version / f"{phase}_attention_perf.parquet"
        if not f.is_file():
            out[f"{phase}_attention"] = "no table"
            warn.append(f"{ref.name}: no measured {phase} attention table for {backend} {version} on {system}")
            continue
        t = pd.read_parquet(f, columns=["num_heads", "num_key_value_heads", "head_dim", "isl", "step", "attn_dtype"])
        rows = t[(t.num_heads == h_tp) & (t.num_key_value_heads == kv_tp) & (t.head_dim == hd)]
        if attn_dtype:
            rows = rows[rows.attn_dtype == attn_dtype]
        if rows.empty:
            out[f"{phase}_attention"] = {"rows": 0}
            warn.append(f"{ref.name}: {backend} {version} on {system} has no measured {phase}-attention rows for "
                        f"{h_tp} heads / {kv_tp} KV heads / head dim {hd}; the estimator falls back "
                        "(try another --backend; --list shows coverage)")
            continue
        top = int((rows.isl + rows.step).max()) if phase == "generation" else int(rows.isl.max())
        out[f"{phase}_attention"] = {"rows": int(len(rows)), "max_tokens": top}
        need = max(grid.contexts) + max(grid.verify_tokens) if phase == "generation" else max(grid.prefill_tokens)
        if need > top:
            warn.append(f"{ref.name}: {phase} attention measured up to {top} tokens for these heads on "
                        f"{system}/{backend}; the grid asks for {need}: extrapolated beyond")
    f = data / "gemm" / backend / version / "gemm_perf.parquet"
    if f.is_file():
        g = pd.read_parquet(f, columns=["gemm_dtype", "m", "device"])
        want = dtype if dtype.startswith("fp8") else "bfloat16"
        m = g[g.gemm_dtype == want].m
        out["gemm"] = {"dtype": want, "rows": int(len(m)), "m_range": [int(m.min()), int(m.max())] if len(m) else None}
        # the GPU the rows were measured on, as the collector named it (e.g. NVIDIA H100 80GB HBM3)
        out["measured_on"] = sorted(str(d) for d in g.device.dropna().unique())
        meta = f.parent / "collection_meta.yaml"
        if meta.is_file():
            import yaml

            out["collection"] = {k: v for k, v in (yaml.safe_load(meta.read_text()) or {}).items()
                                 if k in ("schema_version", "provenance", "runtime")}
        if m.empty:
            warn.append(f"{ref.name}: no measured {want} GEMM rows for {backend} {version} on {system}")
    else:
        out["gemm"] = "no table"
        warn.append(f"{ref.name}: no measured GEMM table for {backend} {version} on {system}")
    return out, warn


# --------------------------------------------------------------------------- profiles


@dataclass
class Settings:
    spec: Any  # a starsim.models.specs.ModelSpec
    system: str
    backend: str = "vllm"
    backend_version: str | None = None
    tp: int = 1
    draft_tp: int = 1
    dtype: str = "bfloat16"
    overhead_s: float = 0.0
    roles: tuple[str, ...] = ("target", "draft")
    grid: Grid = field(default_factory=Grid)
    command: str | None = None
    tree: Any = None  # a draft round's tree (a models.specs.TreeShape); None: the spec's

    @property
    def draft_tree(self):
        return self.tree or self.spec.tree


def _op_rows(pricer: Pricer, op: str, g: Grid, tree) -> list[tuple[tuple, Priced]]:
    if op == "prefill":
        return [((p,), pricer.prefill(p)) for p in g.prefill_tokens]
    if op == "decode":
        return [((L,), pricer.decode(L)) for L in g.contexts]
    if op == "verify":
        return [((t, L), pricer.forward(t, L)) for t in g.verify_tokens for L in g.contexts]
    if op == "verify_batched":
        tokens = sorted({g.verify_tokens[len(g.verify_tokens) // 2], *g.verify_tokens[-2:]})
        return [((t, L, b), pricer.forward(t, L, batch=b))
                for b in g.verify_batches for t in tokens for L in (g.contexts[0], g.contexts[len(g.contexts) // 2],
                                                                     g.contexts[-1])]
    if op == "draft_round":
        return [((n, L), pricer.draft_round(n, L, tree.top_k, tree.depth))
                for n in g.new_tokens for L in g.contexts if L >= n]
    if op == "draft_step":
        return [((w, L), pricer.forward(w, L)) for w in g.widths for L in g.contexts]
    if op == "draft_batched":
        return [((b, L), pricer.draft_batched(b, L, tree.top_k, tree.depth)) for b in g.batches for L in g.contexts]
    if op == "draft_batched_fused":
        return [((b, L), pricer.draft_batched_fused(b, L, tree.top_k, tree.depth)) for b in g.fused_batches
                for L in g.contexts]
    raise ValueError(op)


OP_FORWARDS = {
    "prefill": "1", "decode": "1", "verify": "1", "verify_batched": "1", "draft_step": "1",
    "draft_round": "depth (1 encode + depth - 1 levels)", "draft_batched": "batch + depth - 1",
    "draft_batched_fused": "depth (1 batched encode + depth - 1 levels)",
}


def import_profiles(s: Settings, say: Callable[[str], None] | None = None) -> tuple[dict, list[str]]:
    """``({role: ProfileFile}, warnings)`` for the spec's target and draft on ``s.system``."""
    from ..profiles import OP_INPUTS, ProfileFile, build_op

    say = say or (lambda m: None)
    require()
    check_choice(s.system, s.backend)
    if s.dtype not in DTYPES:
        raise StarsimError(f"--dtype {s.dtype!r}: expected one of {', '.join(DTYPES)}")
    if s.overhead_s < 0 or not math.isfinite(s.overhead_s):
        raise StarsimError(f"--overhead-us: expected a finite number >= 0, got {s.overhead_s * 1e6:g}")
    version = resolve_version(s.system, s.backend, s.backend_version)
    out, warns = {}, []
    with tempfile.TemporaryDirectory(prefix="starsim-aic-") as tmp:
        refs = spec_refs(s.spec, Path(tmp))
        for role in s.roles:
            t0 = time.perf_counter()
            ref, tp = refs[role], (s.tp if role == "target" else s.draft_tp)
            cov, w = coverage(ref, s.system, s.backend, version, tp, s.dtype, s.grid)
            warns += w
            pricer = Pricer(ref, s.system, s.backend, version, tp, s.dtype, s.overhead_s)
            ops, measured = {}, {}
            for op in (TARGET_OPS if role == "target" else DRAFT_OPS):
                try:
                    rows = _op_rows(pricer, op, s.grid, s.draft_tree)
                except Exception as e:  # the estimator refuses a shape (e.g. fp8 on a GPU without it)
                    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise StarsimError(f"{ref.name}: {op} cannot be priced on {s.system}/{s.backend} {version} "
                                       f"(tp {tp}, {s.dtype}): {msg[:200]}") from None
                tot = sum(p.s - p.forwards * s.overhead_s for _, p in rows)
                measured[op] = round(sum(p.measured_s for _, p in rows) / tot, 4) if tot > 0 else 0.0
                fixed: dict[str, Any] = {"per_forward_overhead_s": s.overhead_s, "forwards": OP_FORWARDS[op]}
                if op in ("draft_round", "draft_batched", "draft_batched_fused"):
                    fixed["tree"] = s.draft_tree.model_dump()
                ops[op] = build_op(OP_INPUTS[op], [(*k, p.s, p.s, p.s, 1) for k, p in rows], fixed=fixed)
                say(f"{role} {op}: {len(rows)} points, CV MAPE {ops[op].fit.cv_mape_pct:.2f}%, "
                    f"{100 * measured[op]:.0f}% of kernel time from measured rows")
            prov = _provenance(s, version, tp, cov, measured, w)
            prov["wall_s"] = round(time.perf_counter() - t0, 2)
            arch = s.spec.target if role == "target" else s.spec.draft
            model = {"spec": s.spec.name, "role": role, "name": f"{s.spec.name}:{role}", "kind": arch.kind,
                     "architecture": arch.model_dump(exclude_none=True), "spec_file": _rel(s.spec.path)}
            device = {"name": f"{s.system} ({s.backend} {version}, tp {tp})", "kind": "gpu", "system": s.system,
                      "backend": s.backend, "tp": tp}
            out[role] = ProfileFile(kind="compute", model=model, device=device, provenance=prov, ops=ops)
    return out, warns


def _rel(path: str | None) -> str | None:
    """A spec path relative to the repository where it is inside it (profiles are committed)."""
    if not path:
        return path
    p = Path(path)
    root = Path(__file__).resolve().parent.parent.parent
    try:
        return str(p.resolve().relative_to(root))
    except ValueError:
        return str(p)


def _provenance(s: Settings, version: str, tp: int, cov: dict, measured: dict, warns: list[str]) -> dict:
    from ..version import __version__

    meta = _system_meta(s.system)
    return {
        "tool": "starsim calibrate import aiconfigurator",
        "starsim": __version__,
        "source": f"{PACKAGE} {package_version()} (NVIDIA, Apache-2.0): kernel timings measured on {s.system}",
        "package": PACKAGE,
        "package_version": package_version(),
        "data_version": version,
        "system": s.system,
        "gpu": meta,
        "backend": s.backend,
        "backend_version": version,
        "tp": tp,
        "dtype": s.dtype + (" (priced with bfloat16 tables: same tensor-core rate)" if s.dtype == "float16" else ""),
        "kernel_only": True,
        "per_forward_overhead_s": s.overhead_s,
        "method": "decode op list at B*T tokens, LM head at B*L tokens, decode attention over the cache plus "
                  "the prefill-with-prefix kernel's cost of T-1 more query tokens (starsim.calibrate.gpu_db)",
        "measured_fraction": measured,
        "measured_fraction_what": "share of each op's kernel time (over its grid) priced from measured "
                                  "(silicon) rows; the rest from the estimator's empirical formulas or mixed "
                                  "rows (prefill-with-prefix attention)",
        "coverage": cov,
        "warnings": list(warns),
        "grid": asdict(s.grid),
        "grid_why": GRID_WHY,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": s.command,
    }


def _system_meta(system: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load((package_root() / "systems" / f"{system}.yaml").read_text())
        gpu = data.get("gpu", {})
        return {k: gpu[k] for k in ("mem_bw", "mem_capacity", "bfloat16_tc_flops", "sm_version") if k in gpu}
    except Exception:  # metadata only
        return {}


def profile_path(out_dir: Path, spec_name: str, role: str, prof, tree=None) -> Path:
    """``<spec>.<role>.<system>-<backend>-tp<N>[-oh<us>us][-tree<K>-<D>-<T>].<dtype>.yaml`` (``tree``:
    a draft priced on another tree than its spec's)."""
    d, prov = prof.device, prof.provenance
    oh = prov.get("per_forward_overhead_s", 0.0)
    tag = f"-oh{oh * 1e6:g}us" if oh else ""
    if tree is not None:
        tag += f"-tree{tree.top_k}-{tree.depth}-{tree.tokens}"
    dtype = prov.get("dtype", "bfloat16").split(" ")[0]
    return out_dir / f"{spec_name}.{role}.{d['system']}-{d['backend']}-tp{d['tp']}{tag}.{dtype}.yaml"


def listing() -> str:
    """``--list``: systems and their backends' measured versions, and the bundled models."""
    require()
    lines = ["systems (backend: measured data versions; * = the default 'current' slot):"]
    for sysname in systems():
        parts = []
        for b, vs in backend_versions(sysname).items():
            try:
                cur = resolve_version(sysname, b, None)
            except StarsimError:
                cur = None
            parts.append(f"{b} " + ",".join(v + ("*" if v == cur else "") for v in vs))
        lines.append(f"  {sysname:22s} {'; '.join(parts)}")
    from ..models.specs import list_specs

    lines.append("\nstarsim's model specs (--spec NAME; also a spec file or a local HF model dir):")
    lines.append("  " + "  ".join(list_specs()))
    lines.append(f"\nbundled model configs ({PACKAGE} {package_version()}): pair two with --target NAME --draft "
                 "NAME (or --draft eagle, a one-layer EAGLE head), no spec file needed:")
    ms = bundled_models()
    for i in range(0, len(ms), 3):
        lines.append("  " + "  ".join(f"{m:44s}" for m in ms[i:i + 3]).rstrip())
    return "\n".join(lines)
