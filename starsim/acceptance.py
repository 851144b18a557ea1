"""Acceptance models: how many draft tokens a target accepts in one verification round.

Semantics (read this before writing a curve):

- A **marginal** curve ``[a_1, ..., a_D]`` gives ``a_j = P(accepted >= j)``: the
  probability that the draft token at depth ``j`` of the accepted path is accepted,
  *unconditionally*. Acceptance is a prefix (position j can only be accepted if 1..j-1
  were), so a marginal curve is non-increasing. Mean accepted draft tokens per round is
  ``sum_j a_j``; each round also yields one bonus/corrected token (lossless decoding),
  so the mean tokens per round is ``1 + sum_j a_j``.
- A **conditional** curve ``[c_1, ..., c_D]`` gives ``c_j = P(accepted >= j | accepted
  >= j-1)``, the per-step rate papers often quote. It is converted once:
  ``a_j = c_1 * ... * c_j``.
- ``geometric`` with ``alpha`` is the conditional curve with every ``c_j = alpha``.

- A **ranked** table (tree-aware) gives, per depth ``d``, ``q[d][r] = P(the target's token
  after an accepted node at depth d-1 is the draft's (r+1)-th ranked candidate there)``
  (conditional on reaching that node; each row sums to at most 1, the rest is "none of the
  draft's candidates"). A tree's marginal curve then follows from its shape: the EAGLE-2
  tree is grown with each node's path probability (the product of ``q`` along it) as its
  score, ``top_k`` nodes a level, and its best ``tokens`` nodes kept; since the target's
  token at a node matches at most one child, ``a_j`` is the sum of the kept depth-j nodes'
  path probabilities (:func:`tree_marginal`). The marginal kinds above are the given-tree
  case: one tree, measured.

The number accepted is drawn **per round** (not averaged), with one uniform ``u``:
``k = #{j : a_j > u}``, which has exactly the marginal probabilities above. Positions
beyond the tree depth are never accepted; a curve shorter than the depth means zero
acceptance past its end (:meth:`_Acceptance.notices` says so in one line, as it says when
a curve is longer than the tree or was measured on another tree).
"""

from __future__ import annotations

import functools
import itertools
import math
from bisect import bisect_left
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ScenarioError
from .yaml_files import read_yaml

Prob = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Shape(NamedTuple):
    """A round's tree: ``top_k`` children per node, ``depth`` levels, ``tokens`` nodes kept
    (``scenario.Tree.shape`` gives it, for adaptive depths too)."""

    top_k: int
    depth: int
    tokens: int

    def label(self) -> str:
        return f"(top_k {self.top_k}, depth {self.depth}, {self.tokens} tokens)"


