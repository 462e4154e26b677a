"""Names of an evaluation stage's data loaders (the test sets), shared by the model, the reports and the sweep."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

__all__ = ["named_loaders"]


def named_loaders(loaders: Any, datamodule: Any) -> list[tuple[str, DataLoader]]:
    """An evaluation stage's loaders with their test-set names: the data module's ``test_names`` when they match
    the loaders one to one, else ``set0``, ``set1``, …"""
    loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    names = list(getattr(datamodule, "test_names", None) or [])
    if len(names) != len(loaders):
        names = [f"set{i}" for i in range(len(loaders))]
    return list(zip(names, loaders))
