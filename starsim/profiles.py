"""Measured latency profiles: the file format, the fitted models, and their use in timing specs.

A profile file (YAML, written by ``starsim calibrate compute``) holds, per operation, the raw
measurements (median, p10, p90 per grid point), a smooth parametric fit chosen by
cross-validated error, the measured ranges, and where it all came from. No torch here: the
simulator and the closed form read profiles without loading any model.

Operations and what their inputs mean (the simulator calls a spec with
``(tokens, context, depth)``; the op says which of these it uses):

- ``prefill``: ``tokens`` = prompt tokens (target).
- ``verify``: ``tokens`` = tree tokens incl. the root, ``context`` (target, batch 1).
- ``verify_batched``: as ``verify`` plus ``batch`` (not used by the simulator yet).
- ``decode``: one autoregressive step at ``context`` (target; ``targets.decode_time``).
- ``draft_round``: one whole draft round at the profile's tree shape: ``tokens`` = new
  prefix tokens to encode, ``context`` = context length including them (draft, batch 1).
  Use it as ``draft.round_time``.
- ``draft_step``: one depth step: ``tokens`` = frontier width, ``context``.
- ``draft_batched``: one round for ``batch`` targets at once (new tokens = 1), ``context``.
- ``draft_batched_fused``: the same with the batch's new tokens encoded in one forward (a
  serving engine's draft for its running sequences; ``calibrate import aiconfigurator`` only).
- ``draft_idle``: the round time after an idle gap of ``gap_s`` seconds (warm vs cold).
- ``verify_idle``: the same for the target's verify (a target idles while the draft works).
- ``step``: a serving target's whole engine step: ``batch`` decoding sequences of ``tokens``
  each at ``context``, beside a prefill ``chunk`` after ``cached`` tokens (``calibrate
  compute``); kept as measured: its fit is the step-cost file beside the profile.

The fit is ``sum(coef_i * feature_i)`` with non-negative coefficients over a subset of
features (``1``, ``tokens``, ``context``, ``tokens*context``, ``tokens^2`` (ops without a
context: prefill), ``batch``, ``batch*context``, ``batch*tokens``); the subset with the
lowest k-fold cross-validated MAPE wins. Weights are ``1/y`` so the fit minimises relative
error, which is what a MAPE reports.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ScenarioError
from .streams import MAX_CV, draws, lognormal_params
from .yaml_files import read_mapping

PROFILE_FORMAT = 1

OP_INPUTS: dict[str, tuple[str, ...]] = {
    "prefill": ("tokens",),
    "verify": ("tokens", "context"),
    "verify_batched": ("tokens", "context", "batch"),
    "decode": ("context",),
    "draft_round": ("tokens", "context"),
    "draft_step": ("tokens", "context"),
    "draft_batched": ("batch", "context"),
    "draft_batched_fused": ("batch", "context"),
    "draft_idle": ("gap_s",),
    "verify_idle": ("gap_s",),
    "step": ("batch", "tokens", "context", "chunk", "cached"),
}

# Feature name -> function of the input columns (a dict of arrays).
FEATURES: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
    "1": lambda x: np.ones_like(next(iter(x.values())), dtype=float),
    "tokens": lambda x: x["tokens"],
    "context": lambda x: x["context"],
    "tokens*context": lambda x: x["tokens"] * x["context"],
    "tokens^2": lambda x: x["tokens"] * x["tokens"],  # prefill: attention is quadratic in the prompt
    # concave in tokens: a small tree costs more per token than a big one (fixed per-call work
    # in the Python around a forward, kernels that fill up)
    "sqrt(tokens)": lambda x: np.sqrt(x["tokens"]),
    "sqrt(tokens)*context": lambda x: np.sqrt(x["tokens"]) * x["context"],
    "batch": lambda x: x["batch"],
    "batch*context": lambda x: x["batch"] * x["context"],
    "batch*tokens": lambda x: x["batch"] * x["tokens"],
}


def _needs(feature: str) -> set[str]:
    """The inputs a feature is made of (``sqrt(tokens)*context`` -> tokens, context)."""
    return {p.replace("sqrt(", "").replace(")", "").replace("^2", "") for p in feature.split("*")}


def _candidate_features(inputs: Sequence[str]) -> list[str]:
    have = set(inputs)
    if "context" in have:  # with a context, tokens*context carries the attention term
        return [f for f in FEATURES if f == "1" or (f != "tokens^2" and _needs(f) <= have)]
    return [f for f in FEATURES if f == "1" or (_needs(f) <= have and not f.startswith("sqrt"))]


# --------------------------------------------------------------------------- fitting


def _nnls_relative(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    m = a / y[:, None]
    # unit-norm columns: features range over orders of magnitude (1 vs tokens*context) and
    # some nearly repeat each other (tokens, sqrt(tokens)); scaled, NNLS converges
    norm = np.linalg.norm(m, axis=0)
    norm[norm == 0] = 1.0
    coef, _ = nnls(m / norm, np.ones_like(y), maxiter=50 * m.shape[1])
    return coef / norm


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y) / y) * 100.0)


def _design(x: dict[str, np.ndarray], features: Sequence[str]) -> np.ndarray:
    return np.column_stack([FEATURES[f](x) for f in features]).astype(float)


def _cv_mape(x: dict[str, np.ndarray], y: np.ndarray, features: Sequence[str], k: int, seed: int) -> float:
    n = len(y)
    k = min(k, n)
    order = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(order, k)
    errs = []
    a = _design(x, features)
    for test in folds:
        train = np.setdiff1d(order, test)
        if len(train) < len(features):
            return math.inf
        coef = _nnls_relative(a[train], y[train])
        errs.append(np.abs(a[test] @ coef - y[test]) / y[test])
    return float(np.mean(np.concatenate(errs)) * 100.0)


@dataclass
class Fit:
    features: list[str]
    coef: list[float]
    mape: float  # in-sample, percent
    cv_mape: float  # k-fold cross-validated, percent
    candidates: dict[str, float] = field(default_factory=dict)  # form -> cv MAPE

    @property
    def form(self) -> str:
        return " + ".join(f if f != "1" else "a" for f in self.features)

    def to_dict(self) -> dict:
        return {
            "form": " + ".join(f"{c:.6g}*{f}" if f != "1" else f"{c:.6g}" for f, c in zip(self.features, self.coef)),
            "features": list(self.features),
            "coef": [float(c) for c in self.coef],
            "mape_pct": round(self.mape, 3),
            "cv_mape_pct": round(self.cv_mape, 3),
            "candidates_cv_mape_pct": {k: round(v, 3) for k, v in self.candidates.items()},
        }


def fit_op(inputs: Sequence[str], x: dict[str, Sequence[float]], y: Sequence[float], k: int = 5, seed: int = 0) -> Fit:
    """Choose and fit the latency model of one operation (see the module docstring)."""
    xs = {name: np.asarray(x[name], dtype=float) for name in inputs}
    ys = np.asarray(y, dtype=float)
    if len(ys) == 0 or np.any(ys <= 0) or not np.all(np.isfinite(ys)):
        raise ValueError("measurements must be positive and finite")
    feats = [f for f in _candidate_features(inputs) if f != "1"]
    best: tuple[float, list[str]] | None = None
    scores: dict[str, float] = {}
    for r in range(len(feats) + 1):
        for subset in itertools.combinations(feats, r):
            cand = ["1", *subset]
            if len(cand) > len(ys):
                continue
            score = _cv_mape(xs, ys, cand, k, seed) if len(ys) > len(cand) else math.inf
            scores[" + ".join(cand)] = score
            # Prefer fewer terms on a near tie: the simpler model extrapolates more safely.
            if best is None or score < best[0] * 0.99 - 1e-9:
                best = (score, cand)
    assert best is not None
    cv, chosen = best
    a = _design(xs, chosen)
    coef = _nnls_relative(a, ys)
    return Fit(chosen, [float(c) for c in coef], _mape(a @ coef, ys), cv, scores)


# --------------------------------------------------------------------------- the file


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


Finite = Annotated[float, Field(allow_inf_nan=False)]


class OpFit(_M):
    form: str
    features: list[str]
    coef: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]  # a time is never negative, NaN or inf
    mape_pct: float
    cv_mape_pct: float
    candidates_cv_mape_pct: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_features(self) -> OpFit:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown fit feature {unknown[0]!r}; known: {', '.join(FEATURES)}")
        if len(self.coef) != len(self.features):
            raise ValueError(f"{len(self.coef)} coef for {len(self.features)} features")
        return self


class Op(_M):
    """One measured operation: raw rows, the fit, the measured ranges."""

    inputs: list[str]
    fixed: dict[str, Any] = Field(default_factory=dict, description="held constant, e.g. the tree shape")
    columns: list[str] = Field(
        description="row layout: the inputs, then median_s (the point's time: the lowest of its passes' "
        "median block times), p10_s and p90_s (over every timed block), n (blocks)"
    )
    rows: list[list[Finite]]
    fit: OpFit | None = None
    noise_cv: float = Field(0.0, ge=0, le=MAX_CV, allow_inf_nan=False,
                            description="typical spread, a lognormal cv from p10/p90")
    range: dict[str, tuple[Finite, Finite]] = Field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        i = self.columns.index(name)
        return np.asarray([r[i] for r in self.rows], dtype=float)

    @property
    def takes_batch(self) -> bool:
        """``draft_batched``'s inputs (batch, context): a caller's ``tokens`` is the batch size."""
        return tuple(self.inputs) == ("batch", "context")

    @property
    def reference_s(self) -> float | None:
        """The op's median reference time (``ref_s``): the machine speed its fit is normalized
        to; None without a reference column (profiles before drift normalization)."""
        return float(np.median(self.column("ref_s"))) if "ref_s" in self.columns else None

    def normalized(self) -> np.ndarray | None:
        """Each row's time at the op's median reference speed (``median_s x reference_s /
        ref_s``): what the row would have read had the machine run as fast throughout; None
        without a reference column."""
        ref = self.reference_s
        return None if ref is None else self.column("median_s") * ref / self.column("ref_s")

    def predict(self, **inputs: float) -> float:
        if self.fit is None:
            raise ValueError("this operation has no fit")
        x = {k: np.asarray([float(inputs.get(k, 0.0))]) for k in self.inputs}
        return float(_design(x, self.fit.features)[0] @ np.asarray(self.fit.coef))


class ProfileFile(_M):
    profile_format: int = PROFILE_FORMAT
    kind: str = Field("compute", description="compute | link")
    model: dict[str, Any] = Field(default_factory=dict, description="spec name, role, architecture")
    device: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    ops: dict[str, Op] = Field(default_factory=dict)


def build_op(
    inputs: Sequence[str], rows: Sequence[Sequence[float]], fixed: dict | None = None, fit: bool = True,
    reference: bool = False,
) -> Op:
    """An :class:`Op` from rows ``(*inputs, median_s, p10_s, p90_s, n)``, fitted; with
    ``reference``, each row ends with ``ref_s``, the reference kernel's time beside it."""
    columns = [*inputs, "median_s", "p10_s", "p90_s", "n", *(["ref_s"] if reference else [])]
    op = Op(inputs=list(inputs), fixed=fixed or {}, columns=columns, rows=[[float(v) for v in r] for r in rows])
    med, p10, p90 = op.column("median_s"), op.column("p10_s"), op.column("p90_s")
    op.range = {name: (float(op.column(name).min()), float(op.column(name).max())) for name in inputs}
    # p90/p10 of a lognormal is exp(2 * 1.2816 * sigma); the median over grid points is robust.
    ok = (p10 > 0) & (p90 >= p10)
    if ok.any():
        sigma = float(np.median(np.log(p90[ok] / p10[ok]) / (2 * 1.2816)))
        op.noise_cv = round(math.sqrt(math.expm1(sigma * sigma)), 4)
    if fit and "gap_s" not in inputs:
        x = {name: op.column(name) for name in inputs}
        # fitted at the median reference speed: the drift within the calibration taken out
        y = op.normalized() if reference else med
        op.fit = OpFit(**fit_op(inputs, x, y).to_dict())
    return op


