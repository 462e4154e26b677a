"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector.

Names load on first use, so ``masm_lightning.callbacks.mask_policy`` (pure torch) can be imported without Lightning
or the data stack.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RandomSubspaceMask", "RobustnessSweep", "RunReport", "SelectiveLayerMask", "VideoPredictionWriter"]

_HOMES = {
    "RandomSubspaceMask": "random_mask",
    "RobustnessSweep": "robustness",
    "RunReport": "report",
    "SelectiveLayerMask": "layer_mask",
    "VideoPredictionWriter": "predictions",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'masm_lightning.callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
