"""The SimPy model of the star topology (draft engine, targets, links, devices)."""

from .run import simulate

__all__ = ["simulate"]