def write_profile(profile: ProfileFile, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = profile.model_dump(mode="json")
    p.write_text(yaml.safe_dump(data, sort_keys=False, width=120))
    return p


def refit(profile: ProfileFile) -> ProfileFile:
    """The same measurements fitted again (the fit's candidate features may have grown since);
    ops kept as measured (``draft_idle``) stay as they are."""
    ops = {name: (build_op(op.inputs, op.rows, fixed=op.fixed) if op.fit is not None else op)
           for name, op in profile.ops.items()}
    prov = {**profile.provenance, "refit": {"starsim": _version(), "date": _now()}}
    return profile.model_copy(update={"ops": ops, "provenance": prov})


def _version() -> str:
    from .version import __version__

    return __version__


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_profile(path: str | Path) -> ProfileFile:
    p = Path(path)
    data = read_mapping(p, "profile")
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as e:
        raise ScenarioError.from_validation(str(p), e) from None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- use in a run


class ProfileUsage:
    """Collects, during one run, which profile ops were asked outside their measured range."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict] = {}

    def entry(self, path: str, op: str, profile: ProfileFile, op_data: Op) -> dict:
        key = (path, op)
        if key not in self.entries:
            self.entries[key] = {
                "path": path,
                "op": op,
                "sha256": file_sha256(path),
                "device": profile.device.get("name"),
                "model": profile.model.get("name"),
                "measured_on": profile.provenance.get("date"),
                "range": {k: list(v) for k, v in op_data.range.items()},
                "calls": 0,
                "outside_range": 0,
                "seen": {},
            }
        return self.entries[key]

    def report(self, warn: bool = True) -> list[dict]:
        out = []
        for e in self.entries.values():
            e = dict(e)
            e["extrapolated"] = e["outside_range"] > 0
            if e["extrapolated"] and warn:
                seen = ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in e["seen"].items())
                rng = ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in e["range"].items())
                warnings.warn(
                    f"profile {e['path']} op {e['op']}: {e['outside_range']} of {e['calls']} calls outside the "
                    f"measured range ({rng}); asked for {seen}; the fit was extrapolated",
                    ProfileRangeWarning,
                    stacklevel=2,
                )
            out.append(e)
        return out


class ProfileRangeWarning(UserWarning):
    """A run evaluated a profile's fit outside the grid it was measured on."""


def op_sampler(
    path: str,
    op_name: str,
    profile: ProfileFile,
    rng: np.random.Generator,
    *,
    scale: float = 1.0,
    noise: bool = True,
    usage: ProfileUsage | None = None,
) -> Callable[[float, float, float], float]:
    """A closure ``f(tokens, context, depth) -> seconds`` from a profile op's fit."""
    op = profile.ops[op_name]
    if op.fit is None:
        raise ValueError(f"op {op_name!r} has no fit")
    feats, coef = op.fit.features, [c * scale for c in op.fit.coef]
    lo_t, hi_t = op.range.get("tokens", (-math.inf, math.inf))
    lo_c, hi_c = op.range.get("context", (-math.inf, math.inf))
    uses_t, uses_c = "tokens" in op.inputs, "context" in op.inputs
    entry = usage.entry(path, op_name, profile, op) if usage is not None else None
    seen = entry["seen"] if entry is not None else {}

    # Collapse the fit to a + b*tokens + c*context + d*tokens*context + e*tokens^2
    # + (g + h*context)*sqrt(tokens) (batch = 1 in the simulator): a few multiplications a call.
    terms = dict(zip(feats, coef))
    if op.takes_batch:
        terms = {"1": terms.get("1", 0.0), "tokens": terms.get("batch", 0.0),
                 "context": terms.get("context", 0.0), "tokens*context": terms.get("batch*context", 0.0)}
        lo_t, hi_t = op.range.get("batch", (-math.inf, math.inf))
        uses_t = True
    a = terms.get("1", 0.0) + terms.get("batch", 0.0)
    b = terms.get("tokens", 0.0) + terms.get("batch*tokens", 0.0)
    c = terms.get("context", 0.0) + terms.get("batch*context", 0.0)
    d = terms.get("tokens*context", 0.0)
    e = terms.get("tokens^2", 0.0)
    g, h = terms.get("sqrt(tokens)", 0.0), terms.get("sqrt(tokens)*context", 0.0)
    sqrt = math.sqrt

    def note(tokens: float, context: float) -> None:
        entry["calls"] += 1
        out = (uses_t and not lo_t <= tokens <= hi_t) or (uses_c and not lo_c <= context <= hi_c)
        if out:
            entry["outside_range"] += 1
        for name, v, used in (("tokens", tokens, uses_t), ("context", context, uses_c)):
            if used:
                lo, hi = seen.get(name, (v, v))
                seen[name] = (min(lo, v), max(hi, v))

    if noise and op.noise_cv > 0:
        noise = draws(rng, "lognormal", *lognormal_params(1.0, op.noise_cv))  # mean 1: the fit is the mean
    else:
        noise = None

    def sample(tokens=0.0, context=0.0, depth=0.0):
        if entry is not None:
            note(tokens, context)
        m = a + b * tokens + c * context + d * tokens * context + e * tokens * tokens
        if g or h:
            m += (g + h * context) * sqrt(tokens)
        return m * noise() if noise is not None else m

    return sample


def idle_factor(profile: ProfileFile, op_name: str = "draft_idle") -> Callable[[float], float] | None:
    """Warm vs cold: an op's time after an idle gap, relative to back-to-back calls
    (``draft_idle``: draft rounds; ``verify_idle``: verifies).

    The measured times are first made non-decreasing in the gap (an isotonic least-squares
    fit): a longer idle gap cannot make the same code faster, and on a shared machine one
    noisy point (the back-to-back one above all, which every factor is relative to) would
    otherwise speed up or slow down every op near it. Interpolated linearly in log(1 + gap
    in ms) between measured gaps; flat beyond them. None when the profile has no such
    measurement.
    """
    from scipy.optimize import isotonic_regression

    op = profile.ops.get(op_name)
    if op is None or not op.rows:
        return None
    gaps, med = op.column("gap_s"), op.column("median_s")
    order = np.argsort(gaps, kind="stable")
    gaps, med = gaps[order], isotonic_regression(med[order]).x
    if not med[0] > 0:  # nothing to be relative to
        return lambda _gap_s: 1.0
    base = float(med[0])
    xs = np.log1p(gaps * 1e3)
    fs = med / base
    xs_l, fs_l = [float(v) for v in xs], [float(v) for v in fs]

    def factor(gap_s: float) -> float:
        return float(np.interp(math.log1p(max(gap_s, 0.0) * 1e3), xs_l, fs_l))

    return factor
