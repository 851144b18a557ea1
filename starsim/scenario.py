"""The scenario: typed schema (the single source of truth) and YAML loading with overrides.

The format is documented field by field in ``scenarios/README.md``; the ``description``
of each field below is the same text, so ``starsim schema`` prints it too.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import types
from bisect import bisect_right
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .acceptance import Acceptance, ByCategory, Marginal, Shape
from .distributions import Dist, Profile
from .errors import ScenarioError
from .yaml_files import parse_yaml, read_yaml

# -0.0 passes ge=0 but numpy refuses it as a scale (exponential(-0.0)): + 0.0 makes it 0.0
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(lambda v: v + 0.0)]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]

MODES = ("star", "one_for_one", "autoregressive")

# Sizes a run is refused above, before any work: each is far beyond a real deployment and
# below what exhausts a workstation (a simulated round keeps ~0.7 kB; 1,000 targets for one
# simulated hour take ~15 s and 0.6 GB).
MAX_UNITS = 100_000  # targets in all, and units of a device pool
MAX_TREE_TOP_K, MAX_TREE_DEPTH, MAX_TREE_TOKENS = 1_000, 64, 4_096
MAX_DURATION_S = 1e6  # 11.6 simulated days
MAX_CPU = 4095  # a core number (Linux's default NR_CPUS ceiling is 8192; none has more cores)
Core = Annotated[int, Field(ge=0, le=MAX_CPU)]
MAX_WINDOWS = 10_000_000  # duration_s / window_s: the idle-ratio series has one value per window
MIN_WINDOW_S = 1e-6
MAX_PROMPTS = 1_000_000  # a closed loop's prompt set is drawn up front
MAX_RATE_PER_S = 1e6  # open-loop arrivals
# 1 GiB per token (a 405B model's KV holds ~0.5 MB) and per message header: times 10M tokens
# still fits the 64-bit byte counts of the tables
MAX_BYTES_PER_TOKEN = 2**30


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)


# --------------------------------------------------------------------------- devices


# the draft server's features, which only mode star has (the validator's order)
SERVER_ONLY = ("draft.fabric.servers", "draft.fabric.failures", "draft.adaptive.policy", "draft.pipeline",
               "draft.batch.max")
# and each one's value when it is off (the defaults): what a scenario outside a star has
SERVER_OFF = dict(zip(SERVER_ONLY, (1, (), "fixed", False, 1)))


class Device(_Model):
    """A pool of identical accelerators. Instances placed on the same unit share it."""

    type: str = Field("generic", description="free-text label, e.g. A100-80GB or cpu")
    count: int = Field(1, ge=1, le=MAX_UNITS, description="number of identical units in the pool")
    gpus: int = Field(1, ge=1, le=4096, description="accelerators one unit holds (e.g. 8 for a tensor-parallel-8 "
                      "target): what per-GPU answers count")
    cores: int | None = Field(
        None,
        ge=1,
        description="the pool's units share this many cores: with k busy tasks on the pool, each runs at "
        "min(1, cores/k) of its speed (processor sharing; e.g. processes on one CPU host); roles placed on "
        "one unit still take turns on it (slots); null: units are independent",
    )
    torch: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda|cuda:\d+)$",
        description="what `starsim execute` runs this pool's units on: cpu, cuda (unit k on cuda:k) or "
        "cuda:K (every unit on GPU K)",
    )
    slots: int = Field(
        1,
        ge=1,
        description="tasks one unit runs at once without slowing down; co-located work "
        "beyond this queues (contention, not free parallelism)",
    )
    cpus: list[Core | list[Core]] | None = Field(
        None,
        description="the CPU cores each unit's processes run on in `starsim execute` (and `calibrate --cpus`): "
        "one entry per unit, a core or a list of cores, e.g. [0] or [[0, 1]]; the roles on one unit then also "
        "take turns on it, first come first served, as the simulator has them. null: the OS places them",
    )

    @model_validator(mode="after")
    def _cpus_per_unit(self):
        if self.cpus is not None and len(self.cpus) != self.count:
            raise ValueError(f"cpus: one entry per unit ({self.count}), got {len(self.cpus)}")
        if self.cpus is not None and any(isinstance(c, list) and not c for c in self.cpus):
            raise ValueError("cpus: a unit's list of cores is empty")
        return self

    def unit_cpus(self, unit: int) -> frozenset[int] | None:
        """The cores unit ``unit`` is declared on (None: not declared)."""
        if self.cpus is None:
            return None
        c = self.cpus[unit]
        return frozenset(c if isinstance(c, list) else [c])


_DEVICE_REF = re.compile(r"^(?P<pool>[A-Za-z_][\w\-.]*)(\[(?P<unit>\d+)\])?$")


def parse_device_ref(ref: str) -> tuple[str, int | None]:
    """``"a100"`` -> ``("a100", None)`` (round-robin over units); ``"a100[2]"`` -> unit 2."""
    m = _DEVICE_REF.match(ref)
    if not m:
        raise ValueError(f"device reference {ref!r} is not NAME or NAME[UNIT]")
    unit = m.group("unit")
    return m.group("pool"), (int(unit) if unit is not None else None)


# --------------------------------------------------------------------------- draft


class Tree(_Model):
    """EAGLE-2 style token tree: ``top_k`` children per node, ``depth`` steps, then the
    best ``tokens`` nodes are kept (the root is not counted)."""

    top_k: int = Field(10, ge=1, le=MAX_TREE_TOP_K)
    depth: int = Field(5, ge=1, le=MAX_TREE_DEPTH)
    tokens: int = Field(59, ge=1, le=MAX_TREE_TOKENS)

    @field_validator("tokens")
    @classmethod
    def _fits(cls, tokens: int, info: ValidationInfo) -> int:
        # A field validator (not a model one) so the error names draft.tree.tokens.
        top_k, depth = info.data.get("top_k"), info.data.get("depth")
        if top_k is None or depth is None:  # already reported
            return tokens
        most, level = 0, 1
        for _ in range(depth):  # stops once past tokens: top_k**depth may have hundreds of digits
            level *= top_k
            most += level
            if most >= tokens:
                break
        if tokens > most:
            raise ValueError(f"tokens={tokens} exceeds the {most} nodes a top_k={top_k}, depth={depth} tree can have")
        if tokens < depth:
            raise ValueError(f"tokens={tokens} must be >= depth={depth}")
        return tokens


    def tokens_at(self, depth: int) -> int:
        """Tree tokens of a round drafted ``depth`` deep (adaptive speculation): the tree's
        tokens in proportion to depth, at least one per level, at most what ``top_k`` allows."""
        if depth >= self.depth:
            return self.tokens
        if depth <= 0:
            return 0
        most = sum(self.top_k**i for i in range(1, depth + 1))
        return max(depth, min(most, round(self.tokens * depth / self.depth)))

    @classmethod
    def problem(cls, top_k: int, depth: int, tokens: int) -> str | None:
        """Why ``(top_k, depth, tokens)`` is not a tree a scenario accepts, in one line (None: it is)."""
        try:
            cls(top_k=top_k, depth=depth, tokens=tokens)
        except ValidationError as e:
            return e.errors()[0]["msg"].removeprefix("Value error, ")
        return None

    def shape(self, depth: int | None = None) -> Shape:
        """The tree of a round drafted ``depth`` deep (None: the whole tree), as acceptance sees it."""
        d = self.depth if depth is None else depth
        return Shape(self.top_k, d, self.tokens_at(d))


class Batching(_Model):
    """Batched drafting: the engine drafts for several waiting targets in one forward."""

    max: int = Field(1, ge=1, description="most tasks drafted in one batched forward (1: one at a time, as StarSD)")
    window_s: NonNeg = Field(
        0.0, description="with fewer than max tasks waiting, wait up to this long for more before starting"
    )
    time: Dist | None = Field(
        None,
        description="one batched round: tokens = tasks in the batch, context = the longest context, depth = tree "
        "depth (e.g. a profile's draft_batched op); required when max > 1",
    )

    @model_validator(mode="after")
    def _needs_time(self):
        if self.max > 1 and self.time is None:
            raise ValueError("batch.max > 1 needs batch.time, the cost of one batched round")
        return self


def _registered(what: str, registry: dict, name: str) -> str:
    """``name`` if the registry has it (policies, pairings, controllers), else the error that lists them."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; expected one of: {', '.join(sorted(registry))}")
    return name