class CurveTree(BaseModel):
    """The tree a per-depth curve belongs to (measured or assumed on)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    top_k: int = Field(ge=1)
    depth: int = Field(ge=1)
    tokens: int = Field(ge=1)


def _other_tree(field: str, tree: CurveTree | None, shape: Shape) -> list[str]:
    """A curve of ``tree`` on a round of another tree: one line (nothing when it is the same or unknown)."""
    if tree is None or (tree.top_k, tree.depth, tree.tokens) == tuple(shape):
        return []
    mine = Shape(tree.top_k, tree.depth, tree.tokens)
    return [f"{field} belongs to tree {mine.label()} and this round drafts {Shape(*shape).label()}: a per-depth curve "
            "does not follow the tree, so the round accepts as the other tree did (kind: ranked follows it)"]


# a per-depth curve's tree (marginal, conditional)
CurveOn = Annotated[CurveTree | None, Field(description="the tree the curve was measured or assumed on (another tree "
                                            "gets a one-line notice; null: not said)")]


class _Acceptance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def marginal(self, shape: Shape) -> list[float]:
        """The marginal curve ``a_1..a_depth`` of a round drafting tree ``shape``."""
        raise NotImplementedError

    def mean_accepted(self, shape: Shape) -> float:
        """Mean accepted draft tokens per round (bonus token not included)."""
        return float(sum(self.marginal(shape)))

    def notices(self, shape: Shape) -> list[str]:
        """One line per thing a user may not expect of this model on tree ``shape`` (a curve
        cut to the tree's depth, zero acceptance past a curve's end, another tree's curve)."""
        return []

    def for_target(self, index: int) -> _Acceptance:
        """The model target ``index`` draws from (every target the same one, bar ``replayed``)."""
        return self

    def sampler(self, rng: np.random.Generator, shape: Shape, clock=None):
        """A closure drawing the accepted draft tokens of one round (``clock``: a function
        giving the run's time, for models that change during the run)."""
        curve = self.marginal(shape)
        if all(a in (0.0, 1.0) for a in curve):
            k = int(sum(curve))  # deterministic: skip the random draw entirely
            return lambda: k
        from .streams import draws

        draw = draws(rng, "random")
        if all(curve[j] >= curve[j + 1] for j in range(len(curve) - 1)):
            # Non-increasing (every curve a validator lets through, bar 1e-12 slack): the
            # leading run of a_j > u is all of them, so k = #{j : -a_j < -u}, found by
            # bisection in the ascending negated curve (negation is exact).
            neg = [-a for a in curve]
            return lambda: bisect_left(neg, -draw())

        def sample() -> int:
            u = draw()
            k = 0
            for a in curve:
                if a > u:
                    k += 1
                else:
                    break
            return k

        return sample


def _fit(curve: list[float], depth: int) -> list[float]:
    return [float(x) for x in curve[:depth]] + [0.0] * max(0, depth - len(curve))


def _span(a: int, b: int) -> str:
    return f"depth {a}" if a == b else f"depths {a}-{b}"


def _depth_notices(field: str, entries: int, depth: int) -> list[str]:
    """A per-depth curve of ``entries`` on a tree ``depth`` deep: what is cut or assumed."""
    if entries > depth:
        return [f"{field} has {entries} entries and the tree is {depth} deep: the entries for "
                f"{_span(depth + 1, entries)} are not used (was the curve measured on a deeper tree?)"]
    if entries < depth:
        return [f"{field} has {entries} entries and the tree is {depth} deep: {_span(entries + 1, depth)} "
                "get no acceptance (give a longer curve, or kind: ranked, which follows the tree)"]
    return []


def _curve_notices(curve: list[float], tree: CurveTree | None, shape: Shape) -> list[str]:
    """A per-depth curve on a round of ``shape``: another tree's, or cut or short of its depth."""
    return _other_tree("acceptance.curve", tree, shape) or _depth_notices("acceptance.curve", len(curve), shape.depth)


class Marginal(_Acceptance):
    """``curve[j-1] = P(accepted >= j)``; must be non-increasing."""

    kind: Literal["marginal"] = "marginal"
    curve: list[Prob] = Field(min_length=1)
    tree: CurveOn = None

    @field_validator("curve")
    @classmethod
    def _non_increasing(cls, curve: list[float]) -> list[float]:
        # A field validator so the error names acceptance.curve.
        for j in range(1, len(curve)):
            if curve[j] > curve[j - 1] + 1e-12:
                raise ValueError(
                    f"a marginal curve must be non-increasing (curve[{j}]={curve[j]} > "
                    f"curve[{j - 1}]={curve[j - 1]}); did you mean kind: conditional?"
                )
        return curve

    def marginal(self, shape):
        return _fit(self.curve, shape.depth)

    def notices(self, shape):
        return _curve_notices(self.curve, self.tree, shape)


class Conditional(_Acceptance):
    """``curve[j-1] = P(accepted >= j | accepted >= j-1)``."""

    kind: Literal["conditional"]
    curve: list[Prob] = Field(min_length=1)
    tree: CurveOn = None

    def marginal(self, shape):
        out, p = [], 1.0
        for c in self.curve:
            p *= c
            out.append(p)
        return _fit(out, shape.depth)

    def notices(self, shape):
        return _curve_notices(self.curve, self.tree, shape)


class Geometric(_Acceptance):
    """Every conditional rate equals ``alpha``: ``a_j = alpha ** j``."""

    kind: Literal["geometric"]
    alpha: Prob

    def marginal(self, shape):
        return [self.alpha**j for j in range(1, shape.depth + 1)]


Table = tuple[tuple[float, ...], ...]


def _rows(table: Table, k: int, depth_n: int) -> list[np.ndarray]:
    """Rows 1..depth_n of a per-depth table, each ``k`` wide: past the table its last row,
    past a row's end zeros."""
    out = []
    for d in range(1, depth_n + 1):
        row = np.zeros(k)
        given = table[min(d, len(table)) - 1][:k]
        row[: len(given)] = given
        out.append(row)
    return out


@functools.lru_cache(maxsize=1024)
def tree_marginal(ranked: Table, shape: Shape, confidence: Table | None = None) -> tuple[float, ...]:
    """The marginal curve of tree ``shape`` under a ranked table (module docstring).

    The tree is grown as the real drafter grows an EAGLE-2 tree (``real/speculation.py``'s
    ``_Greedy``), each node scored by the product along its path of the draft's ``confidence``
    in its rank at its depth (where none is given, the ranked table itself: a draft whose
    confidence is its acceptance): the root's ``top_k`` children, then at each level the best
    ``top_k`` of the frontier's children, and at the end the best ``tokens`` nodes (ties: the
    shallower first, so a kept node's parent is kept). A node's value is its path's product
    of ``ranked``; ``a_j`` sums the kept depth-j values. Depths past a table use its last row;
    ranks past a row's end are never accepted (nor chosen, under a confidence table).
    """
    k, depth_n, tokens = shape
    if depth_n < 1 or tokens < 1:
        return tuple([0.0] * max(depth_n, 0))
    q = _rows(ranked, k, depth_n)
    with np.errstate(divide="ignore"):
        lc = [np.log(r) for r in (_rows(confidence, k, depth_n) if confidence is not None else q)]
    score, value = lc[0], q[0]
    scores, values, depths = [score], [value], [np.full(k, 1)]
    for d in range(2, depth_n + 1):
        cand_s = (score[:, None] + lc[d - 1][None, :]).ravel()
        cand_v = (value[:, None] * q[d - 1][None, :]).ravel()
        best = np.argsort(-cand_s, kind="stable")[:k]  # the level's frontier, as the drafter's topk
        score, value = cand_s[best], cand_v[best]
        scores.append(score)
        values.append(value)
        depths.append(np.full(len(best), d))
    all_s, all_v, all_d = np.concatenate(scores), np.concatenate(values), np.concatenate(depths)
    keep = np.lexsort((all_d, -all_s))[:tokens]
    curve = np.bincount(all_d[keep] - 1, weights=all_v[keep], minlength=depth_n)
    return tuple(float(a) for a in curve)


def _ranked_rows(rows: list[list[float]]) -> list[list[float]]:
    for d, row in enumerate(rows):
        total = sum(row)
        if total > 1 + 1e-9:
            raise ValueError(f"row {d} (depth {d + 1}) sums to {total:.6g} > 1: at most one candidate "
                             "matches the target's token, so the ranks' probabilities add up to at most 1")
    return rows


def _ranked_notices(field: str, rows: list[list[float]], shape: Shape) -> list[str]:
    out = []
    if len(rows) < shape.depth:
        out.append(f"{field} has {len(rows)} rows and the tree is {shape.depth} deep: "
                   f"{_span(len(rows) + 1, shape.depth)} use the last row (extrapolated)")
    short = [d + 1 for d, r in enumerate(rows[: shape.depth]) if len(r) < shape.top_k]
    if short:
        out.append(f"{field}: top_k is {shape.top_k} but depth(s) {', '.join(map(str, short))} give fewer ranks; "
                   "the ranks past a row's end are taken as never accepted")
    return out


MIN_REACHED = 20  # a ranked row's least sample: a row of a few rounds would steer every deeper tree


def ranked_tables(counts: dict | None, min_reached: int = MIN_REACHED) -> dict:
    """The ``ranked`` and ``confidence`` tables of an acceptance file from a run's rank counts
    (``starsim.real.speculation.RankCounts.as_dict``): ``hits / reached`` per depth, for the
    leading depths reached at least ``min_reached`` times (past them the model repeats the
    last row), and the draft's confidence in its r-th candidate, the geometric mean over the
    expanded nodes. Empty without counts."""
    if not isinstance(counts, dict) or not counts.get("reached"):
        return {}
    rows = list(itertools.takewhile(lambda nr: nr[0] >= min_reached, zip(counts["reached"], counts["hits"])))
    if not rows:
        return {}
    return {
        "ranked_semantics": "ranked[d-1][r] = P(the target's token after an accepted node at depth d-1 is the draft's "
                            "(r+1)-th candidate there | that node reached), hits / reached; confidence[d-1][r] = the "
                            "draft's probability of that candidate (geometric mean over the trees' expanded nodes); "
                            "every observed greedy round of the run",
        "ranked": [[round(h / n, 6) for h in row] for n, row in rows],
        "ranked_reached": [n for n, _ in rows],
        "ranked_min_reached": min_reached,
        "confidence": [[max(1e-12, float(f"{math.exp(x / n):.6g}")) for x in row]
                       for n, row in zip(counts.get("expanded", []), counts.get("logp", [])) if n],
    }


def _table(rows) -> Table | None:
    return None if rows is None else tuple(map(tuple, rows))


class Ranked(_Acceptance):
    """Tree-aware acceptance: ``ranked[d-1][r]`` = P(the target's token after an accepted
    node at depth ``d-1`` is the draft's ``(r+1)``-th ranked candidate there), conditional on
    reaching that node; ``confidence[d-1][r]``: the draft's own probability for that candidate
    (a geometric mean over its trees), which decides which nodes a tree keeps. Any tree's
    marginal curve follows (:func:`tree_marginal`)."""

    kind: Literal["ranked"]
    ranked: list[Annotated[list[Prob], Field(min_length=1)]] = Field(
        min_length=1, description="one row per depth (1 first), one probability per rank (the draft's best first)")
    confidence: list[Annotated[list[Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]],
                               Field(min_length=1)]] | None = Field(
        None, description="the draft's probability of its r-th candidate, per depth (null: the tree is grown by "
        "`ranked` itself, as if the draft's confidence were the acceptance)")

    @field_validator("ranked")
    @classmethod
    def _sums(cls, rows: list[list[float]]) -> list[list[float]]:
        return _ranked_rows(rows)

    def marginal(self, shape):
        return list(tree_marginal(_table(self.ranked), Shape(*shape), _table(self.confidence)))

    def notices(self, shape):
        return _ranked_notices("acceptance.ranked", self.ranked, shape)


