"""A serving target's step cost (``serving.step_time``) priced from aiconfigurator's measured
kernel tables, the way :mod:`starsim.calibrate.gpu_db` prices its forwards.

One continuous-batching step holds prefill chunks and decoding sequences (a decode token or
a tree each) in one forward. Its parts, each from the estimator (see
:class:`starsim.scenario.StepTime` for the form they fill):

- the dense layers (every op but attention and the LM head: GEMMs, norms, activation,
  embedding, TP all-reduces) at ``T`` tokens: measured points, kept as ``dense_table``;
- the LM head at the scored tokens: its floor (the weights read) and slope, fitted;
- decode attention, one sequence reading ``L`` cached tokens, ``B`` of them: the measured
  ``generation_attention`` rows, fitted as ``a + per_seq_s B + per_kv_token_s B L`` (``a``
  joins the step's overhead);
- attention beyond a decode token's (prefill chunks on the measured prefill-with-prefix
  kernel, a tree's other query tokens as ``context_attention(q, L) - context_attention(1,
  L)``): fitted per query x key pair and per query token.

The composed cost is checked against the direct sum of the same estimator calls over mixed
steps (prefill chunks beside decode and verify batches); the file records that error, each
fit's, and the share of kernel time priced from measured rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.kv import kv_bytes_per_token  # here too: compute.py and analysis/ import it from here
from ..profiles import _nnls_relative
from ..serving import StepShape, chunk_shape, tree_shape

DENSE_TOKENS = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
                8192, 12288, 16384]
LOGIT_TOKENS = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
ATTN_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
ATTN_KV = [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
CHUNKS = [(c, p) for c in (64, 256, 1024, 4096) for p in (0, 1024, 4096)]
TREES = [(q, L) for q in (4, 17, 60) for L in (512, 2048, 8192)]
# mixed steps the composed cost is checked on: (decode sequences, tokens each, their context, chunk, cached)
MEMORY_FRACTION = 0.9  # of a GPU's memory for weights and KV: vLLM's gpu_memory_utilization default
ACTIVATIONS_BYTES = 2 * 2**30  # per GPU, kept out of the KV cache (activations, CUDA graphs)
CHECKS = [(b, q, L, c, p) for b in (1, 8, 32, 128) for q in (1, 17) for L in (1024, 4096) for c, p in
          ((0, 0), (512, 0), (2048, 1024))]


def mape_pct(pred, y) -> float | None:
    """:func:`starsim.profiles._mape` of ``pred`` against ``y``, to 0.01% (None: no points)."""
    from ..profiles import _mape

    y = np.asarray(y, float)
    return round(_mape(np.asarray(pred, float), y), 2) if y.size else None


def _roofline(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``max(floor, slope * t)`` fitted to ``y`` in relative error."""
    from scipy.optimize import least_squares

    r = least_squares(lambda p: (np.maximum(p[0], p[1] * t) - y) / y, [float(y.min()), float(y.max() / t.max())],
                      bounds=(0.0, np.inf))
    return float(r.x[0]), float(r.x[1])


def step_cost(pricer, overhead_s: float = 0.0) -> dict[str, Any]:
    """``{"step_time": fields, "fit": errors, "measured_fraction": share, "points": counts}``
    for the model ``pricer`` prices (a :class:`starsim.calibrate.gpu_db.Pricer`); ``overhead_s``
    per forward, as the profiles' ``--overhead-us``."""
    measured = total = 0.0

    def take(p):
        nonlocal measured, total
        measured += p.measured_s
        total += p.s
        return p.s

    dense = [take(pricer._gen(pricer.per_token, 1, 1024, t)) for t in DENSE_TOKENS]
    lt = np.array(LOGIT_TOKENS, float)
    logits = np.array([take(pricer._gen([pricer.logits], 1, 1024, int(t))) for t in LOGIT_TOKENS])
    lw, pl = _roofline(lt, logits)
    bl = np.array([(b, L) for b in ATTN_BATCHES for L in ATTN_KV], float)
    dec = np.array([take(pricer._gen([pricer.attn], int(b), int(L), None)) for b, L in bl])
    a0, per_seq, per_kv = _nnls_relative(np.column_stack([np.ones(len(bl)), bl[:, 0], bl[:, 0] * bl[:, 1]]), dec)
    shapes, extra = [], []
    for c, p in CHUNKS:
        shapes.append(chunk_shape(c, p, False))
        extra.append(take(pricer._ctx_attn(c, p)))
    for q, L in TREES:
        shapes.append(tree_shape(q, L))
        extra.append(max(pricer._ctx_attn(q, L).s - pricer._ctx_attn(1, L).s, 1e-9))
    xa = np.array([[sh.attn, sh.tokens - sh.seqs] for sh in shapes], float)
    extra_a = np.array(extra, float)
    per_attn, per_query = _nnls_relative(xa, extra_a)
    fields = {
        "overhead_s": float(overhead_s + a0),
        "dense_table": [[t, float(s)] for t, s in zip(DENSE_TOKENS, dense)],
        "logits_weights_s": lw, "per_logit_token_s": pl,
        "per_seq_s": float(per_seq), "per_kv_token_s": float(per_kv), "per_attn_s": float(per_attn),
        "per_query_s": float(per_query),
    }
    fit = {
        "logits_mape_pct": mape_pct(np.maximum(lw, pl * lt), logits),
        "decode_attention_mape_pct": mape_pct(a0 + per_seq * bl[:, 0] + per_kv * bl[:, 0] * bl[:, 1], dec),
        "extra_attention_mape_pct": mape_pct(xa @ np.array([per_attn, per_query]), extra_a),
        "composed_step_mape_pct": _composed_error(pricer, fields, overhead_s),
    }
    return {"step_time": fields, "fit": fit, "measured_fraction": round(measured / total, 4) if total else 0.0}


