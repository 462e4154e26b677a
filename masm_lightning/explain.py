"""Explanations of a detector's score (filled in below)."""

from __future__ import annotations

__all__ = ["ENERGY_KEY"]

# Where the training means of the subspace responses live: a checkpoint's top-level entry, an adapter config's key.
ENERGY_KEY = "subspace_energy"
