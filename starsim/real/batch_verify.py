"""A target that runs many sequences in one forward per step (continuous batching), torch.

:class:`BatchVerifier` keeps each sequence's KV cache apart (per layer, ``[1, kv_heads,
length, head_dim]``) and its root (the last token it emitted, not cached yet). A step's
:meth:`~BatchVerifier.step` takes one item per sequence: a prefill chunk (:class:`Chunk`) or
a token tree to verify (:class:`Tree`; an empty tree is one plain decoding step) and runs
them in one forward (two when a step has both: its chunks', then its trees'; see
:meth:`~BatchVerifier.step`):

- the rows of every item side by side, right-padded to the longest (a chunk's tokens; a
  tree's root and nodes), at the positions each sequence's own context gives;
- on a batched copy of the caches, right-padded with zeros to the longest context (masked
  out, never garbage: 0 x NaN would leak), the step's rows written after them in place
  (the drafter's slab layer, :func:`starsim.real.speculation._batched_cache`'s);
- under one boolean mask ``[B, 1, rows, context + rows]``: a row sees its own sequence's
  context, then its chunk causally or its tree ancestors; a padding row sees only itself.

Then each sequence keeps what plain decoding would have cached: a chunk's every token; a
tree's root and accepted path (greedy: :func:`~starsim.real.speculation.greedy_path`;
sampling: :func:`~starsim.real.speculation.sample_tree_path`). Every sequence's output is the
one :class:`~starsim.real.speculation.Verifier` gives it alone (the lossless tests hold it to
:func:`~starsim.real.speculation.target_generate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..models.specs import cache_kw
from .speculation import RoundResult, TreeDraft, _slab_layer, draw, greedy_path, sample_tree_path


@dataclass
class Chunk:
    """The next ``tokens`` of sequence ``sid``'s prefill; ``last``: they end it (its next token is sampled)."""

    sid: int
    tokens: list[int]
    last: bool = True


@dataclass
class Tree:
    """Verify ``tree`` (drafted after sequence ``sid``'s root); an empty tree decodes one token."""

    sid: int
    tree: TreeDraft


@dataclass
class _Seq:
    keys: list = field(default_factory=list)  # per layer: [1, kv_heads, length, head_dim]
    values: list = field(default_factory=list)
    length: int = 0  # cached positions
    root: int | None = None  # the last emitted token, not cached yet
    rng: np.random.Generator | None = None


def _causal(n: int) -> np.ndarray:
    """A chunk's rows among themselves: each sees itself and those before it."""
    return np.tri(n, dtype=bool)


def _ancestors(parents: list[int]) -> np.ndarray:
    """A tree's rows among themselves (row 0: the root): each sees itself and its ancestors
    (parents come first, so one pass fills every row from its parent's)."""
    n = len(parents)
    vis = np.eye(n, dtype=bool)
    for i, p in enumerate(parents):
        if p >= 0:
            vis[i] |= vis[p]
    return vis