class Measured(_Acceptance):
    """What a real run measured: a file written by ``starsim acceptance RUN_DIR``. Its
    ``marginal`` curve belongs to the tree it was measured on (``measured_by.tree``) and is
    used as it is there. Where the file also holds a ``ranked`` table (greedy runs: see
    :class:`Ranked`), another tree's curve is the tree-aware model's, anchored on the
    measured tree: each depth's ``a_j`` is scaled by the measured curve over the model's on
    the measured tree (the last depth's ratio past it). The model grows one mean tree, where
    a real draft grows a tree per round from that round's confidence; the ratio carries what
    that costs at each depth (on the stdlib pair, the unanchored model is 5% high on its own
    tree)."""

    kind: Literal["measured"]
    path: str = Field(description="acceptance curve file (relative to the scenario file)")
    _curve: list[float] = PrivateAttr(default_factory=list)
    _ranked: Ranked | None = PrivateAttr(default=None)
    _tree: Shape | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo):
        base = Path((info.context or {}).get("base_dir", "."))
        p = Path(self.path).expanduser()
        p = p if p.is_absolute() else base / p
        try:
            data = read_yaml(p, "acceptance curve")
        except ScenarioError as e:
            raise ValueError(f"acceptance curve file {p}: {e.problems[0][1]}") from None
        try:
            curve = Marginal(curve=data["marginal"]).curve
            ranked = (Ranked(kind="ranked", ranked=data["ranked"], confidence=data.get("confidence"))
                      if data.get("ranked") else None)
        except ValidationError as e:
            why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"]
                            for err in e.errors())
            raise ValueError(f"{p} is not an acceptance curve file: {why}") from None
        except (KeyError, TypeError, AttributeError) as e:
            why = " ".join(str(e).split())  # one line, whatever the YAML error printed
            raise ValueError(f"{p} is not an acceptance curve file (`marginal:` list expected): {why}") from None
        tree = (data.get("measured_by") or {}).get("tree") if isinstance(data.get("measured_by"), dict) else None
        try:
            self._tree = Shape(int(tree["top_k"]), int(tree["depth"]), int(tree["tokens"])) if tree else None
        except (KeyError, TypeError, ValueError):
            self._tree = None  # an older or hand-written file: no tree to compare with
        object.__setattr__(self, "path", str(p.resolve()))
        self._curve, self._ranked = curve, ranked
        return self

    def _follows(self, shape) -> bool:
        """Whether a round of tree ``shape`` takes the ranked model (another tree than the
        one measured) rather than the measured curve itself."""
        return self._ranked is not None and self._tree is not None and tuple(self._tree) != tuple(shape)

    def marginal(self, shape):
        if not self._follows(shape):
            return _fit(self._curve, shape.depth)
        model = self._ranked.marginal(shape)
        on_measured = self._ranked.marginal(self._tree)
        ratios = [m / x if x > 0 else 1.0 for m, x in zip(_fit(self._curve, self._tree.depth), on_measured)]
        out, prev = [], 1.0
        for j, a in enumerate(model):
            prev = min(prev, 1.0, a * ratios[min(j, len(ratios) - 1)])  # a marginal curve: non-increasing
            out.append(prev)
        return out

    def notices(self, shape):
        name = Path(self.path).name
        if self._follows(shape):
            return [f"{name}: measured on tree {self._tree.label()}; this round drafts {Shape(*shape).label()}, "
                    "so its curve is the file's tree-aware (ranked) model, anchored on the measured tree",
                    *_ranked_notices(f"{name}: ranked", self._ranked.ranked, shape)]
        if self._tree is not None and tuple(self._tree) != tuple(shape):
            return [f"{name} was measured on tree {self._tree.label()} and this round drafts "
                    f"{Shape(*shape).label()}: a marginal curve does not follow the tree (measure on this tree, "
                    "or with `starsim acceptance` on a greedy real run, whose file holds the tree-aware ranked table)"]
        return _depth_notices(f"{name}: marginal", len(self._curve), shape.depth)