class DraftFailure(_Model):
    """A draft server of the fabric stops serving ``at_s`` seconds into the run."""

    server: int = Field(ge=0, description="the draft server's index (0-based)")
    at_s: NonNeg = Field(description="seconds after the run's start")


class Fabric(_Model):
    """M-for-N: several draft servers, each target paired with one (see starsim/pairing.py)."""

    servers: int = Field(
        1, ge=1,
        description="draft servers, each a draft engine on a unit of draft.device's pool (NAME[k]: units "
        "k, k+1, ...; NAME: the pool's next units round-robin, before the targets'); more servers than units "
        "share them",
    )
    pairing: str = Field(
        "static",
        description="how a target picks its server, at each request's start and when its server fails "
        "(registry name: static, least_loaded, power_of_two)",
    )
    repair_queue: int | None = Field(
        None, ge=0,
        description="saturation: a target leaves its server at a request's start when more than this many "
        "tasks wait in that server's queue (null: never)",
    )
    failures: list[DraftFailure] = Field(
        default_factory=list,
        description="draft servers that fail during the run: their targets re-pair at once and re-encode their "
        "context on the new server (simulator and real backend)",
    )

    @field_validator("pairing")
    @classmethod
    def _known_pairing(cls, v: str) -> str:
        from .pairing import PAIRINGS

        return _registered("pairing", PAIRINGS, v)

    @model_validator(mode="after")
    def _servers_exist(self):
        for f in self.failures:
            if f.server >= self.servers:
                raise ValueError(f"failures: server {f.server} out of range (servers: {self.servers})")
        return self


