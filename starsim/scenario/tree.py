"""The draft's token tree (``draft.tree``)."""

from __future__ import annotations

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from ..acceptance import Shape
from .base import _Model
from .limits import MAX_TREE_DEPTH, MAX_TREE_TOKENS, MAX_TREE_TOP_K


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