Steady = Annotated[Marginal | Conditional | Geometric | Ranked | Measured, Field(discriminator="kind")]


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    until_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="this phase ends at this time into the run (null: the last phase)")
    model: Steady = Field(description="the acceptance model during this phase")


class Phases(_Acceptance):
    """Acceptance that changes during the run (drift, a prompt mix that turns hard, a collapse):
    each phase's model applies until its ``until_s``; the last phase has none. The closed form
    (``starsim analyze``) uses the first phase."""

    kind: Literal["phases"]
    phases: list[Phase] = Field(min_length=1)

    @field_validator("phases")
    @classmethod
    def _ordered(cls, phases: list[Phase]) -> list[Phase]:
        ends = [p.until_s for p in phases]
        if ends[-1] is not None or any(e is None for e in ends[:-1]):
            raise ValueError("every phase but the last needs until_s, and the last must not have one")
        if any(b <= a for a, b in zip(ends[:-2], ends[1:-1])):
            raise ValueError(f"phases must end in increasing order (until_s: {ends[:-1]})")
        return phases

    def marginal(self, shape):
        return self.phases[0].model.marginal(shape)

    def notices(self, shape):
        return list(dict.fromkeys(n for p in self.phases for n in p.model.notices(shape)))

    def sampler(self, rng: np.random.Generator, shape: Shape, clock=None):
        samplers = [p.model.sampler(rng, shape) for p in self.phases]
        if clock is None:
            return samplers[0]
        ends = [p.until_s for p in self.phases[:-1]]
        return lambda: samplers[bisect_left(ends, clock())]()