class Adaptive(_Model):
    """Adaptive speculation: each round's tree depth (0: no speculation) chosen per target."""

    policy: str = Field(
        "fixed",
        description="fixed: every round drafts draft.tree; goodput: the depth (0..tree.depth) with the most "
        "expected tokens per second of round, from this target's observed acceptance and round times "
        "(registry name)",
    )
    probe_every: int = Field(
        16, ge=1,
        description="goodput: after this many rounds without speculation, one round at depth 1 re-measures "
        "acceptance (else a collapse would be permanent)",
    )
    smoothing: float = Field(
        0.1, gt=0, le=1, allow_inf_nan=False,
        description="goodput: weight of the newest round in the running estimates (exponential average)",
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from .adaptive import CONTROLLERS

        return _registered("adaptive policy", CONTROLLERS, v)


class Draft(_Model):
    device: str = Field(description="device reference NAME or NAME[UNIT]")
    time: Dist | None = Field(
        None,
        description="cost of drafting one tree, excluding prefix encoding; evaluated with "
        "tokens = tree tokens, context = context length, depth = tree depth",
    )
    round_time: Dist | None = Field(
        None,
        description="instead of time + encode_per_token_s: one whole round, encoding included; "
        "tokens = new prefix tokens to encode, context = context length, depth = tree depth "
        "(e.g. a profile's draft_round op)",
    )
    idle_slowdown: bool | None = Field(
        None,
        description="scale each round by the warm/cold curve (draft_idle) of the round_time profile, "
        "from the idle gap before it; default: on when that profile has the curve",
    )
    encode_per_token_s: NonNeg = Field(
        0.0,
        description="cost per token encoded into the tag's draft KV cache (new tokens only "
        "with prefix_cache, the whole context without)",
    )
    prefix_cache: bool = Field(True, description="encode only tokens not yet in the tag's KV cache")
    tree: Tree = Field(default_factory=Tree)
    policy: str = Field("fifo", description="engine scheduling policy (registry name)")
    batch: Batching = Field(default_factory=Batching, description="batched drafting (max 1: off)")
    fabric: Fabric = Field(default_factory=Fabric, description="M-for-N draft fabric (servers 1: one draft)")
    adaptive: Adaptive = Field(default_factory=Adaptive, description="adaptive speculation depth per round")
    pipeline: bool = Field(
        False,
        description="pipelined drafting (PEARL-like): right after a target's tree, the engine drafts its next "
        "one assuming the whole tree path is accepted; kept on a hit, discarded (wasted draft time) on a miss",
    )
    kv_bytes_per_token: int = Field(
        0, ge=0, le=MAX_BYTES_PER_TOKEN, description="draft KV bytes held per cached token"
    )
    memory_bytes: int | None = Field(
        None, ge=1,
        description="draft KV memory for the tags' caches: when they outgrow it, the least recently used tags "
        "are evicted and re-encode their whole context on their next round (null: unlimited)",
    )
    parse_time: Dist = Field(
        0.0,
        description="communication thread: receive and parse one DRAFT_REQUEST (on the draft's host "
        "cores when its pool has them, beside the engine's work; a plain delay otherwise)",
    )
    serialize_time: Dist = Field(0.0, description="communication thread: build and send one reply (as parse_time)")
    needs_hidden_states: bool = Field(
        True, description="the draft needs the target's hidden states (EAGLE): they travel up"
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from .policies import POLICIES

        return _registered("policy", POLICIES, v)

    @model_validator(mode="after")
    def _round_spec(self):
        if (self.time is None) == (self.round_time is None):
            raise ValueError("give exactly one of draft.time (tree only) and draft.round_time (whole round)")
        rt = self.round_time
        if rt is not None and self.encode_per_token_s:
            raise ValueError("encode_per_token_s must be 0 with round_time: the round includes encoding")
        curve = isinstance(rt, Profile) and "draft_idle" in rt.file.ops
        if self.idle_slowdown and not curve:
            raise ValueError("idle_slowdown needs round_time to be a profile with a draft_idle measurement")
        if isinstance(rt, Profile):
            shape = rt.file.ops[rt.op].fixed.get("tree")
            mine = {"top_k": self.tree.top_k, "depth": self.tree.depth, "tokens": self.tree.tokens}
            if shape and dict(shape) != mine:
                raise ValueError(
                    f"draft.tree {mine} differs from the tree the profile's {rt.op} was measured with {dict(shape)}; "
                    "calibrate with --tree, or use draft.time with a draft_step-based model"
                )
        return self

    @property
    def warm_cold(self):
        """The idle-gap slowdown factor function, or None when off."""
        rt = self.round_time
        if self.idle_slowdown is False or not isinstance(rt, Profile):
            return None
        from .profiles import idle_factor

        return idle_factor(rt.file)

    def mean_round(self, new_tokens: float, context: float, depth: int | None = None) -> float:
        """Mean engine time of one round that encodes ``new_tokens`` at ``context`` (tree
        ``depth`` deep: the scenario's tree when None)."""
        d = self.tree.depth if depth is None else depth
        if self.round_time is not None:
            return self.round_time.mean(new_tokens, context, d)
        return self.time.mean(self.tree.tokens_at(d), context, d) + self.encode_per_token_s * new_tokens


# --------------------------------------------------------------------------- targets


class LinkDirection(_Model):
    latency_s: NonNeg = Field(0.0, description="one-way propagation latency")
    bandwidth_bps: Pos | None = Field(None, description="bits per second; null = unlimited")
    jitter: Dist = Field(0.0, description="extra random delay added to each message")

    def mean_time(self, nbytes: float) -> float:
        tx = 0.0 if self.bandwidth_bps is None else nbytes * 8.0 / self.bandwidth_bps
        return self.latency_s + tx + self.jitter.mean()


class Link(_Model):
    """Per-target network path. ``latency_s``/``bandwidth_bps``/``jitter`` at this level are a
    shorthand for both directions; ``up`` (target -> draft) and ``down`` override them."""

    SHORTHAND: ClassVar[tuple[str, ...]] = ("latency_s", "bandwidth_bps", "jitter")

    up: LinkDirection = Field(default_factory=LinkDirection)
    down: LinkDirection = Field(default_factory=LinkDirection)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        short = {k: data[k] for k in cls.SHORTHAND if k in data}
        if not short:
            return data
        out = {k: v for k, v in data.items() if k not in short}
        for d in ("up", "down"):
            given = out.get(d) or {}
            if isinstance(given, dict):
                out[d] = {**short, **given}
        return out


class Payload(_Model):
    """Message sizes, following the protocol: up = accepted token ids (+ hidden states),
    down = tree token ids + parent indices + tree mask."""

    header_bytes: int = Field(64, ge=0, le=MAX_BYTES_PER_TOKEN)
    token_bytes: int = Field(4, ge=0, le=MAX_BYTES_PER_TOKEN, description="bytes per token id")
    hidden_bytes_per_token: int = Field(
        0, ge=0, le=MAX_BYTES_PER_TOKEN, description="hidden state bytes per token sent up (e.g. 4096 x fp16 = 8192)"
    )
    tree_mask: bool = Field(True, description="send the tokens x tokens tree mask (1 bit each)")

    def bytes_up(self, new_tokens: int, hidden: bool) -> int:
        per = self.token_bytes + (self.hidden_bytes_per_token if hidden else 0)
        return self.header_bytes + new_tokens * per

    def bytes_down(self, tree_tokens: int) -> int:
        mask = (tree_tokens * tree_tokens + 7) // 8 if self.tree_mask else 0
        return self.header_bytes + tree_tokens * (self.token_bytes + 4) + mask


MAX_SEQS = 4096  # running sequences per target (vLLM's max_num_seqs defaults to 256 or 1024)
MAX_KV_TOKENS = 10**10


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
        from .streams import draws, lognormal_params

        mean = self.mean_fn()
        if self.cv == 0:
            return mean
        nxt = draws(rng, "lognormal", *lognormal_params(1.0, self.cv))
        return lambda shape: mean(shape) * nxt()


class Serving(_Model):
    """A target that serves many requests at once, as vLLM's scheduler does (continuous
    batching): each engine step schedules its running sequences first (in admission order),
    then admits queued requests (first come, first served) while a slot, the step's token
    budget and KV capacity allow; all of it runs as one forward priced by ``step_time``.
    Prefill is chunked to the budget. When KV runs out mid-generation, ``on_kv_full:
    preempt`` evicts the most recently admitted sequence, which later recomputes its whole
    context (vLLM's preemption by recompute); ``wait`` reserves each request's whole length
    at admission instead, so nothing is ever preempted. Absent: one request at a time, each
    op priced by the group's prefill/verify/decode times (StarSD's target)."""

    max_seqs: int = Field(1, ge=1, le=MAX_SEQS, description="running sequences at once (vLLM max_num_seqs)")
    max_batched_tokens: int | None = Field(
        None, ge=1, le=MAX_KV_TOKENS,
        description="tokens one step may hold: prefill chunks share it with decode and verify tokens "
        "(vLLM max_num_batched_tokens; null: no limit, prompts are never chunked)",
    )
    kv_capacity_tokens: int | None = Field(
        None, ge=1, le=MAX_KV_TOKENS, description="KV cache slots, in tokens, over all sequences (null: unlimited)"
    )
    kv_capacity_bytes: int | None = Field(
        None, ge=1, description="the same in bytes (needs kv_bytes_per_token); give one or the other"
    )
    kv_bytes_per_token: int | None = Field(
        None, ge=1, le=MAX_BYTES_PER_TOKEN, description="the target model's KV bytes per token (all layers)"
    )
    on_kv_full: Literal["preempt", "wait"] = Field(
        "preempt", description="preempt: recompute the latest admitted sequence later (vLLM); wait: reserve "
        "each request's whole length at admission, never preempt",
    )
    step_time: StepTime | None = Field(
        None, description="one engine step (required when max_seqs > 1); absent: each op priced by the group's "
        "prefill_time, verify_time and decode_time, as a target without serving"
    )

    @model_validator(mode="after")
    def _kv(self):
        if self.kv_capacity_tokens is not None and self.kv_capacity_bytes is not None:
            raise ValueError("give kv_capacity_tokens or kv_capacity_bytes, not both")
        if self.kv_capacity_bytes is not None and self.kv_bytes_per_token is None:
            raise ValueError("kv_capacity_bytes needs kv_bytes_per_token (the target model's KV bytes per token)")
        if self.max_seqs > 1 and self.step_time is None:
            raise ValueError("max_seqs > 1 needs step_time, the cost of one batched engine step")
        return self

    @property
    def kv_tokens(self) -> int | None:
        """KV capacity in tokens (None: unlimited)."""
        if self.kv_capacity_bytes is not None:
            return self.kv_capacity_bytes // self.kv_bytes_per_token
        return self.kv_capacity_tokens


class TargetGroup(_Model):
    name: str | None = Field(None, description="group label; instances are NAME-0, NAME-1, ...")
    count: int = Field(1, ge=1, le=MAX_UNITS)
    device: str = Field(description="device reference; a pool's units are assigned round-robin")
    verify_time: Dist = Field(
        description="one tree verification; tokens = tree tokens + 1 (root), context = context length"
    )
    prefill_time: Dist = Field(0.0, description="prompt prefill; tokens = prompt tokens")
    decode_time: Dist | None = Field(
        None,
        description="one autoregressive step (mode autoregressive); tokens = 1, context; "
        "defaults to verify_time at tokens = 1",
    )
    link: Link = Field(default_factory=Link)
    payload: Payload = Field(default_factory=Payload)
    weight: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="share of the draft under the wfq policy (rounds in proportion to weight under saturation)",
    )
    tpot_slo_s: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="time-per-output-token objective of each request (s/token): the edf policy serves the "
        "target closest to missing it first; the summary reports each target's attainment",
    )
    send_time: Dist = Field(
        0.0,
        description="the target's own work per round to build and send a DRAFT_REQUEST (its CPU "
        "share of the messaging stack): on its device unit, sharing the host's cores when the pool has them",
    )
    receive_time: Dist = Field(
        0.0, description="the target's own work per round to receive and parse a DRAFT_REPLY (as send_time)"
    )
    idle_slowdown: bool | None = Field(
        None,
        description="scale each verify by the warm/cold curve (verify_idle) of the verify_time profile, "
        "from the time since this target's last verify; default: on when that profile has the curve",
    )
    serving: Serving | None = Field(
        None, description="serve many requests at once (continuous batching); absent: one request at a time"
    )

    @model_validator(mode="after")
    def _idle_curve(self):
        vt = self.verify_time
        if self.idle_slowdown and not (isinstance(vt, Profile) and "verify_idle" in vt.file.ops):
            raise ValueError("idle_slowdown needs verify_time to be a profile with a verify_idle measurement")
        return self

    @property
    def warm_cold(self):
        """The verify's idle-gap slowdown factor function, or None when off."""
        vt = self.verify_time
        if self.idle_slowdown is False or not isinstance(vt, Profile):
            return None
        from .profiles import idle_factor

        return idle_factor(vt.file, "verify_idle")


