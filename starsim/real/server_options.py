"""What a :class:`~starsim.real.server.DraftServer` is told, beyond its drafter and address:
the scenario's draft options (:class:`ServerOptions`) and its limits (:class:`ServerLimits`),
each checked when it is made, each defaulting to what a plain star uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import protocol as P

# Connection limits (see starsim.real.door): a connection that has not completed its
# handshake holds no thread; a target that has holds one.
MAX_TARGETS = 256
MAX_PENDING = 1024
HANDSHAKE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServerOptions:
    """The engine's choices, as the simulator's ``draft`` section names them: the ``policy``
    that orders waiting tasks; batched drafting (up to ``batch_max`` waiting tasks in one
    forward, waiting up to ``batch_window_s`` for more when fewer wait); ``memory_bytes`` for
    the tags' draft caches (None: unlimited); ``pipeline``: draft each target's next tree while
    it verifies."""

    policy: str = "fifo"
    batch_max: int = 1
    batch_window_s: float = 0.0
    memory_bytes: int | None = None
    pipeline: bool = False

    def __post_init__(self):
        if self.batch_max < 1 or not self.batch_window_s >= 0 or (self.memory_bytes is not None
                                                                  and self.memory_bytes < 1):
            raise ValueError(f"batch_max must be >= 1, batch_window_s >= 0 and memory_bytes >= 1 or None, got "
                             f"{self.batch_max}, {self.batch_window_s}, {self.memory_bytes}")


@dataclass(frozen=True)
class ServerLimits:
    """What the server allows: a message's bytes (``max_bytes``), seconds a target waits for its
    tree (``timeout_s``), targets connected at once (``max_targets``, a thread each),
    connections waiting for their handshake (``max_pending``) and the seconds each may take to
    send its HELLO (``handshake_timeout_s``)."""

    max_bytes: int = P.MAX_MESSAGE_BYTES
    timeout_s: float = 60.0
    max_targets: int = MAX_TARGETS
    max_pending: int = MAX_PENDING
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S

    def __post_init__(self):
        if self.max_targets < 1 or self.max_pending < 1 or not 0 < self.handshake_timeout_s < math.inf:
            raise ValueError(f"max_targets and max_pending must be >= 1 and handshake_timeout_s a positive number, "
                             f"got {self.max_targets}, {self.max_pending}, {self.handshake_timeout_s}")
