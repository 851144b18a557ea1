"""The rules of a round of the star, each written once, without a clock.

The simulator (``starsim.sim``, SimPy time) and the real backend (``starsim.real``, the
monotonic clock) both call these; each passes its own times in. Where one backend cannot
know an input the other measures (the simulator's trees are counts, not tokens), it says
which value it passes and why, at the call.

- emitted-token cap: :func:`.round.emitted`
- TPOT deadline: :func:`.round.token_due`
- pipelining, hit or miss, and the wasted draft: :func:`.round.pipelined_hit`, :func:`.round.wasted_draft_s`
- batch window: :func:`.batching.window_left`, :func:`.batching.take_batch`
- keep or leave a fabric server: :class:`.fabric.Seat`
- open-loop arrival schedule: :func:`.requests.open_loop_arrivals`
- closed-loop issuing and pause: :func:`.requests.closed_loop_turn`, :func:`.requests.pauses_first`
"""

from __future__ import annotations

from .batching import take_batch, window_left
from .fabric import Seat
from .requests import Arrival, closed_loop_turn, open_loop_arrivals, pauses_first
from .round import emitted, pipelined_hit, token_due, wasted_draft_s

__all__ = ["Arrival", "Seat", "closed_loop_turn", "emitted", "open_loop_arrivals", "pauses_first", "pipelined_hit",
           "take_batch", "token_due", "wasted_draft_s", "window_left"]
