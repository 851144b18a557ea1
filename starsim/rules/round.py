"""A target's round: how many tokens it emits, when its next token is due, whether the draft's
pipelined tree for it can be used, and what a pipelined tree that could not cost."""

from __future__ import annotations


def emitted(accepted: int, generated: int, output: int) -> int:
    """Tokens a round adds to its request: the ``accepted`` draft tokens and the target's own
    (bonus) token, but no more than the request still wants (``output`` minus the
    ``generated`` so far). An end-of-sequence token may end it sooner (the real backend's
    models; the simulator's requests end by length)."""
    left = output - generated
    return accepted + 1 if accepted + 1 < left else left


def token_due(t_first: float, tpot_slo_s: float, generated: int) -> float:
    """When a request's next token is due under its TPOT objective: ``generated`` tokens so far,
    the first at ``t_first``, one every ``tpot_slo_s`` after it (deadline draft policies order
    tasks by it)."""
    return t_first + tpot_slo_s * generated


def pipelined_hit(took_path: bool, goes_on: bool, bonus_offered: bool = True) -> bool:
    """Whether the tree the draft pipelined (drafted during the verify, assuming the last tree's
    main path is accepted whole) is the target's next tree: it took that whole path
    (``took_path``), the request wants more tokens after this round (``goes_on``), and the
    pipelined tree holds the target's bonus token among its first level (``bonus_offered``:
    the next tree is the part under it). Otherwise the pipelined tree is a miss: dropped
    unstarted, or its draft time wasted."""
    return took_path and goes_on and bonus_offered


def wasted_draft_s(start: float, end: float, sequences: int, batch_sequences: int) -> float:
    """The draft time a missed pipelined tree wasted: the forward it was drafted in (``start`` to
    ``end``), by its share of that forward's sequences (``sequences`` of ``batch_sequences``;
    drafted alone, the whole forward). A tree dropped before its forward started wasted none."""
    return (end - start) * sequences / batch_sequences
