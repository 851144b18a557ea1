"""The draft (``draft:``): its costs, batching, the M-for-N fabric and adaptive depth."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ..distributions import Dist, Profile
from .base import NonNeg, _Model
from .limits import MAX_BYTES_PER_TOKEN
from .tree import Tree

# the draft server's features, which only mode star has (the validator's order)
SERVER_ONLY = ("draft.fabric.servers", "draft.fabric.failures", "draft.adaptive.policy", "draft.pipeline",
               "draft.batch.max")
# and each one's value when it is off (the defaults): what a scenario outside a star has
SERVER_OFF = dict(zip(SERVER_ONLY, (1, (), "fixed", False, 1)))


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
        from ..pairing import PAIRINGS

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
        from ..adaptive import CONTROLLERS

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
    turnaround_time: Dist | None = Field(
        None,
        description="the engine's own time from when it could start a task (queued, and the engine free) to "
        "when it starts it (a real server hands each task from its message thread to its engine); null: at once",
    )
    needs_hidden_states: bool = Field(
        True, description="the draft needs the target's hidden states (EAGLE): they travel up"
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from ..policies import POLICIES

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
        from ..profiles import idle_factor

        return idle_factor(rt.file)

    def mean_round(self, new_tokens: float, context: float, depth: int | None = None) -> float:
        """Mean engine time of one round that encodes ``new_tokens`` at ``context`` (tree
        ``depth`` deep: the scenario's tree when None)."""
        d = self.tree.depth if depth is None else depth
        if self.round_time is not None:
            return self.round_time.mean(new_tokens, context, d)
        return self.time.mean(self.tree.tokens_at(d), context, d) + self.encode_per_token_s * new_tokens