class ByCategory(_Acceptance):
    """Acceptance per request: each closed-loop prompt has a category (a ``prompts_jsonl``
    record's ``category``, as MT-Bench's writing, coding, math, ..., or a ``lengths_file``'s
    ``category`` column) and its request's rounds
    draw from that category's model; a category not listed (or none) takes ``default``. The
    closed form (``starsim analyze``) weighs the categories by their share of the rounds."""

    kind: Literal["by_category"]
    models: dict[str, Steady] = Field(min_length=1, description="category -> its acceptance model")
    default: Steady | None = Field(None, description="the model of a category not listed (null: every category "
                                   "of the prompt set must be listed)")

    def marginal(self, shape, mix: dict[str, float] | None = None):
        """The curve of a round; ``mix``: category -> its weight (None: the listed categories alike)."""
        mix = mix or dict.fromkeys(self.models, 1.0)
        total = sum(mix.values())
        curves = [(w / total, self.model(c).marginal(shape)) for c, w in mix.items()]
        return [sum(w * cv[j] for w, cv in curves) for j in range(shape.depth)]

    def model(self, category: str | None) -> Steady:
        m = self.models.get(category) if category is not None else None
        if m is None and self.default is None:
            from .errors import StarsimError

            what = f"prompt category {category!r}" if category is not None else "a prompt without a category"
            raise StarsimError(f"acceptance.models: {what} (of the workload's prompts) has no model and "
                               f"acceptance.default is null (listed: {', '.join(self.models)})")
        return m if m is not None else self.default

    def notices(self, shape):
        out = [n for c, m in self.models.items() for n in m.notices(shape)]
        if self.default is not None:
            out += self.default.notices(shape)
        return list(dict.fromkeys(out))

    def samplers(self, rng: np.random.Generator, shape: Shape, categories) -> dict:
        """category -> its round sampler, for each of ``categories`` (the prompt set's), on one stream."""
        return {c: self.model(c).sampler(rng, shape) for c in dict.fromkeys(categories)}