# --------------------------------------------------------------------------- workload


def _resolve_path(v: str | None, info: ValidationInfo) -> str | None:
    """Relative paths are relative to the scenario file; the file must exist."""
    if v is None:
        return v
    base = Path((info.context or {}).get("base_dir", "."))
    p = Path(v).expanduser()
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise ValueError(f"file not found: {p}")
    return str(p.resolve())


class _Lengths(_Model):
    prompt_tokens: Dist = Field(128, description="prompt length in tokens")
    output_tokens: Dist = Field(256, description="tokens to generate per request")


class ClosedLoop(_Lengths):
    """Each target walks a prompt set in order, one request at a time (the reference setup)."""

    kind: Literal["closed"] = "closed"
    prompts: int = Field(80, ge=1, le=MAX_PROMPTS, description="size of the prompt set")
    concurrency: int = Field(
        1, ge=1, le=MAX_SEQS,
        description="users per target, each with one request at a time, walking the prompt set together "
        "(a serving benchmark's --max-concurrency, per target); more than 1 needs serving targets",
    )
    stagger_s: NonNeg = Field(
        0.0, description="user k of a target sends its first request k * stagger_s after the start (a benchmark's "
        "ramp-up: users out of step, as a long run's are); 0: all at once",
    )
    lengths_file: str | None = Field(
        None,
        description="CSV with columns prompt_tokens,output_tokens (one row per prompt); "
        "replaces the length distributions",
    )
    prompts_jsonl: str | None = Field(
        None,
        description="MT-Bench style JSONL (field turns[0]); prompt lengths estimated from the "
        "first turn's text; output lengths still from output_tokens",
    )
    pause: Dist | None = Field(None, description="random pause between a target's prompts (bursty)")
    repeat: bool = Field(True, description="start the prompt set again when done")

    _check_lengths = field_validator("lengths_file", "prompts_jsonl")(_resolve_path)


