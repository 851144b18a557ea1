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

Positions follow the tree: a node at depth ``d`` under a context of ``L`` tokens sits at
position ``L - 1 + d`` (the root is ``L - 1``), as if its path had been decoded in line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..calibrate.specs import crop_cache


@dataclass
class TreeDraft:
    """A drafted tree: node ``i`` has token ``tokens[i]`` and parent ``parents[i]``
    (-1: the root, i.e. the last token of the context); nodes are in breadth-first order."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]


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


class Drafter:
    """A draft causal LM serving many tags (targets), one tree at a time."""

    def __init__(self, model, top_k: int, depth: int, tokens: int):
        self.model, self.top_k, self.depth, self.max_nodes = model, top_k, depth, tokens
        self.device = next(model.parameters()).device
        self.tags: dict[int, _Tag] = {}

    def free(self, tag: int) -> None:
        self.tags.pop(tag, None)

    def encode(self, tag: int, context: list[int]):
        """Bring the tag's cache up to ``context``; returns (logits of the last token, new tokens encoded)."""
        import torch
        from transformers import DynamicCache

        st = self.tags.get(tag)
        if st is None:
            st = self.tags[tag] = _Tag(DynamicCache())
        common = 0
        for a, b in zip(st.ids, context[:-1]):  # the last token is always re-encoded: its logits are the root's
            if a != b:
                break
            common += 1
        if common < len(st.ids):  # the context diverged from what is cached (a new request)
            if common:
                crop_cache(st.cache, common)
            else:
                st.cache = DynamicCache()
            st.ids = st.ids[:common]
        new = context[common:]
        ids = torch.tensor([new], device=self.device)
        pos = torch.arange(common, len(context), device=self.device)[None]
        out = self.model(input_ids=ids, past_key_values=st.cache, position_ids=pos, use_cache=True, logits_to_keep=1)
        st.ids = list(context)
        return out.logits[0, -1], len(new)

    def draft(self, tag: int, context: list[int]) -> tuple[TreeDraft, int]:
        """A tree for the tag's ``context`` (prompt + tokens so far); returns (tree, new tokens encoded)."""
        import torch

        with torch.inference_mode():
            root_logits, n_new = self.encode(tag, context)
            st = self.tags[tag]
            L = len(context)
            k = self.top_k
            scores, toks = root_logits.log_softmax(-1).topk(k)
            nodes_tok, nodes_par, nodes_dep, nodes_score = toks.tolist(), [-1] * k, [1] * k, scores.tolist()
            frontier = list(range(k))  # node indices of the current level
            forwarded: list[int] = []  # node index -> its column in the cache after the context
            col: dict[int, int] = {}
            for level in range(1, self.depth):
                rows = []
                for n in frontier:
                    col[n] = len(forwarded)
                    forwarded.append(n)
                    anc, p = [col[n]], nodes_par[n]
                    while p >= 0:
                        anc.append(col[p])
                        p = nodes_par[p]
                    rows.append(anc)
                mask = _rows_mask(L, rows, len(forwarded), self.device)
                ids = torch.tensor([[nodes_tok[n] for n in frontier]], device=self.device)
                pos = torch.full((1, len(frontier)), L - 1 + level, device=self.device)
                logits = self.model(input_ids=ids, past_key_values=st.cache, attention_mask=mask,
                                    position_ids=pos, use_cache=True).logits[0]
                child_scores, child_toks = logits.log_softmax(-1).topk(k, dim=-1)  # [k, k]
                base = torch.tensor([nodes_score[n] for n in frontier], device=self.device)
                cum = (base[:, None] + child_scores).reshape(-1)
                best = cum.topk(min(k, cum.numel())).indices.tolist()
                nxt = []
                for b in best:
                    parent = frontier[b // k]
                    nodes_tok.append(int(child_toks.reshape(-1)[b]))
                    nodes_par.append(parent)
                    nodes_dep.append(level + 1)
                    nodes_score.append(float(cum[b]))
                    nxt.append(len(nodes_tok) - 1)
                frontier = nxt
            crop_cache(st.cache, L)  # drop the tree: only the context stays cached
            # keep the best nodes; sorting by (score desc, depth, index) keeps parents first
            order = sorted(range(len(nodes_tok)), key=lambda i: (-nodes_score[i], nodes_dep[i], i))[: self.max_nodes]
            order.sort(key=lambda i: (nodes_dep[i], i))  # breadth first
            new_index = {old: new for new, old in enumerate(order)}
            tree = TreeDraft(
                tokens=[nodes_tok[i] for i in order],
                parents=[new_index[nodes_par[i]] if nodes_par[i] >= 0 else -1 for i in order],
                depths=[nodes_dep[i] for i in order],
            )
        return tree, n_new


class Verifier:
    """A target causal LM decoding one request at a time."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = None
        self.root: int | None = None  # the last emitted token, not yet in the cache

    def prefill(self, prompt: list[int]) -> int:
        """Encode the prompt; returns the first generated token (the target's greedy choice)."""
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prompt], device=self.device), past_key_values=self.cache,
                             use_cache=True, logits_to_keep=1)
        self.root = int(out.logits[0, -1].argmax())
        return self.root

    def step(self) -> int:
        """One plain greedy step (no draft): the autoregressive fallback."""
        import torch

        L = self.cache.get_seq_length()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([[self.root]], device=self.device), past_key_values=self.cache,
                             position_ids=torch.tensor([[L]], device=self.device), use_cache=True)
        self.root = int(out.logits[0, -1].argmax())
        return self.root

    def verify(self, tree: TreeDraft) -> RoundResult:
        """Verify ``tree`` (drafted after the current root) in one forward; greedy acceptance."""
        import torch

        L = self.cache.get_seq_length()
        T = len(tree.tokens)
        # the root is column 0 and every node's ancestor; node i is column 1 + i
        mask = tree_mask(L, [-1] + [1 + p if p >= 0 else 0 for p in tree.parents], self.device)
        ids = torch.tensor([[self.root, *tree.tokens]], device=self.device)
        pos = torch.tensor([[L] + [L + d for d in tree.depths]], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, past_key_values=self.cache, attention_mask=mask,
                                position_ids=pos, use_cache=True).logits[0]
        pred = logits.argmax(-1).tolist()
        children: dict[int, list[int]] = {}
        for i, p in enumerate(tree.parents):
            children.setdefault(p, []).append(i)
        path, cur = [], -1
        while True:
            want = pred[0 if cur < 0 else 1 + cur]
            nxt = next((c for c in children.get(cur, []) if tree.tokens[c] == want), None)
            if nxt is None:
                break
            path.append(nxt)
            cur = nxt
        bonus = pred[0 if cur < 0 else 1 + cur]
        keep = torch.tensor(list(range(L + 1)) + [L + 1 + c for c in path], device=self.device)
        _keep(self.cache, keep)  # the root and the accepted path stay cached
        emitted = [tree.tokens[c] for c in path] + [bonus]
        self.root = bonus
        return RoundResult(emitted=emitted, accepted=len(path), tree_tokens=T)