def _composed_error(pricer, fields: dict, overhead_s: float) -> float:
    """The composed cost (the fields, as the simulator prices a step) against the direct sum of
    the estimator's calls for the same mixed steps (:data:`CHECKS`)."""
    from ..scenario import StepTime

    mean = StepTime(**fields).mean_fn()
    got, want = [], []
    for b, q, L, c, p in CHECKS:
        shape = tree_shape(q, L).times(b) + (chunk_shape(c, p, True) if c else StepShape())
        got.append(mean(shape))
        direct = pricer._gen(pricer.per_token, 1, 1024, int(shape.tokens)).s
        direct += pricer._gen([pricer.logits], 1, 1024, int(shape.logits)).s
        direct += pricer._gen([pricer.attn], b, L, None).s
        if q > 1:
            direct += b * max(pricer._ctx_attn(q, L).s - pricer._ctx_attn(1, L).s, 0.0)
        if c:
            direct += pricer._ctx_attn(c, p).s
        want.append(direct + overhead_s)
    return mape_pct(got, want)


GPU_METHOD = ("serving step (starsim.calibrate.gpu_step): dense layers measured at each token count; LM head, "
              "decode attention and the attention beyond a decode token's fitted; composed as StepTime")
GPU_KV_HOW = (f"{MEMORY_FRACTION:.0%} of the GPUs' memory less the weights and {ACTIVATIONS_BYTES / 2**30:g} GiB of "
              "activations each; bf16 KV")


def step_doc(cost: dict, profile, command: str | None, kv: tuple[int, int] | None = None, *,
             method: str = GPU_METHOD, kv_how: str = GPU_KV_HOW) -> dict[str, Any]:
    """The step-cost file: the target profile's model and device, its provenance with the fits,
    the ``step_time`` fields (what ``step_time: {path: FILE}`` reads) and, with ``kv``
    (:func:`kv_capacity`), the KV the device holds, for ``serving.kv_capacity_tokens``.
    ``cost["provenance"]``: what the provenance says of the points (default: the share priced
    from measured rows, as :func:`step_cost` gives it); ``method``, ``kv_how``: how the
    fields and the KV were obtained (default: this module's, from a kernel database)."""
    prov = {k: v for k, v in profile.provenance.items() if k not in ("grid", "grid_why", "measured_fraction",
                                                                      "measured_fraction_what", "coverage")}
    points = cost.get("provenance") or {
        "measured_fraction": cost["measured_fraction"],
        "measured_fraction_what": "share of the kernel time of every priced point from measured (silicon) rows"}
    prov.update(method=method, fit=cost["fit"], **points, command=command)
    doc = {"format": 1, "kind": "step", "model": profile.model, "device": profile.device, "provenance": prov,
           "step_time": {k: (v if not isinstance(v, float) else float(f"{v:.6g}")) for k, v in
                         cost["step_time"].items()}}
    if kv is not None:
        doc["kv"] = {"capacity_tokens": kv[0], "bytes_per_token": kv[1], "how": kv_how}
    return doc


def import_step(s) -> dict[str, Any]:
    """:func:`step_cost` of the target of ``s`` (a :class:`starsim.calibrate.gpu_db.Settings`),
    with its ``kv`` (:func:`kv_capacity`)."""
    import tempfile
    from pathlib import Path

    from . import gpu_db

    version = gpu_db.resolve_version(s.system, s.backend, s.backend_version)
    with tempfile.TemporaryDirectory(prefix="starsim-aic-") as tmp:
        ref = gpu_db.spec_refs(s.spec, Path(tmp))["target"]
        pricer = gpu_db.Pricer(ref, s.system, s.backend, version, s.tp, s.dtype, s.overhead_s)
        return {**step_cost(pricer, s.overhead_s), "kv": kv_capacity(ref.config, s.dtype, s.tp, s.system)}


def _params(cfg: dict) -> float:
    """A dense decoder's parameter count from its config."""
    h, layers, v = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    attn = h * heads * hd * 2 + h * kv * hd * 2
    return layers * (attn + 3 * h * int(cfg["intermediate_size"])) + v * h * (1 if cfg.get("tie_word_embeddings")
                                                                            else 2)


def kv_tokens(mem_bytes: float, devices: int, weights_bytes: float, per_token: int) -> int:
    """KV tokens ``devices`` of ``mem_bytes`` each hold: MEMORY_FRACTION of their memory less
    the weights and ACTIVATIONS_BYTES each."""
    return int((devices * (mem_bytes * MEMORY_FRACTION - ACTIVATIONS_BYTES) - weights_bytes) // per_token)


def kv_capacity(cfg: dict, dtype: str, tp: int, system: str) -> tuple[int, int]:
    """(KV tokens a TP group of ``system`` GPUs holds, KV bytes per token): 90% of their memory
    less the weights (``dtype``'s bytes per parameter) and 2 GiB each of activations, in bf16 KV."""
    from . import gpu_db

    per_token = kv_bytes_per_token(cfg)
    mem = float(gpu_db._system_meta(system).get("mem_capacity", 80 * 2**30))
    weights = _params(cfg) * (1 if dtype.startswith("fp8") else 2)
    return kv_tokens(mem, tp, weights, per_token), per_token
