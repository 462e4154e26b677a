"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector.

Names load on first use, so ``masm_lightning.callbacks.mask_policy`` (pure torch) can be imported without Lightning
or the data stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SelectiveLayerMask", "VideoPredictionWriter"]


def __getattr__(name: str) -> Any:
    if name == "SelectiveLayerMask":
        from .layer_mask import SelectiveLayerMask

        return SelectiveLayerMask
    if name == "VideoPredictionWriter":
        from .predictions import VideoPredictionWriter

        return VideoPredictionWriter
    raise AttributeError(f"module 'masm_lightning.callbacks' has no attribute {name!r}")
