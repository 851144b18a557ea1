"""A decoder's KV cache size per token, from its config: one formula for calibration (GPU
capacity from a ``config.json``) and the real draft server (its draft's memory, from the
loaded model's config), which may not import each other."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial


def kv_bytes_per_token(cfg, dtype_bytes: int = 2) -> int:
    """A decoder's KV bytes per token: keys and values of every layer (``num_hidden_layers``),
    for each KV head (``num_key_value_heads`` under GQA, else every attention head), of
    ``head_dim`` (else ``hidden_size / num_attention_heads``), ``dtype_bytes`` each.

    ``cfg``: a config dict (a ``config.json``) or a config object read by attribute (a
    transformers ``PretrainedConfig``, whose attribute map also names a family's own keys)."""
    if isinstance(cfg, Mapping):
        need, opt = cfg.__getitem__, cfg.get
    else:
        need, opt = partial(getattr, cfg), lambda key: getattr(cfg, key, None)
    heads = int(need("num_attention_heads"))
    kv = int(opt("num_key_value_heads") or heads)
    hd = int(opt("head_dim") or int(need("hidden_size")) // heads)
    return 2 * int(need("num_hidden_layers")) * kv * hd * dtype_bytes
