"""A serving target's engine step, without a clock: which sequences one step runs.

The rules of vLLM's scheduler (v1), written once for the simulator (and, later, the real
backend's batched target): running sequences are scheduled first, in admission order, each
taking one tree to verify (or one token to decode) or the next chunk of its prefill; then
queued requests are admitted, first come first served, while a slot (``max_seqs``), the
step's token budget (``max_batched_tokens``, shared by prefill chunks and decode/verify
tokens) and the KV capacity allow. The head of the queue blocks those behind it.

KV, in tokens: a sequence holds its context (prompt and generated tokens). A step reserves
the slots its tokens write (a chunk; a tree and its root) and keeps those of the tokens the
sequence emits. Under ``preempt``, a sequence that cannot get its slots takes them from the
most recently admitted running one, which goes back to the head of the queue and later
recomputes its whole context (prompt and output so far) as a prefill (vLLM's preemption by
recompute); under ``wait``, a request is admitted only with its whole length reserved, so
nothing is ever preempted. A prefill's last chunk samples the next token (a request's first
token, or the next one after a recompute).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import StarsimError


class StepShape(NamedTuple):
    """What a step's price depends on (``serving.step_time``): every token in the forward,
    the tokens the LM head scores, the decoding sequences, the cached tokens they read, and
    the attention query x key pairs beyond a decode token's."""

    tokens: float = 0.0
    logits: float = 0.0
    seqs: float = 0.0
    kv: float = 0.0
    attn: float = 0.0

    def __add__(self, o: StepShape) -> StepShape:  # type: ignore[override]
        return StepShape(*(a + b for a, b in zip(self, o)))

    def times(self, n: float) -> StepShape:
        return StepShape(*(a * n for a in self))


def chunk_shape(tokens: float, cached: float, last: bool) -> StepShape:
    """A prefill chunk of ``tokens`` after ``cached`` ones (``last``: it ends the prefill, so its
    last token is scored)."""
    return StepShape(tokens, 1.0 if last else 0.0, 0.0, 0.0, tokens * (cached + tokens / 2.0))


def tree_shape(tokens: float, context: float) -> StepShape:
    """One decoding sequence verifying ``tokens`` (a tree and its root; 1: a decode token) at ``context``."""
    return StepShape(tokens, tokens, 1.0, context, (tokens - 1) * context)


class Seq:
    """One request on a serving target. ``todo``: the tokens its prefill computes (the prompt;
    after a preemption, its whole context); ``computed``: of them, done; ``ctx``: tokens in
    its KV once prefilled; ``kv``: slots it holds."""

    __slots__ = ("rid", "prompt", "output", "arrival", "owner", "row", "rows", "tag", "todo", "computed", "ctx",
                 "generated", "kv", "new", "preemptions")

    def __init__(self, rid: int, prompt: int, output: int, arrival: float, owner=None):
        self.rid, self.prompt, self.output, self.arrival, self.owner = rid, prompt, output, arrival, owner
        self.row = self.rows = self.tag = None  # the simulator's request row, round writer, draft cache key
        self.todo, self.computed, self.ctx, self.generated, self.kv = prompt, 0, 0, 0, 0
        self.new = 0  # tokens the draft has not seen yet (its next request sends them)
        self.preemptions = 0

    @property
    def prefilled(self) -> bool:
        return self.computed >= self.todo


@dataclass
class Step:
    """What one step runs: prefill chunks ``(seq, tokens)``, the sequences that verify a tree
    (or decode a token), the sequences it preempted, its shape for pricing, the KV slots in
    use at its peak and the requests it left queued."""

    @property
    def tokens(self) -> int:
        return int(self.shape.tokens)

    prefill: list[tuple[Seq, int]] = field(default_factory=list)
    verify: list[Seq] = field(default_factory=list)
    preempted: list[Seq] = field(default_factory=list)
    shape: StepShape = StepShape()
    kv_peak: int = 0
    waiting: int = 0  # requests left queued once it was scheduled

    def __bool__(self) -> bool:
        return bool(self.prefill or self.verify)


