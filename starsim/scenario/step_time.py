"""A serving target's engine step cost (``targets.*.serving.step_time``)."""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ..yaml_files import read_yaml
from .base import NonNeg, _Model


def _plain(v: Any) -> Any:
    """Numbers and nested lists/tuples as floats in lists, to compare a field with its file's."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class StepTime(_Model):
    """One engine step of a serving target: one forward over every sequence it schedules
    (prefill chunks, decode tokens, verified trees), priced from the step's shape
    (:class:`starsim.serving.StepShape`):

    ``overhead_s + dense(tokens) + max(logits_weights_s, per_logit_token_s * logits)
    + per_seq_s * seqs + per_kv_token_s * kv + per_attn_s * attn + per_query_s * (tokens - seqs)``

    ``tokens``: every token in the forward; ``logits``: those the LM head scores (each tree
    token, each decode token, a prefill's last); ``seqs``: the decoding sequences; ``kv``:
    the cached context they read; ``attn``: query x key pairs beyond a decode token's (a
    chunk of c tokens after p cached: c (p + c/2); a tree of q tokens at context L: (q - 1) L).
    ``dense(T)``: the layers other than attention and the LM head, read from ``dense_table``
    (measured points, linear between them and past the last) or ``max(weights_s,
    per_token_s * T)`` (the weights read once per step until the tokens make it compute-bound).
    ``path``: a file `starsim calibrate import aiconfigurator` writes, whose fields these are."""

    kind: Literal["step"] = "step"
    path: str | None = Field(
        None, description="a step-cost file (`starsim calibrate import aiconfigurator` writes one per target): its "
        "measured fields; only scale and cv may be given beside it"
    )
    overhead_s: NonNeg = Field(0.0, description="per step, whatever it holds: scheduling, launches, sampling")
    weights_s: NonNeg = Field(0.0, description="the dense layers' memory-bound floor: the weights read once per step")
    per_token_s: NonNeg = Field(0.0, description="the dense layers' compute per token in the forward")
    dense_table: list[tuple[int, NonNeg]] | None = Field(
        None, min_length=2,
        description="measured [tokens, seconds] points of the dense layers (tokens increasing); replaces weights_s "
        "and per_token_s",
    )
    logits_weights_s: NonNeg = Field(0.0, description="the LM head's floor: its weights read once per step")
    per_logit_token_s: NonNeg = Field(0.0, description="the LM head's compute per scored token")
    per_seq_s: NonNeg = Field(0.0, description="per decoding sequence (attention's per-sequence work)")
    per_kv_token_s: NonNeg = Field(0.0, description="attention: reading one cached token of one decoding sequence")
    per_attn_s: NonNeg = Field(0.0, description="attention: one query x key pair beyond a decode token's")
    per_query_s: NonNeg = Field(0.0, description="attention: one query token beyond a decode token's (tokens - seqs)")
    scale: float = Field(1.0, gt=0, allow_inf_nan=False, description="multiply every step (what-if)")
    cv: float = Field(0.0, ge=0, le=10, allow_inf_nan=False, description="multiplicative lognormal noise, mean 1")
    _source: Any = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _from_file(cls, data: Any, handler, info: ValidationInfo):
        """``path``: the fields come from the file (resolved beside the scenario), its provenance kept."""
        prov = None
        if isinstance(data, dict) and data.get("path") is not None:
            p = Path(str(data["path"])).expanduser()
            if not p.is_absolute():
                p = Path((info.context or {}).get("base_dir", ".")) / p
            if not p.is_file():
                raise ValueError(f"step-cost file not found: {p}")
            doc = read_yaml(p, "step-cost file")
            fields = doc.get("step_time") if isinstance(doc, dict) else None
            if not isinstance(fields, dict):
                raise ValueError(f"{p}: not a step-cost file (no step_time mapping)")
            # a resolved scenario (as `check` prints it) repeats the file's fields: those may stay
            extra = sorted(k for k in set(data) - {"path", "kind", "scale", "cv"}
                           if _plain(data[k]) != _plain(fields.get(k, getattr(cls.model_fields.get(k), "default",
                                                                                  None))))
            if extra:
                raise ValueError(f"give path or the cost fields, not both (also given: {', '.join(extra)})")
            prov = doc.get("provenance")
            data = {**fields, **{k: data[k] for k in ("kind", "scale", "cv") if k in data}, "path": str(p.resolve())}
        m = handler(data)
        if prov is not None:
            m._source = prov
        return m

    @field_validator("dense_table")
    @classmethod
    def _increasing(cls, v):
        if v is not None and any(b[0] <= a[0] for a, b in zip(v, v[1:])):
            raise ValueError("tokens must increase from point to point")
        if v is not None and v[0][0] < 1:
            raise ValueError("tokens start at 1 or more")
        return v

    def dense(self):
        """``f(tokens)``: the dense layers' time."""
        t = self.dense_table
        if t is None:
            w, k = self.weights_s, self.per_token_s
            return lambda tokens: w if w > k * tokens else k * tokens
        xs, ys = [float(a) for a, _ in t], [float(b) for _, b in t]

        def f(tokens: float) -> float:
            i = bisect_right(xs, tokens)
            if i == 0:
                return ys[0]
            j = min(i, len(xs) - 1)  # past the last point: the last segment's line
            x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
            return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)
        return f

    def mean_fn(self):
        """``f(shape)``: a step's mean time from its :class:`~starsim.serving.StepShape`."""
        dense, scale = self.dense(), self.scale
        lw, pl, ps, pk, pa, pq, oh = (self.logits_weights_s, self.per_logit_token_s, self.per_seq_s,
                                      self.per_kv_token_s, self.per_attn_s, self.per_query_s, self.overhead_s)

        def mean(shape) -> float:
            lg = pl * shape.logits
            return scale * (oh + dense(shape.tokens) + (lw if lw > lg else lg) + ps * shape.seqs + pk * shape.kv
                            + pa * shape.attn + pq * (shape.tokens - shape.seqs))
        return mean

    def sampler(self, rng):
        """``f(shape)`` drawing one step's time."""
        from ..streams import draws, lognormal_params

        mean = self.mean_fn()
        if self.cv == 0:
            return mean
        nxt = draws(rng, "lognormal", *lognormal_params(1.0, self.cv))
        return lambda shape: mean(shape) * nxt()