class Replayed(_Acceptance):
    """Each target's accepted draft tokens round by round, as a run recorded them (what
    ``starsim validate`` feeds a replay, :mod:`starsim.replay`): target ``i`` takes
    ``accepted[i]`` in order, and again from its start if it runs past the end; a target
    beyond the lists, and the closed form, take their pooled marginal curve. A round is
    never given more than its tree's depth."""

    kind: Literal["replayed"]
    accepted: list[list[Annotated[int, Field(ge=0, le=1024)]]] = Field(
        min_length=1, description="per target, the accepted draft tokens of each of its rounds, in order")

    @field_validator("accepted")
    @classmethod
    def _each_has_rounds(cls, accepted: list[list[int]]) -> list[list[int]]:
        empty = [i for i, ks in enumerate(accepted) if not ks]
        if empty:
            raise ValueError(f"target {empty[0]} has no rounds: every list needs at least one")
        return accepted

    def marginal(self, shape):
        ks = np.concatenate([np.asarray(k) for k in self.accepted])
        return [float(np.mean(ks >= j)) for j in range(1, shape.depth + 1)]

    def for_target(self, index: int) -> _Acceptance:
        return Replayed(kind="replayed", accepted=[self.accepted[index]]) if index < len(self.accepted) else self

    def sampler(self, rng: np.random.Generator, shape: Shape, clock=None):
        if len(self.accepted) > 1:  # not one target's: drawn from the pooled curve
            return super().sampler(rng, shape, clock)
        rounds = itertools.cycle([min(k, shape.depth) for k in self.accepted[0]])
        return rounds.__next__


Acceptance = Annotated[Marginal | Conditional | Geometric | Ranked | Measured | Phases | ByCategory | Replayed,
                       Field(discriminator="kind")]
