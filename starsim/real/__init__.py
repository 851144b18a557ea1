"""The real backend: a draft server and target workers that talk over TCP.

:mod:`starsim.real.protocol` is the wire format (versioned, length-prefixed frames with a
msgpack header and raw tensor bytes; never pickle). The server and workers come later.
"""
