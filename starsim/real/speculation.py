"""Token-tree speculative decoding with two causal LMs, greedy and lossless (torch).

The two halves the real backend puts on either side of the network:

- :class:`Drafter` (the draft server's engine): tag-indexed KV caches with prefix caching
  (only tokens not yet cached are encoded), and EAGLE-2 style tree drafting: from the root
  (the last token of the context), ``depth`` levels; each level keeps the ``top_k`` best
  nodes by cumulative log-probability and the next expands their children; finally the
  best ``tokens`` nodes of all levels are kept (ancestor-closed, since a cumulative
  log-probability only falls along a path). The cache is cropped back after each round.
- :class:`Verifier` (a target): one forward over the root and the tree with a tree
  attention mask, greedy acceptance along the tree (the longest path whose every token is
  the target's own argmax), plus the target's bonus token; the cache keeps only the
  accepted path. Every round therefore emits ``accepted + 1`` tokens, exactly those plain
  greedy decoding of the target would emit.

At ``temperature > 0`` both sides sample, and acceptance preserves the target's
distribution exactly (speculative sampling over a tree: recursive rejection sampling with
siblings drawn without replacement, as in SpecInfer / Recursive Speculative Decoding). The
draft then samples each node's children from its own distribution ``q`` (Gumbel-top-k, so
siblings come in the order sequential sampling without replacement would draw them) and
sends ``q`` with the tree, rounded to float16; both sides use that rounded ``q``. The tree
cannot be pruned by the sampled tokens' own scores (that would bias the candidates), so
each level's ``top_k`` children are shared out among the previous level's nodes before
sampling, by their cumulative probability and the sorted ``q`` of each (see
:meth:`Drafter.draft`). :func:`sample_tree_path` is the acceptance rule.

Positions follow the tree: a node at depth ``d`` under a context of ``L`` tokens sits at
position ``L - 1 + d`` (the root is ``L - 1``), as if its path had been decoded in line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..models.specs import cache_kw, crop_cache


@dataclass
class TreeDraft:
    """A drafted tree: node ``i`` has token ``tokens[i]`` and parent ``parents[i]``
    (-1: the root, i.e. the last token of the context); nodes are in breadth-first order,
    siblings in the order they were drawn. When sampled, ``probs[r]`` (float16 [vocab]) is
    the draft distribution the children of node ``prob_nodes[r]`` (-1: the root) were drawn
    from."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    probs: np.ndarray | None = None
    prob_nodes: list[int] | None = None


def tree_depths(parents: list[int]) -> list[int]:
    """Each node's depth (1 under the root) from its parent index; parents come first."""
    depths: list[int] = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def normalized(q16: np.ndarray) -> np.ndarray:
    """A float16 distribution as the float64 one both sides sample and accept with."""
    q = np.asarray(q16, dtype=np.float64)
    return q / q.sum(-1, keepdims=True)


def draw_without_replacement(q: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct tokens from ``q`` (float64, normalized), in the order sequential
    sampling without replacement draws them (Gumbel-top-k); fewer if ``q`` has less support."""
    count = min(count, int(np.count_nonzero(q)))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    with np.errstate(divide="ignore"):
        keys = np.log(q) + rng.gumbel(size=q.shape)
    top = np.argpartition(-keys, count - 1)[:count]
    return top[np.argsort(-keys[top], kind="stable")]


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One token from ``p`` (float64, sums to ~1)."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), p.shape[0] - 1))


def _children(parents: list[int]) -> dict[int, list[int]]:
    """Each node's children (-1: the root's), in tree order: the order acceptance tries them."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    return children


def sample_tree_path(p_rows: np.ndarray, tree: TreeDraft, rng: np.random.Generator) -> tuple[list[int], int]:
    """Speculative sampling over a tree; returns (accepted path of node indices, bonus token).

    ``p_rows[0]`` is the target's distribution after the root and ``p_rows[1 + i]`` after
    node ``i`` (float64, at the sampling temperature). At a node, its children are tried in
    the order drawn: child ``x`` is accepted with probability ``min(1, p(x) / q(x))``; on a
    rejection ``p`` becomes the residual ``norm(max(0, p - q))`` and ``x`` leaves ``q``
    (renormalized), which is the distribution the next sibling was drawn from. The first
    acceptance moves down to that child; none (or a node without children) ends the round
    with a bonus token drawn from the current ``p``. The emitted tokens are distributed
    exactly as the target's own sampling would give them, whatever ``q``.
    """
    q_of = dict(zip(tree.prob_nodes or [], normalized(tree.probs) if tree.probs is not None else []))
    children = _children(tree.parents)
    path, cur = [], -1
    while True:
        p = p_rows[0 if cur < 0 else 1 + cur]
        p = p / p.sum()
        kids, nxt = children.get(cur, []), None
        if kids:
            q = q_of[cur].copy()
            for c in kids:
                x = tree.tokens[c]
                if rng.random() * q[x] < p[x]:
                    nxt = c
                    break
                r = np.maximum(p - q, 0.0)
                if r.sum() > 0:  # zero only when p == q, where no candidate is ever rejected
                    p = r / r.sum()
                q[x] = 0.0
                if q.sum() <= 0:
                    break
                q = q / q.sum()
        if nxt is None:
            return path, draw(p, rng)
        path.append(nxt)
        cur = nxt