class Poisson(_Lengths):
    kind: Literal["poisson"]
    rate_per_s: Pos = Field(le=MAX_RATE_PER_S)
    router: Literal["first_free", "round_robin", "least_outstanding"] = Field(
        "first_free",
        description="which target an arrival goes to: first_free (one fleet queue; a target takes the next "
        "arrival when it has a free slot), round_robin, least_outstanding (fewest running + queued; the "
        "last two queue at each target and need serving targets)",
    )


class GammaArrivals(_Lengths):
    """Gamma inter-arrivals with mean 1/rate and coefficient of variation ``cv``
    (cv = 1 is Poisson; cv > 1 is bursty)."""

    kind: Literal["gamma"]
    rate_per_s: Pos = Field(le=MAX_RATE_PER_S)
    cv: Pos = 1.0
    router: Literal["first_free", "round_robin", "least_outstanding"] = Field(
        "first_free",
        description="which target an arrival goes to: first_free (one fleet queue; a target takes the next "
        "arrival when it has a free slot), round_robin, least_outstanding (fewest running + queued; the "
        "last two queue at each target and need serving targets)",
    )


class TraceReplay(_Model):
    """Replay an Azure LLM inference trace CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""

    kind: Literal["trace"]
    path: str
    time_scale: Pos = Field(1.0, description="multiply inter-arrival times by this")
    start_row: int = Field(0, ge=0)
    max_rows: int | None = Field(None, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=1, description="clip context tokens")
    max_output_tokens: int | None = Field(None, ge=1, description="clip generated tokens")
    router: Literal["first_free", "round_robin", "least_outstanding"] = Field(
        "first_free",
        description="which target an arrival goes to: first_free (one fleet queue; a target takes the next "
        "arrival when it has a free slot), round_robin, least_outstanding (fewest running + queued; the "
        "last two queue at each target and need serving targets)",
    )

    _check_path = field_validator("path")(_resolve_path)


Workload = Annotated[
    ClosedLoop | Poisson | GammaArrivals | TraceReplay, Field(discriminator="kind")
]
WORKLOAD_KINDS = ("closed", "poisson", "gamma", "trace")


# --------------------------------------------------------------------------- scenario


class StopDraft(_Model):
    """Fault drill: the draft server goes away ``at_s`` seconds into the run."""

    kind: Literal["stop_draft"]
    at_s: NonNeg = Field(description="seconds after the run's start")


class KillTarget(_Model):
    """Fault drill: target instance ``target`` is killed (SIGKILL) ``at_s`` seconds into the run."""

    kind: Literal["kill_target"]
    target: int = Field(ge=0, description="the target instance's index (0-based, in file order)")
    at_s: NonNeg = Field(description="seconds after the run's start")


Fault = Annotated[StopDraft | KillTarget, Field(discriminator="kind")]


def _resolve_dir(v: str | None, info: ValidationInfo) -> str | None:
    """Relative to the scenario file; checked by the real backend when it runs (a pair may be built later)."""
    if v is None:
        return v
    base = Path((info.context or {}).get("base_dir", "."))
    p = Path(v).expanduser()
    return str((p if p.is_absolute() else base / p).resolve())


class PretrainedModel(_Model):
    """A local Hugging Face model (weights on disk; no download)."""

    kind: Literal["pretrained"]
    path: str = Field(description="model directory (config.json and weights), relative to the scenario file")
    gguf_file: str | None = Field(None, description="a GGUF file in that directory to load instead (needs `gguf`)")

    _check_path = field_validator("path")(_resolve_dir)


class SpecModel(_Model):
    """A calibration spec's network with random weights: real timing at any scale, no weights needed
    (acceptance is whatever such a pair measures, near zero)."""

    kind: Literal["spec"]
    spec: str = Field(description="a model spec name (models/specs, as `starsim calibrate compute --spec`) or file")
    seed: int = Field(0, ge=0, description="weight initialisation seed")

    @field_validator("spec")
    @classmethod
    def _spec_file(cls, v: str, info: ValidationInfo) -> str:
        return _resolve_dir(v, info) if v.endswith((".yaml", ".yml")) else v  # a file, relative to the scenario


ModelSource = Annotated[PretrainedModel | SpecModel, Field(discriminator="kind")]


class Real(_Model):
    """The real backend's side of a scenario: which models run, and how."""

    pair: str | None = Field(
        None,
        description="directory of a draft/target pair (target/, draft/, tokenizer.json), e.g. one built by "
        "`starsim models build-pair`; relative to the scenario file",
    )
    target_model: ModelSource | None = Field(None, description="the target, when not from `pair`")
    draft_model: ModelSource | None = Field(
        None, description="the draft, when not from `pair` (a spec's draft may be an EAGLE head)"
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="weights and activations; auto: float32 on a CPU, on a GPU the spec's dtype or the "
        "pretrained model's own",
    )
    threads: int = Field(1, ge=1, description="torch threads of each process (the draft server and every target)")
    temperature: NonNeg = Field(
        0.0,
        description="0: greedy decoding (outputs equal the target's own greedy ones); > 0: speculative "
        "sampling at this temperature (outputs distributed as the target's own sampling)",
    )
    timeout_s: Pos = Field(60.0, description="how long a target waits for a draft before it gives up on the server")
    max_wall_s: Pos = Field(600.0, description="stop the run after this much wall time, finished or not")
    emulate_link: bool = Field(
        True,
        description="impose each target's link (latency, bandwidth, jitter; both directions) on its messages, "
        "on top of the real path's own time",
    )
    faults: list[Fault] = Field(
        default_factory=list,
        description="fault drills: stop the draft server (targets go on autoregressively) or kill a target "
        "process, at a time into the run",
    )

    _check_pair = field_validator("pair")(_resolve_dir)

    @model_validator(mode="after")
    def _one_source(self):
        if self.pair is None and self.target_model is None:
            raise ValueError("give real.pair, or real.target_model (and real.draft_model for speculation)")
        return self


def _constant(spec) -> float | None:
    """The value of a length spec that is a constant (None: it varies)."""
    return spec.value if getattr(spec, "kind", None) == "constant" else None


