"""The real backend: a draft server and target workers that talk over TCP.

- :mod:`~starsim.real.protocol`: the wire format (versioned, length-prefixed frames with a
  msgpack header and raw tensor bytes; never pickle);
- the draft server: :mod:`~starsim.real.server` (:class:`DraftServer` and its connections'
  threads), :mod:`~starsim.real.door` (admission), :mod:`~starsim.real.draft_engine` (the
  engine thread: batching, pipelining, draft memory), :mod:`~starsim.real.request_checks`
  (what a target's messages must hold), :mod:`~starsim.real.server_options` (its options and
  limits);
- the target's side: :mod:`~starsim.real.client` (its connection to a draft server) and
  :mod:`~starsim.real.worker` (running requests and writing the simulator's rows);
- :mod:`~starsim.real.speculation` (drafting and verifying trees with torch models) and
  :mod:`~starsim.real.execute` (``starsim execute``: a whole scenario, in processes).
"""