def greedy_path(pred: list[int], tree: TreeDraft) -> tuple[list[int], int]:
    """Greedy acceptance: the longest path from the root whose every token is the target's own
    argmax (``pred[0]`` after the root, ``pred[1 + i]`` after node ``i``), and the bonus token
    after its end; returns (the path's nodes, the bonus)."""
    children = _children(tree.parents)
    path, cur = [], -1
    while True:
        want = pred[0 if cur < 0 else 1 + cur]
        nxt = next((c for c in children.get(cur, []) if tree.tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        cur = nxt


@dataclass
class RoundResult:
    emitted: list[int]  # accepted draft tokens, then the bonus token
    accepted: int  # draft tokens accepted (the length of the accepted path)
    tree_tokens: int


def _rows_mask(prefix: int, rows_ancestors: list[list[int]], width: int, device, batch: int = 1):
    """Boolean [batch, 1, R, prefix + width]: row r sees the prefix and the listed columns after it."""
    import torch

    m = torch.zeros(len(rows_ancestors), prefix + width, dtype=torch.bool)
    m[:, :prefix] = True
    for r, cols in enumerate(rows_ancestors):
        for c in cols:
            m[r, prefix + c] = True
    return m.expand(batch, 1, *m.shape).to(device)


def tree_mask(prefix: int, parents: list[int], device, batch: int = 1):
    """The tree attention mask [batch, 1, T, prefix + T]: node ``i`` (parent ``parents[i]``,
    -1 for none) sees the prefix, itself and its ancestors. Verification here and its
    timing in :mod:`starsim.calibrate.compute` use this one mask."""
    rows = []
    for i, p in enumerate(parents):
        anc = [i]
        while p >= 0:
            anc.append(p)
            p = parents[p]
        rows.append(anc)
    return _rows_mask(prefix, rows, len(parents), device, batch)


def _keep(cache, keep) -> None:
    """Keep only cache positions ``keep`` (a LongTensor) in every layer."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


@dataclass
class _Tag:
    cache: object
    ids: list[int] = field(default_factory=list)  # the tokens whose KV the cache holds


def _rows_from(chunks: list[np.ndarray], start: int) -> np.ndarray:
    """Rows ``start:`` of the chunks stacked, touching only the chunks that hold them."""
    tail, end = [], sum(map(len, chunks))
    for c in reversed(chunks):
        if end <= start:
            break
        tail.append(c[max(0, start - (end - len(c))):])
        end -= len(c)
    return np.concatenate(tail[::-1])


def _frontier_rows(frontier: list[int], parents: list[int], forwarded: list[int],
                   col: dict[int, int]) -> list[list[int]]:
    """Give the ``frontier`` nodes the next columns after the context (``col``, ``forwarded``);
    returns each one's visible tree columns: itself and its ancestors."""
    rows = []
    for n in frontier:
        col[n] = len(forwarded)
        forwarded.append(n)
        anc, p = [col[n]], parents[n]
        while p >= 0:
            anc.append(col[p])
            p = parents[p]
        rows.append(anc)
    return rows


@functools.cache
def _slab_layer():
    """A cache layer over a preallocated [B, heads, capacity, head_dim] buffer: appending a
    tree level writes its columns in place (a DynamicLayer concatenates, copying the whole
    batch's cache at every level)."""
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        def __init__(self, keys, values, filled: int):
            super().__init__()
            self.buf_k, self.buf_v, self.n = keys, values, filled
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self.keys, self.values = keys[..., :filled, :], values[..., :filled, :]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.n + key_states.shape[-2]
            self.buf_k[..., self.n:end, :] = key_states
            self.buf_v[..., self.n:end, :] = value_states
            self.n = end
            self.keys, self.values = self.buf_k[..., :end, :], self.buf_v[..., :end, :]
            return self.keys, self.values

    return SlabLayer


def _batched_cache(caches: list, width: int, room: int, keep: list):
    """One cache for a batch: each tag's cache (batch 1) in a row, right-padded with zeros to
    ``width`` positions (masked out, but never garbage: 0 x NaN would leak), with ``room``
    positions after them for the tree. The buffers are views of ``keep``'s (one per layer
    and K/V), which grow as needed and are reused: fresh ones would cost page faults."""
    from transformers import DynamicCache

    slab = _slab_layer()
    layers, B = [], len(caches)
    for li in range(len(caches[0].layers)):
        kv = []
        for j, name in enumerate(("keys", "values")):
            parts = [getattr(c.layers[li], name) for c in caches]
            first, i = parts[0], 2 * li + j
            shape = (B, *first.shape[1:-2], width + room, first.shape[-1])
            if i >= len(keep):
                keep.append(None)
            old = keep[i]
            if (old is None or old.dtype != first.dtype or old.device != first.device
                    or any(a < b for a, b in zip(old.shape, shape))):
                keep[i] = first.new_empty(*(max(a, b) for a, b in zip(old.shape if old is not None else shape,
                                                                       shape)))
            buf = keep[i][:B, ..., : width + room, :]
            for b, t in enumerate(parts):
                n = t.shape[-2]
                buf[b, ..., :n, :] = t[0]
                buf[b, ..., n:width, :] = 0
            kv.append(buf)
        layers.append(slab(kv[0], kv[1], width))
    cache = DynamicCache()
    cache.layers = layers
    return cache


RANKS = 10  # candidates ranked at each expanded node for RankCounts, whatever the tree's top_k


@dataclass
class RankCounts:
    """What greedy rounds show of the draft's ranked candidates (``acceptance: {kind: ranked}``):
    ``reached[d-1]``: how often the target's token after an accepted node at depth ``d-1`` (the
    root is depth 0) was seen where the draft had ranked that node's candidates;
    ``hits[d-1][r]``: how often it was the draft's ``(r+1)``-th candidate (of its best
    :data:`RANKS`, whether or not the tree kept it). ``hits / reached`` estimates the ranked
    table. ``expanded[d-1]`` and ``logp[d-1][r]``: the expanded nodes at depth ``d-1`` of those
    rounds' trees and the sum of their ``(r+1)``-th candidate's log-probability under the
    draft: its confidence, which decides the tree's shape."""

    reached: list[int] = field(default_factory=list)
    hits: list[list[int]] = field(default_factory=list)
    expanded: list[int] = field(default_factory=list)
    logp: list[list[float]] = field(default_factory=list)

    @staticmethod
    def _room(counts: list, rows: list, depth: int, width: int, zero) -> None:
        while len(counts) < depth:
            counts.append(0)
            rows.append([])
        rows[depth - 1].extend([zero] * (width - len(rows[depth - 1])))

    def add(self, depth: int, rank: int | None, width: int) -> None:
        self._room(self.reached, self.hits, depth, width, 0)
        self.reached[depth - 1] += 1
        if rank is not None:
            self.hits[depth - 1][rank] += 1

    def add_nodes(self, depth: int, nodes: int, logp: list[float]) -> None:
        """``nodes`` expanded nodes at ``depth - 1`` whose candidates' log-probabilities sum to ``logp``."""
        self._room(self.expanded, self.logp, depth, len(logp), 0.0)
        self.expanded[depth - 1] += nodes
        row = self.logp[depth - 1]
        for r, x in enumerate(logp):
            row[r] += x

    def merge(self, other: RankCounts) -> None:
        for mine, theirs, (counts, rows), zero in ((self.reached, self.hits, (other.reached, other.hits), 0),
                                                   (self.expanded, self.logp, (other.expanded, other.logp), 0.0)):
            for d, (n, row) in enumerate(zip(counts, rows), start=1):
                self._room(mine, theirs, d, len(row), zero)
                mine[d - 1] += n
                for r, x in enumerate(row):
                    theirs[d - 1][r] += x

    def as_dict(self) -> dict:
        return {"reached": list(self.reached), "hits": [list(r) for r in self.hits],
                "expanded": list(self.expanded), "logp": [list(r) for r in self.logp]}


class _Greedy:
    """One tag's greedy EAGLE-2 tree as it grows level by level (see the module docstring):
    :meth:`Drafter.draft` and :meth:`Drafter.draft_batch` grow it alike, from the same logits.
    It keeps each expanded node's best :data:`RANKS` candidates and their log-probabilities, so
    the next round's tokens can say which rank the target took at each depth (:meth:`observe`)."""

    def __init__(self, root_logits, k: int):
        lp, toks = root_logits.log_softmax(-1).topk(min(max(k, RANKS), root_logits.shape[-1]))
        self.k, self.device = k, root_logits.device
        self.tok, self.par, self.dep, self.score = toks[:k].tolist(), [-1] * k, [1] * k, lp[:k].tolist()
        self.frontier = list(range(k))  # node indices of the current level
        self.forwarded: list[int] = []  # the nodes forwarded so far, in cache column order
        self.col: dict[int, int] = {}  # node index -> its column in the cache after the context
        self.cands: dict[int, list[int]] = {-1: toks.tolist()}  # node (-1: the root) -> its ranked candidates
        self.child: dict[tuple[int, int], int] = {(-1, t): i for i, t in enumerate(self.tok)}
        self.kept: set[int] = set()
        # per level: (the children's depth, nodes expanded, their candidates' log-probabilities summed)
        self.level_logp: list[tuple[int, int, list[float]]] = [(1, 1, lp.tolist())]

    def observe(self, emitted: list[int], counts: RankCounts) -> None:
        """Count the ranks the target took along the path its round emitted (accepted tokens,
        then the bonus): at each reached node whose candidates the draft ranked; and the
        draft's confidence at every node it expanded."""
        for depth, nodes, logp in self.level_logp:
            counts.add_nodes(depth, nodes, logp)
        node = -1
        for depth, tok in enumerate(emitted, start=1):
            cands = self.cands.get(node)
            if cands is None:  # a leaf: the draft ranked nothing after it
                return
            counts.add(depth, cands.index(tok) if tok in cands else None, len(cands))
            node = self.child.get((node, tok), -2)
            if node not in self.kept:  # the bonus: the round ended here
                return

    def grow(self, logits, level: int) -> None:
        """The next level from the frontier's logits [len(frontier), vocab] (tree depth ``level``)."""
        import torch

        k, frontier = self.k, self.frontier
        ranked_lp, ranked = logits.log_softmax(-1).topk(min(max(k, RANKS), logits.shape[-1]), dim=-1)
        child_scores, child_toks = ranked_lp[:, :k], ranked[:, :k]  # [k, k]
        base = torch.tensor([self.score[n] for n in frontier], device=self.device)
        cum = (base[:, None] + child_scores).reshape(-1)
        best = cum.topk(min(k, cum.numel())).indices.tolist()
        for n, toks in zip(frontier, ranked.tolist()):
            self.cands[n] = toks
        self.level_logp.append((level + 1, len(frontier), ranked_lp.sum(0).tolist()))  # one sum, not a loop
        nxt = []
        for b in best:
            self.tok.append(int(child_toks.reshape(-1)[b]))
            self.par.append(frontier[b // k])
            self.dep.append(level + 1)
            self.score.append(float(cum[b]))
            nxt.append(len(self.tok) - 1)
            self.child[(self.par[-1], self.tok[-1])] = nxt[-1]
        self.frontier = nxt

    def tree(self, max_nodes: int) -> TreeDraft:
        """The best ``max_nodes`` nodes; sorting by (score desc, depth, index) keeps parents first."""
        score, dep = self.score, self.dep
        order = sorted(range(len(self.tok)), key=lambda i: (-score[i], dep[i], i))[:max_nodes]
        self.kept = set(order)
        order.sort(key=lambda i: (dep[i], i))  # breadth first
        new_index = {old: new for new, old in enumerate(order)}
        return TreeDraft(
            tokens=[self.tok[i] for i in order],
            parents=[new_index[self.par[i]] if self.par[i] >= 0 else -1 for i in order],
            depths=[dep[i] for i in order],
        )


class Drafter:
    """A draft model serving many tags (targets), one tree at a time.

    ``model`` is a causal LM (an independent draft, token ids only) or an EAGLE head (a
    :class:`~starsim.models.specs.Net` with ``fc``), which also needs the target's hidden
    states: the request's ``hidden[i]`` is the target's last hidden state at the position
    before token ``i``. The head's cache position ``j`` then holds the pair (feature ``j``,
    token ``j + 1``), one position fewer than the context; inside the tree a node's input
    feature is the one the head predicted at its parent.
    """

    def __init__(self, model, top_k: int, depth: int, tokens: int):
        from ..models.specs import Net

        self.net = model if isinstance(model, Net) and model.eagle else None
        self.model = model.lm if isinstance(model, Net) else model  # config, dtype, device
        self.top_k, self.depth, self.max_nodes = top_k, depth, tokens
        self.device = next(self.model.parameters()).device
        self.off = 1 if self.net is not None else 0  # cache positions = context length - off
        self.tags: dict[int, _Tag] = {}
        self._slabs: list = []  # draft_batch's batched cache buffers, reused (see _batched_cache)
        # greedy rounds' ranked acceptance: each tag's last greedy tree (and the context it was
        # drafted for) is held against the tokens the tag's next context adds
        self.ranks = RankCounts()
        self._last: dict[int, tuple[list[int], _Greedy]] = {}

    @property
    def needs_hidden(self) -> bool:
        return self.net is not None

    def free(self, tag: int) -> None:
        self.tags.pop(tag, None)
        self._last.pop(tag, None)

    def _observe(self, tag: int, context: list[int]) -> None:
        """The ranks the target took in the tag's last greedy round, read off the tokens its new
        context adds to the one that round was drafted for (nothing if it is another request)."""
        last = self._last.pop(tag, None)
        if last is not None and len(context) > len(last[0]) and context[: len(last[0])] == last[0]:
            last[1].observe(context[len(last[0]):], self.ranks)

    def _forward(self, st: _Tag, ids, pos, mask=None, hidden=None, last_only=False):
        """(logits [n, vocab], predicted features [n, hidden] or None) of one forward on the tag's cache."""
        if self.net is None:
            kw = {"logits_to_keep": 1} if last_only else {}
            kw[cache_kw(self.model)] = st.cache
            out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True, **kw)
            return out.logits[0], None
        logits, feats = self.net(ids, st.cache, mask, pos, hidden.to(self.model.dtype), last_only)
        return logits[0], feats[0]

    def encode(self, tag: int, context: list[int], hidden=None):
        """Bring the tag's cache up to ``context`` (and, for EAGLE, ``hidden``: chunks of rows,
        [len(context), hidden_size] in all); returns (root logits, root feature or None, new
        positions encoded)."""
        import torch
        from transformers import DynamicCache

        if self.net is not None and (hidden is None or sum(map(len, hidden)) != len(context) or len(context) < 2):
            raise ValueError("an EAGLE draft needs the target's hidden states, one per context token (>= 2)")
        st = self.tags.get(tag)
        if st is None:
            st = self.tags[tag] = _Tag(DynamicCache())
        common = 0
        for a, b in zip(st.ids, context[:-1]):  # the last position is always re-encoded: its logits are the root's
            if a != b:
                break
            common += 1
        valid = max(0, common - self.off)
        if valid < st.cache.get_seq_length():  # the context diverged from what is cached (a new request)
            if valid:
                crop_cache(st.cache, valid)
            else:
                st.cache = DynamicCache()
        L = len(context)
        ids = torch.tensor([context[valid + self.off:]], device=self.device)
        pos = torch.arange(valid, L - self.off, device=self.device)[None]
        h = None
        if self.net is not None:
            h = torch.as_tensor(_rows_from(hidden, valid + self.off), device=self.device)[None]
        logits, feats = self._forward(st, ids, pos, hidden=h, last_only=True)
        st.ids = list(context)
        return logits[-1], None if feats is None else feats[-1], ids.shape[1]

    def shape(self, depth: int | None = None) -> tuple[int, int]:
        """(levels, most nodes) of a tree ``depth`` deep (adaptive speculation; None: the full
        tree), as the simulator costs it (:meth:`starsim.scenario.Tree.tokens_at`)."""
        if depth is None or depth >= self.depth:
            return self.depth, self.max_nodes
        if depth < 1:
            raise ValueError(f"a draft tree is at least 1 deep, got depth {depth}")
        from ..scenario import Tree

        return depth, Tree.model_construct(top_k=self.top_k, depth=self.depth, tokens=self.max_nodes).tokens_at(depth)

    def draft(self, tag: int, context: list[int], temperature: float = 0.0, seed: int | None = None,
              hidden=None, depth: int | None = None, observe: bool = True) -> tuple[TreeDraft, int]:
        """A tree for the tag's ``context`` (prompt + tokens so far); returns (tree, new positions encoded).
        ``depth``: a shallower tree than the drafter's (:meth:`shape`), for adaptive speculation.

        Greedy (``temperature == 0``): the EAGLE-2 tree of the module docstring. Sampling:
        level 1 is ``top_k`` children of the root drawn without replacement from ``q``; at
        each next level the ``top_k`` child slots go to the previous level's nodes whose
        cumulative log-probability plus the log of their m-th largest ``q`` is highest, then
        each node draws its share; at most ``tokens`` nodes in all. ``seed`` fixes the draws.

        ``observe``: this is the context a target sent (not a pipelined guess), so its new
        tokens tell which ranks the target took in the tag's last greedy round (:attr:`ranks`).
        """
        import torch

        if observe:
            self._observe(tag, context)
        with torch.inference_mode():
            root_logits, root_feat, n_new = self.encode(tag, context, hidden)
            feats = {-1: root_feat}
            levels, nodes = self.shape(depth)
            if temperature > 0:
                tree = self._sampled_tree(tag, len(context), root_logits, feats, temperature,
                                          np.random.default_rng(seed), levels, nodes)
            else:
                grown = self._greedy_tree(tag, len(context), root_logits, feats, levels)
                tree = grown.tree(nodes)
                if observe:
                    self._last[tag] = (list(context), grown)
            crop_cache(self.tags[tag].cache, len(context) - self.off)  # drop the tree: the context stays cached
        return tree, n_new

    def draft_batch(self, requests) -> list[tuple[TreeDraft, int]]:
        """Trees for several tags at once; returns ``(tree, new positions encoded)`` per request,
        in order, the same as :meth:`draft` would return for each.

        ``requests``: ``(tag, context)`` or ``(tag, context, temperature, seed, hidden[, depth[,
        observe]])``, at most one per tag. The greedy requests of an independent draft model are batched: each tag's
        new prefix is encoded on its own cache (:meth:`encode`), then their trees grow together,
        one forward per tree level over every tag, on a batched copy of their caches (right-
        padded to the longest context; a boolean mask [B, 1, rows, columns] hides each row's
        padding and shows it its own context and tree ancestors; positions per row). Requests
        that cannot be batched (``temperature > 0``, an EAGLE head, whose inputs differ per
        node, or a shallower tree than the drafter's) are drafted one by one, inside the batch,
        with :meth:`draft`.
        """
        import torch

        reqs = [(*r, *(0.0, None, None, None, True)[len(r) - 2:]) for r in requests]
        out: list[tuple[TreeDraft, int] | None] = [None] * len(reqs)
        batch = [i for i, r in enumerate(reqs)
                 if self.net is None and not r[2] > 0 and (r[5] is None or r[5] >= self.depth)]
        if len({reqs[i][0] for i in batch}) < len(batch):
            raise ValueError("draft_batch takes at most one request per tag")
        if len(batch) == 1:  # a batch of one is a plain round
            batch = []
        for i, (tag, context, temperature, seed, hidden, depth, observe) in enumerate(reqs):
            if i not in batch:
                out[i] = self.draft(tag, context, temperature, seed, hidden, depth, observe)
        if batch:
            with torch.inference_mode():
                grown = self._greedy_batch([(reqs[i][0], reqs[i][1], reqs[i][6]) for i in batch])
            for i, r in zip(batch, grown):
                out[i] = r
        return out

    def _greedy_batch(self, reqs: list[tuple[int, list[int], bool]]) -> list[tuple[TreeDraft, int]]:
        """Greedy trees of several tags (independent draft model), one forward per level;
        ``(tag, context, observe)`` each (see :meth:`draft`)."""
        import torch

        growth, news = [], []
        for tag, context, observe in reqs:
            if observe:
                self._observe(tag, context)
            root_logits, _, n_new = self.encode(tag, context)
            growth.append(_Greedy(root_logits, self.top_k))
            news.append(n_new)
        prefix = [len(c) for _, c, _ in reqs]  # cached positions of each tag (off = 0: an independent draft)
        width = max(prefix)
        B, dev = len(reqs), self.device
        batched = _batched_cache([self.tags[tag].cache for tag, _, _ in reqs], width, self.top_k * (self.depth - 1),
                                 self._slabs) if self.depth > 1 else None
        seen = torch.arange(width)[None, :] < torch.tensor(prefix)[:, None]  # [B, width]: not padding
        for level in range(1, self.depth):
            rows = [_frontier_rows(g.frontier, g.par, g.forwarded, g.col) for g in growth]
            R, W = len(rows[0]), len(growth[0].forwarded)
            if any(len(r) != R for r in rows):  # every frontier holds top_k nodes
                raise RuntimeError("draft_batch: the tags' frontiers differ in size")
            tree_cols = torch.zeros(B, R, W, dtype=torch.bool)
            for b, rb in enumerate(rows):
                for r, cols in enumerate(rb):
                    tree_cols[b, r, cols] = True
            mask = torch.cat([seen[:, None, :].expand(B, R, width), tree_cols], -1)[:, None].to(dev)
            ids = torch.tensor([[g.tok[n] for n in g.frontier] for g in growth], device=dev)
            pos = torch.tensor([[p - 1 + level] * R for p in prefix], device=dev)
            logits = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                                **{cache_kw(self.model): batched}).logits
            for b, g in enumerate(growth):
                g.grow(logits[b], level)
        for (tag, context, observe), g in zip(reqs, growth):
            crop_cache(self.tags[tag].cache, len(context) - self.off)  # as draft does (the tree went to the copy)
            if observe:
                self._last[tag] = (list(context), g)
        return [(g.tree(self.max_nodes), n) for g, n in zip(growth, news)]

    def _level(self, tag: int, L: int, level: int, frontier: list[int], parents: list[int], tokens: list[int],
               forwarded: list[int], col: dict[int, int], feats: dict):
        """Forward the ``frontier`` nodes (tree depth ``level``) on top of the cached context and
        the nodes forwarded before; returns their next-token logits [len(frontier), vocab] (and
        keeps an EAGLE head's predicted features in ``feats``)."""
        import torch

        rows = _frontier_rows(frontier, parents, forwarded, col)
        prefix = L - self.off
        mask = _rows_mask(prefix, rows, len(forwarded), self.device)
        ids = torch.tensor([[tokens[n] for n in frontier]], device=self.device)
        pos = torch.full((1, len(frontier)), prefix - 1 + level, device=self.device)
        hidden = None if self.net is None else torch.stack([feats[parents[n]] for n in frontier])[None]
        logits, out = self._forward(self.tags[tag], ids, pos, mask, hidden)
        if out is not None:
            feats.update(zip(frontier, out))
        return logits

    def _greedy_tree(self, tag: int, L: int, root_logits, feats: dict, levels: int) -> _Greedy:
        g = _Greedy(root_logits, self.top_k)
        for level in range(1, levels):
            g.grow(self._level(tag, L, level, g.frontier, g.par, g.tok, g.forwarded, g.col, feats), level)
        return g

    def _sampled_tree(self, tag: int, L: int, root_logits, feats: dict, temperature: float, rng, levels: int,
                      max_nodes: int) -> TreeDraft:
        import torch

        def q16(logits):  # the draft's distribution as it travels (float16), one row per node
            return (logits.float() / temperature).softmax(-1).to(torch.float16).cpu().numpy()

        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        cum: list[float] = []
        probs: list[np.ndarray] = []
        prob_nodes: list[int] = []

        def add_children(parent: int, q_row: np.ndarray, count: int, depth: int) -> list[int]:
            q = normalized(q_row)
            drawn = draw_without_replacement(q, count, rng)
            if drawn.size:
                probs.append(q_row)
                prob_nodes.append(parent)
            base = cum[parent] if parent >= 0 else 0.0
            for x in drawn.tolist():
                tokens.append(x)
                parents.append(parent)
                depths.append(depth)
                cum.append(base + float(np.log(q[x])))
            return list(range(len(tokens) - drawn.size, len(tokens)))

        frontier = add_children(-1, q16(root_logits[None])[0], min(self.top_k, max_nodes), 1)
        forwarded: list[int] = []
        col: dict[int, int] = {}
        for level in range(1, levels):
            slots = min(self.top_k, max_nodes - len(tokens))
            if slots <= 0 or not frontier:
                break
            rows = q16(self._level(tag, L, level, frontier, parents, tokens, forwarded, col, feats))
            # share the slots before drawing: by cumulative log-prob + log of each node's m-th best q
            cand = []
            for j, n in enumerate(frontier):
                top = np.sort(normalized(rows[j]))[::-1][:slots]
                cand += [(cum[n] + float(np.log(v)), j) for v in top if v > 0]
            share = np.zeros(len(frontier), dtype=int)
            for _, j in sorted(cand, key=lambda c: -c[0])[:slots]:
                share[j] += 1
            nxt = []
            for j, n in enumerate(frontier):
                if share[j]:
                    nxt += add_children(n, rows[j], int(share[j]), level + 1)
            frontier = nxt
        return TreeDraft(tokens=tokens, parents=parents, depths=depths,
                         probs=np.stack(probs) if probs else None, prob_nodes=prob_nodes)


class Verifier:
    """A target causal LM decoding one request at a time: greedy at ``temperature == 0``,
    else sampling at that temperature with ``rng`` (a numpy Generator)."""

    def __init__(self, model, temperature: float = 0.0, rng: np.random.Generator | None = None,
                 hidden: bool = False):
        self.model, self.temperature = model, temperature
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.device = next(model.parameters()).device
        self.cache = None
        self.root: int | None = None  # the last emitted token, not yet in the cache
        # hidden: keep, for an EAGLE draft, the last hidden state before each token emitted
        # since the last round (float16 [n, hidden_size]; a zero row before a prompt's first token)
        self.hidden = hidden
        self.features: np.ndarray | None = None

    def _run(self, **kw):
        """One forward; keeps the last layer's hidden states when they are wanted."""
        kw[cache_kw(self.model)] = self.cache
        out = self.model(use_cache=True, output_hidden_states=self.hidden, **kw)
        return out.logits, (out.hidden_states[-1][0] if self.hidden else None)

    def _probs(self, logits) -> np.ndarray:
        """The target's distributions (float64 [rows, vocab]) at the sampling temperature."""
        return (logits.double() / self.temperature).softmax(-1).cpu().numpy()

    def _next(self, logits) -> int:
        """The next token from the last position's logits [vocab]."""
        if self.temperature > 0:
            return draw(self._probs(logits[None])[0], self.rng)
        return int(logits.argmax())

    def prefill(self, prompt: list[int]) -> int:
        """Encode the prompt; returns the first generated token."""
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache()
        with torch.inference_mode():
            logits, h = self._run(input_ids=torch.tensor([prompt], device=self.device), logits_to_keep=1)
        if h is not None:
            self.features = torch.cat([torch.zeros_like(h[:1]), h]).to(torch.float16).cpu().numpy()
        self.root = self._next(logits[0, -1])
        return self.root

    def step(self) -> int:
        """One plain decoding step (no draft): the autoregressive fallback."""
        import torch

        L = self.cache.get_seq_length()
        with torch.inference_mode():
            logits, h = self._run(input_ids=torch.tensor([[self.root]], device=self.device),
                                  position_ids=torch.tensor([[L]], device=self.device))
        if h is not None:
            self.features = h.to(torch.float16).cpu().numpy()
        self.root = self._next(logits[0, -1])
        return self.root

    def verify(self, tree: TreeDraft) -> RoundResult:
        """Verify ``tree`` (drafted after the current root) in one forward: greedy acceptance,
        or :func:`sample_tree_path` when sampling (the tree must then carry its ``probs``)."""
        import torch

        L = self.cache.get_seq_length()
        T = len(tree.tokens)
        # the root is column 0 and every node's ancestor; node i is column 1 + i
        mask = tree_mask(L, [-1] + [1 + p if p >= 0 else 0 for p in tree.parents], self.device)
        ids = torch.tensor([[self.root, *tree.tokens]], device=self.device)
        pos = torch.tensor([[L] + [L + d for d in tree.depths]], device=self.device)
        with torch.inference_mode():
            logits, h = self._run(input_ids=ids, attention_mask=mask, position_ids=pos)
            logits = logits[0]
        if self.temperature > 0:
            if T and tree.probs is None:
                raise ValueError("sampling needs the draft's probabilities with the tree (a greedy draft was sent)")
            path, bonus = sample_tree_path(self._probs(logits), tree, self.rng)
        else:
            path, bonus = greedy_path(logits.argmax(-1).tolist(), tree)
        keep = torch.tensor(list(range(L + 1)) + [L + 1 + c for c in path], device=self.device)
        _keep(self.cache, keep)  # the root and the accepted path stay cached
        if h is not None:  # before each emitted token: the root, then the accepted path
            self.features = h[keep[L:] - L].to(torch.float16).cpu().numpy()
        emitted = [tree.tokens[c] for c in path] + [bonus]
        self.root = bonus
        return RoundResult(emitted=emitted, accepted=len(path), tree_tokens=T)


def target_generate(model, prompt: list[int], max_new: int, eos: int | None = None, temperature: float = 0.0,
                    seed: int = 0) -> list[int]:
    """Plain target-only decoding, greedy or sampled (the reference speculative decoding must equal:
    token for token when greedy, in distribution when sampling)."""
    v = Verifier(model, temperature, np.random.default_rng(seed))
    out = [v.prefill(prompt)]
    while len(out) < max_new and out[-1] != eos:
        out.append(v.step())
    return out


def local_drafts(drafter: Drafter, tag: int = 0, temperature: float = 0.0):
    """``draft_next`` for :func:`speculative_generate` from a :class:`Drafter` in this process."""
    context: list[int] = []
    feats: list[np.ndarray] = []

    def draft_next(new: list[int], start: bool, seed: int | None = None, hidden=None) -> TreeDraft:
        nonlocal context, feats
        context = list(new) if start else context + list(new)
        if hidden is not None:
            feats = [hidden] if start else feats + [hidden]
        return drafter.draft(tag, context, temperature, seed, feats or None)[0]

    return draft_next


def speculative_generate(
    target, draft_next, prompt: list[int], max_new: int, eos: int | None = None, temperature: float = 0.0,
    seed: int = 0, hidden: bool = False,
) -> tuple[list[int], list[RoundResult]]:
    """Speculative decoding of one request; returns (tokens, rounds).

    ``draft_next(new_tokens, start, seed, hidden)`` returns the tree for the context so far,
    given the tokens emitted since the last call (the whole context, with ``start``, on the
    first), drawing with ``seed`` when sampling, and with ``hidden`` (the target's hidden
    states before those tokens) when the draft is an EAGLE head: :func:`local_drafts`, or a
    draft server's client (:mod:`starsim.real.client`), drafting at the same ``temperature``.
    """
    rng = np.random.default_rng(seed)
    v = Verifier(target, temperature, rng, hidden=hidden)
    out = [v.prefill(prompt)]
    rounds: list[RoundResult] = []
    new, start = prompt + out, True
    while len(out) < max_new and out[-1] != eos:
        r = v.verify(draft_next(new, start, int(rng.integers(2**63)), v.features))
        rounds.append(r)
        new, start = r.emitted, False
        for t in r.emitted:
            out.append(t)
            if len(out) >= max_new or t == eos:
                break
    return out, rounds