def _serving_problems(sc: Scenario) -> list[tuple[str, str]]:
    """Serving targets' cross-field checks: a step budget that holds one sequence's tree, KV
    that holds one request, the draft's batched cost, the features not modelled at batch, and
    the workloads (concurrency, routers) that need every target to serve."""
    out: list[tuple[str, str]] = []
    d, w = sc.draft, sc.workload
    spec = sc.mode != "autoregressive"
    per_round = d.tree.tokens + 1 if spec else 1
    lengths = None
    if isinstance(w, ClosedLoop) and w.lengths_file is None and w.prompts_jsonl is None:
        p, o = _constant(w.prompt_tokens), _constant(w.output_tokens)
        lengths = (p, o) if p is not None and o is not None else None
    batched = False
    for i, g in enumerate(sc.targets):
        sv = g.serving
        if sv is None:
            continue
        path = f"targets.{i}.serving"
        batched |= sv.max_seqs > 1
        if sv.max_batched_tokens is not None and sv.max_batched_tokens < per_round:
            out.append((f"{path}.max_batched_tokens", f"{sv.max_batched_tokens} is below one sequence's step "
                        f"({per_round} tokens: {'the tree and its root' if spec else 'one decode token'})"))
        cap = sv.kv_tokens
        if cap is not None and lengths is not None and cap < sum(lengths) + per_round:
            field = "kv_capacity_bytes" if sv.kv_capacity_bytes is not None else "kv_capacity_tokens"
            out.append((f"{path}.{field}", f"{cap} tokens of KV cannot hold one request ({int(lengths[0])} prompt + "
                        f"{int(lengths[1])} output + {per_round} for a step's tokens)"))
    if batched and sc.mode != "autoregressive" and d.batch.time is None:
        out.append(("draft.batch.time", "targets with serving.max_seqs > 1 send one draft request for all their "
                    "sequences: the draft needs batch.time, the cost of a batched round"))
    serving = [g.serving is not None for g in sc.targets]
    if any(serving) and sc.mode == "star":
        if d.adaptive.policy != "fixed":
            out.append(("draft.adaptive.policy", "not modelled with serving targets yet (targets.*.serving)"))
    if not all(serving):
        if not sc.record_rounds:
            out.append(("record_rounds", "false needs every target group to serve (targets.*.serving): the steps "
                        "table carries the tokens"))
        if isinstance(w, ClosedLoop) and w.concurrency > 1:
            out.append(("workload.concurrency", "more than one request at a time per target needs every target "
                        "group to serve (targets.*.serving)"))
        if getattr(w, "router", "first_free") != "first_free":
            out.append(("workload.router", f"{w.router} queues requests at each target: every target group "
                        "must serve (targets.*.serving)"))
    return out


