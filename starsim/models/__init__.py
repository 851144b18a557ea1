"""Model specs and building a model from a config (below ``calibrate/`` and ``real/``, which both use them)."""