class BatchVerifier:
    """A target causal LM serving several sequences at once (see the module docstring): greedy
    at ``temperature == 0``, else sampling, with one random stream per sequence."""

    def __init__(self, model, temperature: float = 0.0):
        self.model, self.temperature = model, temperature
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        cfg = model.config
        heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.layers = cfg.num_hidden_layers
        self.seqs: dict[int, _Seq] = {}
        self._bufs: list = []  # the step caches' buffers, reused (see _buffer)

    def add(self, sid: int, seed: int = 0) -> None:
        """A new sequence, with no context yet (its prompt comes in :class:`Chunk` items)."""
        if sid in self.seqs:
            raise ValueError(f"sequence {sid} is already running")
        self.seqs[sid] = _Seq(rng=np.random.default_rng(seed))

    def remove(self, sid: int) -> None:
        """The sequence is done (or preempted): its cache is freed."""
        self.seqs.pop(sid, None)

    def adopt(self, sid: int, cache, root: int | None) -> None:
        """Give sequence ``sid`` a prefilled cache (a transformers cache of batch 1) and its root
        (calibration times steps at a given context this way)."""
        s = self.seqs[sid]
        s.keys, s.values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
        s.length, s.root = cache.get_seq_length(), root

    def snapshot(self) -> dict:
        """Every sequence's cache and root now, for :meth:`restore` (a step never writes a cached
        tensor in place: it appends new ones)."""
        return {sid: (list(s.keys), list(s.values), s.length, s.root) for sid, s in self.seqs.items()}

    def restore(self, snap: dict) -> None:
        """Back to a :meth:`snapshot` (calibration repeats one step)."""
        for sid, (keys, values, length, root) in snap.items():
            s = self.seqs[sid]
            s.keys, s.values, s.length, s.root = list(keys), list(values), length, root

    # ------------------------------------------------------------------ one step

    def step(self, items: list[Chunk | Tree]) -> list[int | RoundResult | None]:
        """Run one step's items (one per sequence); per item, in order: a last chunk's first
        token, None for another chunk, a tree's :class:`RoundResult`.

        The prefill chunks go in one forward, the trees in another, back to back: padded into
        one, every tree row would be as long as the longest chunk (measured on tiny-cpu, 8
        trees of 17 tokens at 1024 beside a 256-token chunk: 237 ms in one forward, 78 ms in
        two; see :mod:`starsim.calibrate.compute`'s op ``step``, which times these two)."""
        if len({it.sid for it in items}) < len(items):
            raise ValueError("a step takes at most one item per sequence")
        out: list[int | RoundResult | None] = [None] * len(items)
        for kind in (Chunk, Tree):
            group = [i for i, it in enumerate(items) if isinstance(it, kind)]
            if group:
                for i, r in zip(group, self._forward([items[i] for i in group])):
                    out[i] = r
        return out

    def _forward(self, items: list[Chunk | Tree]) -> list[int | RoundResult | None]:
        """One forward over ``items`` (see the module docstring)."""
        import torch

        seqs = [self.seqs[it.sid] for it in items]
        rows = [self._rows(it, s) for it, s in zip(items, seqs)]
        width, R = max(s.length for s in seqs), max(len(r[0]) for r in rows)
        cache = self._batched(seqs, width, R)
        ids, pos, mask = self._inputs(rows, seqs, width, R)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                                **{cache_kw(self.model): cache}).logits
        out = []
        for b, (it, s) in enumerate(zip(items, seqs)):
            keep, result = self._outcome(it, s, logits[b, : len(rows[b][0])])
            self._append(s, cache, b, width, keep)
            out.append(result)
        return out

    def _rows(self, it: Chunk | Tree, s: _Seq) -> tuple[list[int], list[int], np.ndarray]:
        """An item's (tokens, positions, which of its rows each row sees)."""
        L = s.length
        if isinstance(it, Chunk):
            if not it.tokens:
                raise ValueError(f"sequence {it.sid}: an empty prefill chunk")
            return it.tokens, list(range(L, L + len(it.tokens))), _causal(len(it.tokens))
        if s.root is None:
            raise ValueError(f"sequence {it.sid} has no root: its prefill is not done")
        t = it.tree
        parents = [-1] + [1 + p if p >= 0 else 0 for p in t.parents]  # the root is row 0
        return [s.root, *t.tokens], [L] + [L + d for d in t.depths], _ancestors(parents)

    def _batched(self, seqs: list[_Seq], width: int, room: int):
        """The step's cache: each sequence's in a row, zero-padded to ``width``, ``room`` after."""
        from transformers import DynamicCache

        slab, B = _slab_layer(), len(seqs)
        cache = DynamicCache()
        cache.layers = []
        for li in range(self.layers):
            kv = []
            for j, name in enumerate(("keys", "values")):
                buf = self._buffer(2 * li + j, B, width + room)
                for b, s in enumerate(seqs):
                    if s.length:
                        buf[b, :, : s.length] = getattr(s, name)[li][0]
                    buf[b, :, s.length: width] = 0  # padding: masked out, but never garbage (0 x NaN)
                kv.append(buf)
            cache.layers.append(slab(kv[0], kv[1], width))
        return cache

    def _buffer(self, i: int, batch: int, columns: int):
        """Buffer ``i`` (a layer's keys or values) as a view [batch, kv_heads, columns, head_dim],
        grown when a step needs more and kept across steps (fresh ones would cost page faults;
        a step writes every column it reads: the contexts, the padding, then its rows)."""
        import torch

        old = self._bufs[i] if i < len(self._bufs) else None
        if old is None or old.shape[0] < batch or old.shape[2] < columns:
            shape = (max(batch, old.shape[0] if old is not None else 0), self.kv_heads,
                     max(columns, old.shape[2] if old is not None else 0), self.head_dim)
            new = torch.empty(shape, dtype=self.dtype, device=self.device)
            if i < len(self._bufs):
                self._bufs[i] = new
            else:
                self._bufs.append(new)
        return self._bufs[i][:batch, :, :columns]

    def _inputs(self, rows, seqs: list[_Seq], width: int, R: int):
        """Token ids and positions [B, R] and the mask [B, 1, R, width + R] (see the module docstring)."""
        import torch

        B = len(rows)
        ids = np.zeros((B, R), dtype=np.int64)
        pos = np.zeros((B, R), dtype=np.int64)
        mask = np.zeros((B, R, width + R), dtype=bool)
        pad = np.arange(R)
        mask[:, pad, width + pad] = True  # padding rows see only themselves (no row may see nothing)
        for b, ((tokens, positions, visible), s) in enumerate(zip(rows, seqs)):
            n = len(tokens)
            ids[b, :n] = tokens
            pos[b, :n] = positions
            pos[b, n:] = positions[-1]
            mask[b, :n, : s.length] = True
            mask[b, :n, width: width + n] = visible
        return (torch.from_numpy(ids).to(self.device), torch.from_numpy(pos).to(self.device),
                torch.from_numpy(mask)[:, None].to(self.device))

    def _outcome(self, it: Chunk | Tree, s: _Seq, logits) -> tuple[list[int], int | RoundResult | None]:
        """The rows a sequence keeps (of its own) and what the item gives back."""
        n = logits.shape[0]
        if isinstance(it, Chunk):
            if not it.last:
                return list(range(n)), None
            s.root = self._next(logits[-1], s)
            return list(range(n)), s.root
        tree = it.tree
        if self.temperature > 0:
            if tree.tokens and tree.probs is None:
                raise ValueError("sampling needs the draft's probabilities with the tree (a greedy draft was sent)")
            path, bonus = sample_tree_path(self._probs(logits), tree, s.rng)
        else:
            path, bonus = greedy_path(logits.argmax(-1).tolist(), tree)
        emitted = [tree.tokens[c] for c in path] + [bonus]
        s.root = bonus
        return [0] + [1 + c for c in path], RoundResult(emitted=emitted, accepted=len(path),
                                                         tree_tokens=len(tree.tokens))

    def _probs(self, logits) -> np.ndarray:
        return (logits.double() / self.temperature).softmax(-1).cpu().numpy()

    def _next(self, logits, s: _Seq) -> int:
        if self.temperature > 0:
            return draw(self._probs(logits[None])[0], s.rng)
        return int(logits.argmax())

    def _append(self, s: _Seq, cache, b: int, width: int, keep: list[int]) -> None:
        """Append the kept rows' keys and values (written at ``width`` + row) to the sequence's cache."""
        import torch

        cols = torch.tensor([width + r for r in keep], device=self.device)
        for li, layer in enumerate(cache.layers):
            k = layer.buf_k[b : b + 1].index_select(-2, cols)
            v = layer.buf_v[b : b + 1].index_select(-2, cols)
            if s.length:
                s.keys[li] = torch.cat([s.keys[li], k], -2)
                s.values[li] = torch.cat([s.values[li], v], -2)
            else:
                s.keys.append(k)
                s.values.append(v)
        s.length += len(keep)