def greedy_generate(model, prompt: list[int], max_new: int, eos: int | None = None) -> list[int]:
    """Plain target-only greedy decoding (the reference speculative decoding must equal)."""
    v = Verifier(model)
    out = [v.prefill(prompt)]
    while len(out) < max_new and out[-1] != eos:
        out.append(v.step())
    return out


def local_drafts(drafter: Drafter, tag: int = 0):
    """``draft_next`` for :func:`speculative_generate` from a :class:`Drafter` in this process."""
    context: list[int] = []

    def draft_next(new: list[int], start: bool) -> TreeDraft:
        nonlocal context
        context = list(new) if start else context + list(new)
        return drafter.draft(tag, context)[0]

    return draft_next


def speculative_generate(
    target, draft_next, prompt: list[int], max_new: int, eos: int | None = None
) -> tuple[list[int], list[RoundResult]]:
    """Greedy speculative decoding of one request; returns (tokens, rounds).

    ``draft_next(new_tokens, start)`` returns the tree for the context so far, given the
    tokens emitted since the last call (the whole context, with ``start``, on the first):
    :func:`local_drafts`, or a draft server's client (:mod:`starsim.real.server`).
    """
    v = Verifier(target)
    out = [v.prefill(prompt)]
    rounds: list[RoundResult] = []
    new, start = prompt + out, True
    while len(out) < max_new and out[-1] != eos:
        r = v.verify(draft_next(new, start))
        rounds.append(r)
        new, start = r.emitted, False
        for t in r.emitted:
            out.append(t)
            if len(out) >= max_new or t == eos:
                break
    return out, rounds
