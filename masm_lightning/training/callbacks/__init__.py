"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector.

Names load on first use, so ``masm_lightning.adapters.gsnr`` (pure torch) can be imported without Lightning
or the data stack.
"""

from __future__ import annotations

from ...io import lazy_exports

__all__ = ["RandomSubspaceMask", "RobustnessSweep", "RunReport", "SelectiveLayerMask", "VideoPredictionWriter"]

_HOMES = {
    "RandomSubspaceMask": "random_mask",
    "RobustnessSweep": "robustness",
    "RunReport": "report",
    "SelectiveLayerMask": "layer_mask",
    "VideoPredictionWriter": "predictions",
}


__getattr__ = lazy_exports(__name__, _HOMES)