class StepScheduler:
    """One target's queue and running sequences (see the module docstring).

    ``per_round``: tokens a decoding sequence puts in a step (tree tokens + 1 with a draft,
    1 without); ``kv_capacity`` and ``budget`` None: unlimited; ``reserve_whole``: the
    ``wait`` policy."""

    def __init__(self, *, max_seqs: int, budget: int | None, kv_capacity: int | None, per_round: int,
                 reserve_whole: bool, where: str = "serving"):
        self.max_seqs, self.per_round, self.reserve_whole = max_seqs, per_round, reserve_whole
        self.budget = math.inf if budget is None else budget
        self.capacity = math.inf if kv_capacity is None else kv_capacity
        self.where = where  # the field path errors name
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.kv_used = 0

    # ------------------------------------------------------------------ queue

    def add(self, seq: Seq) -> None:
        self.waiting.append(seq)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting)

    def _whole(self, s: Seq) -> int:
        """The slots a request holds at most: its prompt and output, and one step's tokens."""
        return s.prompt + s.output + self.per_round

    # ------------------------------------------------------------------ one step

    def plan(self) -> Step:
        """The next step: running sequences first, then admissions (see the module docstring)."""
        step = Step()
        budget, reserved = self.budget, 0
        run, q = self.running, self.per_round
        n = 0
        for s in run:  # the leading decoding sequences (admission order: the prefilling ones come last)
            if s.computed < s.todo:
                break
            n += 1
        i = 0
        if n and n * q <= budget and (self.reserve_whole or self.kv_used + n * q <= self.capacity):
            # they all fit: what the loop below gives for them, in one go
            step.verify = run[:n]
            if not self.reserve_whole:
                reserved = n * q
            budget -= n * q
            i = n
        while i < len(self.running):
            s = self.running[i]
            if s.prefilled:
                need = self.per_round
                if need > budget:
                    i += 1
                    continue
                slots = 0 if self.reserve_whole else need
            else:
                need = min(s.todo - s.computed, budget)
                if need <= 0:
                    i += 1
                    continue
                slots = 0 if self.reserve_whole else need + (s.computed + need >= s.todo)
            if not self._room(slots, reserved, s, step):
                continue  # s itself was preempted: the list moved under i
            reserved += slots
            budget -= need
            self._add(step, s, need)
            i += 1
        self._admit(step, budget, reserved)
        self._price(step)
        return step

    def _room(self, slots: int, reserved: int, s: Seq, step: Step) -> bool:
        """Free ``slots`` for ``s`` by preempting from the end of the running list; False if
        ``s`` itself had to go."""
        while self.kv_used + reserved + slots > self.capacity:
            victim = self.running.pop()
            self._preempt(victim, step)
            if victim is s:
                if not self.running:
                    self._too_large(s)
                return False
        return True

    def _preempt(self, s: Seq, step: Step) -> None:
        self.kv_used -= s.kv
        s.kv, s.computed = 0, 0
        s.todo = s.prompt + s.generated  # recomputed from its whole context
        s.preemptions += 1
        step.preempted.append(s)
        self.waiting.appendleft(s)

    def _too_large(self, s: Seq) -> None:
        raise StarsimError(
            f"{self.where}: request {s.rid} ({s.prompt} prompt + {s.output} output tokens) does not fit the KV "
            f"capacity of {self.capacity:g} tokens even alone; raise the capacity or shorten the requests")

    def _admit(self, step: Step, budget: float, reserved: int) -> None:
        while self.waiting and len(self.running) < self.max_seqs and budget > 0:
            s = self.waiting[0]
            chunk = min(s.todo - s.computed, budget)
            if self.reserve_whole:
                slots = self._whole(s)
            else:
                slots = chunk + (s.computed + chunk >= s.todo)
            if self.kv_used + reserved + slots > self.capacity:
                if not self.running and not step:
                    self._too_large(s)
                break  # first come, first served: the head waits, and those behind it
            self.waiting.popleft()
            self.running.append(s)
            if self.reserve_whole:
                s.kv = slots
                self.kv_used += slots
            else:
                reserved += slots
            budget -= chunk
            self._add(step, s, chunk)
        step.kv_peak = self.kv_used + reserved
        step.waiting = len(self.waiting)

    def _add(self, step: Step, s: Seq, tokens: int) -> None:
        # a decoding sequence always puts per_round tokens in: its shape is summed once, in _price
        if s.prefilled:
            step.verify.append(s)
        else:
            step.prefill.append((s, tokens))

    def _price(self, step: Step) -> None:
        """The step's shape: its decoding sequences' trees (:func:`tree_shape`, summed in one
        go: a step of 64 sequences prices as fast as one of 1), then its prefill chunks."""
        q, n = self.per_round, len(step.verify)
        ctx = float(sum(s.ctx for s in step.verify))
        shape = StepShape(float(n * q), float(n * q), float(n), ctx, (q - 1) * ctx)
        for s, c in step.prefill:
            shape += chunk_shape(c, s.computed, s.computed + c >= s.todo)
        step.shape = shape

    def finish(self, step: Step, emitted: list[int]) -> list[Seq]:
        """The step ran: ``emitted[j]`` tokens for ``step.verify[j]``; prefill chunks are
        computed (a last chunk emits one token). Returns the sequences now done, released."""
        done = []
        grow = not self.reserve_whole
        for s, n in zip(step.verify, emitted):
            s.generated += n
            s.ctx += n
            s.new += n
            if grow:  # _grow, inline: once per sequence per step
                s.kv += n
            if s.generated >= s.output:
                done.append(s)
        if grow:
            self.kv_used += sum(emitted)
        for s, c in step.prefill:
            s.computed += c
            self._grow(s, c)
            if s.prefilled:
                # the draft has seen none of a new request, and all but this token of a recomputed one
                s.new = s.todo + 1 if s.generated == 0 else s.new + 1
                s.generated += 1
                s.ctx = s.todo + 1
                self._grow(s, 1)
                if s.generated >= s.output:
                    done.append(s)
        for s in done:
            self.running.remove(s)
            self.kv_used -= s.kv
            s.kv = 0
        return done

    def _grow(self, s: Seq, n: int) -> None:
        if not self.reserve_whole:
            s.kv += n
            self.kv_used += n


def step_row(target: int, index: int, step: Step, t_start: float, t_end: float, kv_capacity: float, *,
             trees: int, accepted: int, emitted: int, rounds: int) -> tuple:
    """A row of the steps table (:data:`starsim.records.STEP_COLUMNS`) for target ``target``'s
    step number ``index``, which ran ``step`` from ``t_start`` to ``t_end``: its batch, tokens and
    KV from the plan, then what it verified and emitted (both backends write it so)."""
    cap = -1 if math.isinf(kv_capacity) else int(kv_capacity)
    return (target, index, t_start, t_end, len(step.verify) + len(step.prefill), step.waiting, len(step.prefill),
            sum(c for _, c in step.prefill), len(step.verify), step.tokens, step.kv_peak, cap, len(step.preempted),
            trees, accepted, emitted, rounds)