class Scenario(_Model):
    name: str = Field("scenario", description="a label used in outputs")
    description: str = ""
    seed: int = Field(0, ge=0, description="one seed drives every random stream")
    mode: Literal["star", "one_for_one", "autoregressive"] = Field(
        "star",
        description="star: one draft serves all targets (StarSD); one_for_one: each target "
        "has its own draft co-located on its device; autoregressive: no speculation",
    )
    duration_s: Pos | None = Field(None, description="simulated time horizon")
    max_requests: int | None = Field(None, ge=1, description="stop after this many requests")
    warmup_s: NonNeg = Field(0.0, description="records before this time are excluded from statistics")
    cooldown_s: NonNeg = Field(0.0, description="records in the last cooldown_s are excluded")
    window_s: Pos = Field(0.2, description="idle-ratio window")
    record_rounds: bool = Field(
        True, description="one rounds row per sequence per step; false (every target group must serve): none, for "
        "fleets too large to keep them; the steps table then carries the tokens, and the summary's per-round "
        "numbers (round and hop times, queue waits, acceptance per depth, ITL, draft KV) are absent",
    )
    devices: dict[str, Device] = Field(min_length=1)
    draft: Draft
    targets: list[TargetGroup] = Field(min_length=1)
    acceptance: Acceptance = Field(default_factory=lambda: Marginal(curve=[0.8, 0.6, 0.45, 0.3, 0.2]))
    workload: Workload = Field(default_factory=ClosedLoop)
    real: Real | None = Field(
        None, description="what `starsim execute` runs for real (models, threads); the simulator ignores it"
    )

    @model_validator(mode="after")
    def _cross_checks(self):
        problems: list[tuple[str, str]] = []
        if self.duration_s is None and self.max_requests is None:
            w = self.workload
            finite = (isinstance(w, ClosedLoop) and not w.repeat) or isinstance(w, TraceReplay)
            if not finite:
                problems.append(("duration_s", "give duration_s and/or max_requests (the run must end)"))
        if self.duration_s is not None and self.duration_s > MAX_DURATION_S:
            problems.append(("duration_s", f"at most {MAX_DURATION_S:g} s (11.6 simulated days; a longer run's rows "
                                           f"would not fit in memory), got {self.duration_s:g}"))
        elif self.duration_s is not None and self.duration_s / self.window_s > MAX_WINDOWS:
            problems.append(("window_s", f"duration_s / window_s is {self.duration_s / self.window_s:.3g} idle-ratio "
                                         f"windows; at most {MAX_WINDOWS:g} (a longer window_s)"))
        if self.window_s < MIN_WINDOW_S:
            problems.append(("window_s", f"at least {MIN_WINDOW_S:g} s, got {self.window_s:g}"))
        total = sum(g.count for g in self.targets)
        if total > MAX_UNITS:
            problems.append(("targets", f"{total} targets in all; at most {MAX_UNITS:,}"))
        if self.duration_s is not None and self.warmup_s + self.cooldown_s >= self.duration_s:
            problems.append(
                ("warmup_s", f"warmup_s + cooldown_s ({self.warmup_s + self.cooldown_s}) must be "
                 f"< duration_s ({self.duration_s})")
            )
        refs = [("draft.device", self.draft.device)]
        refs += [(f"targets.{i}.device", g.device) for i, g in enumerate(self.targets)]
        for path, ref in refs:
            try:
                pool, unit = parse_device_ref(ref)
            except ValueError as e:
                problems.append((path, str(e)))
                continue
            if pool not in self.devices:
                known = ", ".join(sorted(self.devices))
                problems.append((path, f"device {pool!r} is not defined in devices (defined: {known})"))
            elif unit is not None and unit >= self.devices[pool].count:
                problems.append(
                    (path, f"unit {unit} out of range: device {pool!r} has count {self.devices[pool].count}")
                )
        if self.mode != "star":  # the draft server's features: there is no shared server otherwise
            d = self.draft
            for path, on in zip(SERVER_ONLY, (d.fabric.servers > 1, bool(d.fabric.failures),
                                              d.adaptive.policy != "fixed", d.pipeline, d.batch.max > 1)):
                if on:
                    problems.append((path, f"needs mode: star (the draft server's feature; mode is {self.mode})"))
        n = sum(g.count for g in self.targets)
        for i, fault in enumerate(self.real.faults if self.real else []):
            if isinstance(fault, KillTarget) and fault.target >= n:
                problems.append((f"real.faults.{i}.target", f"target {fault.target} out of range: the scenario "
                                 f"has {n} target instances (0..{n - 1})"))
        problems += _serving_problems(self)
        if isinstance(self.acceptance, ByCategory):
            w = self.workload
            if not (isinstance(w, ClosedLoop) and (w.prompts_jsonl or w.lengths_file)):
                problems.append(("acceptance", "kind: by_category needs the categories of a closed loop's prompts: "
                                 "workload.prompts_jsonl (records with a category, as MT-Bench's) or "
                                 "workload.lengths_file (a category column)"))
            if self.draft.adaptive.policy != "fixed":
                problems.append(("draft.adaptive.policy", "not modelled with acceptance kind: by_category yet"))
        names = [g.name for g in self.targets if g.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(("targets", f"duplicate group names: {', '.join(dup)}"))
        if problems:
            # Raised as ValueError so pydantic reports it like any other field error.
            raise ValueError("; ".join(f"@{p}@ {m}" for p, m in problems))
        return self

    # ------------------------------------------------------------------ helpers

    @property
    def n_targets(self) -> int:
        return sum(g.count for g in self.targets)

    def target_instances(self) -> list[tuple[int, str, TargetGroup]]:
        """``(index, instance name, group)`` for every target, in a fixed order."""
        out = []
        for gi, g in enumerate(self.targets):
            base = g.name or f"t{gi}"
            for k in range(g.count):
                out.append((len(out), f"{base}-{k}", g))
        return out

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def digest(self) -> str:
        """SHA-256 of the resolved scenario (canonical JSON); identifies a run's inputs.

        Files the scenario names (profiles, traces, acceptance curves) count by their content,
        not their resolved path, so the same inputs hash alike in any clone; a directory (a
        model pair) by its name and the content of its description file; a path not there by
        its name."""
        blob = json.dumps(_portable(self.to_dict()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _portable(value):
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        if p.is_file():
            return "file:" + _file_sha256(str(p), *_stamp(p))
        if p.is_dir():
            desc = next((p / n for n in ("pair.yaml", "config.json") if (p / n).is_file()), None)
            return f"dir:{p.name}" + (":" + _file_sha256(str(desc), *_stamp(desc)) if desc else "")
        return f"path:{p.name}"  # not there (yet): a pair built later, say
    return value


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """A file's content hash (cached per path, modification time and size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- loading


def apply_override(data: dict, path: str, value: Any, source: str = "--set") -> None:
    """Set ``a.b.0.c`` in a nested dict/list, creating missing mapping keys."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            n = len(node)
            if not part.isdigit() or int(part) >= n:
                has = f"the list has {n} item{'' if n == 1 else 's'}"
                raise ScenarioError(source, [(here, f"no list item {part!r}: {has}")])
            key: Any = int(part)
        elif isinstance(node, dict):
            key = part
            if not last and key not in node:
                node[key] = {}
        else:
            raise ScenarioError(
                source, [(here, f"cannot set a field inside {_short(node)}: it is not a mapping or list")]
            )
        if last:
            node[key] = value
        else:
            node = node[key]


def parse_override(text: str) -> tuple[str, Any]:
    """``"targets.0.count=8"`` -> ``("targets.0.count", 8)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ScenarioError("--set", [("", f"expected FIELD=VALUE, got {text!r}")])
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path:
        raise ScenarioError("--set", [("", f"expected FIELD=VALUE, got {text!r}")])
    value = parse_yaml(raw, "--set", field=path, prefix=f"value {raw!r} is not valid YAML") if raw.strip() else ""
    return path, value


# Turning pydantic's error locations into the field paths a user wrote: walk the model
# classes along the location, dropping the union tags pydantic inserts (``draft.time.linear.a``
# is ``draft.time.a`` in the file), and remembering which model holds the last key so an
# unknown key can be answered with the allowed ones.


def _alternatives(tp: Any) -> list:
    """An annotation's alternatives: ``Annotated`` and ``X | Y | None`` unwrapped, None dropped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _alternatives(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [a for arg in get_args(tp) for a in _alternatives(arg)]
    return [] if tp is type(None) else [tp]


def _models(alts: list) -> list[type[BaseModel]]:
    return [a for a in alts if isinstance(a, type) and issubclass(a, BaseModel)]


def _kinds(model: type[BaseModel]) -> tuple:
    f = model.model_fields.get("kind")
    return get_args(f.annotation) if f is not None else ()


def _field_type(model: type[BaseModel], key: str) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f.annotation
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    keys = [f.alias or name for name, f in model.model_fields.items()]
    return keys + list(getattr(model, "SHORTHAND", ()))


def _walk(loc: tuple, unknown_key: bool = False) -> tuple[list[str], list, list]:
    """``(path parts, alternatives holding the last part, alternatives at the end)``."""
    parts: list[str] = []
    parent: list = []
    cur: list = [Scenario]
    for i, p in enumerate(loc):
        alts = [a for c in cur for a in _alternatives(c)]
        models = _models(alts)
        if isinstance(p, str) and len(models) > 1:
            tagged = [m for m in models if p in _kinds(m)]
            if tagged:  # a discriminated union's tag, not a key in the file
                cur = tagged
                continue
        if p == "[key]":  # the error is about a mapping key itself
            continue
        nxt: list = []
        for a in alts:
            origin = get_origin(a)
            if origin is dict:
                nxt.append(get_args(a)[1])
            elif origin in (list, tuple) and isinstance(p, int):
                nxt.append(get_args(a)[0])
        if isinstance(p, str):
            nxt += [t for m in models if (t := _field_type(m, p)) is not None]
            last_unknown = unknown_key and i == len(loc) - 1
            if not nxt and not last_unknown and ("[" in p or p.startswith("function-")):
                continue  # a pydantic-internal label
        parts.append(str(p))
        parent, cur = alts, nxt
    return parts, parent, [a for c in cur for a in _alternatives(c)]


_MISSING = object()


def _lookup(data: Any, parts: list[str]) -> Any:
    node = data
    for p in parts:
        if isinstance(node, dict):
            node = node.get(p, node.get(int(p), _MISSING) if p.isdigit() else _MISSING)
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _as_written(parts: list[str], data: Any) -> list[str]:
    """Map a path in the validated form back onto what the file says."""
    # link: {latency_s: ...} is a shorthand expanded into up and down: report it once, as written.
    for i in range(1, len(parts) - 1):
        if parts[i - 1] == "link" and parts[i] in ("up", "down") and parts[i + 1] in Link.SHORTHAND:
            link, key = _lookup(data, parts[:i]), parts[i + 1]
            given = link.get(parts[i]) if isinstance(link, dict) else None
            if isinstance(link, dict) and key in link and not (isinstance(given, dict) and key in given):
                return parts[:i] + parts[i + 1:]
    # A bare number is a constant timing spec: its error is the field's, not ``.value``'s.
    if parts and parts[-1] == "value" and isinstance(_lookup(data, parts[:-1]), (int, float)):
        return parts[:-1]
    return parts


def _short(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _problems(err: ValidationError, data: Any = None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for e in err.errors():
        kind, msg, given = e["type"], e["msg"], e.get("input")
        parts, parent, alts = _walk(e["loc"], unknown_key=kind == "extra_forbidden")
        parts = _as_written(parts, data)
        path = ".".join(parts)
        if kind in ("value_error", "assertion_error"):
            msg = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
            # Cross-field checks carry their own field paths as "@path@ message".
            if msg.startswith("@"):
                for part in msg.split("; @"):
                    p, _, m = part.lstrip("@").partition("@ ")
                    out.append((p, m))
                continue
            out.append((path, msg))  # our own validators say what they got
            continue
        union = sorted({k for m in _models(alts) for k in _kinds(m)}, key=str)
        if kind == "extra_forbidden":
            allowed = [k for m in _models(parent) for k in _keys(m)]
            msg = "unknown key"
            if allowed and parts:
                near = difflib.get_close_matches(parts[-1], allowed, n=1)
                msg += f" (did you mean {near[0]!r}?)" if near else ""
                msg += f"; allowed: {', '.join(dict.fromkeys(allowed))}"
            out.append((path, msg))
            continue
        if kind == "missing":
            out.append((path, "required field is missing"))
            continue
        if kind == "union_tag_invalid":
            tags = e.get("ctx", {}).get("expected_tags", "")
            out.append((path, f"unknown kind {_short(given.get('kind'))}; expected one of: {tags}"))
            continue
        if kind == "union_tag_not_found":
            out.append((path, f"a 'kind' is required here, one of: {', '.join(union) or '?'}"))
            continue
        if e["loc"] and e["loc"][-1] == "[key]":
            msg = "keys here must be strings"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            if len(union) > 1:
                number = "a number or " if "constant" in union else ""
                msg = f"expected {number}a mapping with a 'kind' (one of: {', '.join(union)})"
            elif _models(alts):
                msg = f"expected a mapping with keys from: {', '.join(_keys(_models(alts)[0]))}"
            else:
                msg = "expected a mapping"
        elif kind in ("int_parsing", "float_parsing", "bool_parsing", "int_from_float"):
            msg = msg.split(",", 1)[0]  # "Input should be a valid integer"
        out.append((path, f"{msg} (got {_short(given)})"))
    return list(dict.fromkeys(out))


def validate_scenario(data: Any, source: str = "<scenario>", base_dir: str | Path = ".",
                      profiles: dict | None = None) -> Scenario:
    """Validate a scenario mapping; raise :class:`ScenarioError` naming field paths.
    ``profiles``: a cache of profile files read, kept by a caller that validates many
    scenarios on the same profiles (a plan: parsing a profile's YAML takes ~0.3 s)."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [("", f"expected a mapping at the top level, got {type(data).__name__}")])
    try:
        return Scenario.model_validate(data, context={"base_dir": str(base_dir), "profiles": profiles})
    except ValidationError as err:
        raise ScenarioError(source, _problems(err, data)) from None


def as_mode(scenario: Scenario, mode: str) -> Scenario:
    """The same scenario in another mode (a baseline of it): outside a star, the draft
    server's own features (``SERVER_ONLY``) are off; everything else, pools included, stays."""
    data = scenario.to_dict()
    data["mode"] = mode
    for path, off in SERVER_OFF.items() if mode != "star" else ():
        apply_override(data, path, off)
    return validate_scenario(data, source=f"{scenario.name} as {mode}")


def load_scenario(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
                  profiles: dict | None = None) -> Scenario:
    """Load a scenario YAML, apply ``--set`` style overrides, validate.

    ``overrides`` is a list of ``"field.path=value"`` strings or a ``{path: value}`` dict;
    ``profiles``: see :func:`validate_scenario`.
    """
    p = Path(path)
    source = str(path)
    data = read_yaml(p, "scenario")
    if data is None:
        raise ScenarioError(source, [("", "the file is empty")])
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for k, v in items:
        if isinstance(data, dict):
            apply_override(data, k, v, source=f"{source} (--set {k})")
    try:
        return validate_scenario(data, source=source, base_dir=p.parent, profiles=profiles)
    except ScenarioError as err:
        # Say which problems an override caused, or the user looks for them in the file.
        def origin(field: str) -> str | None:
            for k, _ in reversed(items):
                if field == k or field.startswith(k + ".") or k.startswith(field + "."):
                    return k
            return None

        causes = {origin(f) for f, _ in err.problems}
        if len(causes) == 1 and None not in causes:
            raise ScenarioError(f"{source} (--set {causes.pop()})", err.problems) from None
        tagged = [(f, m if origin(f) is None else f"{m} (set by --set {origin(f)})") for f, m in err.problems]
        raise ScenarioError(source, tagged) from None
