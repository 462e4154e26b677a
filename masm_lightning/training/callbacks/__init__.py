"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector.

Names load on first use: importing one callback loads only what that callback needs (the figures' matplotlib, for
one, only with the callbacks that draw).
"""

from __future__ import annotations

from ...io import lazy_exports

__all__ = [
    "RandomSubspaceMask",
    "RobustnessSweep",
    "RunReport",
    "SelectiveLayerMask",
    "SubspaceEnergyMeans",
    "SubspaceTypeResponses",
    "VideoPredictionWriter",
]

_HOMES = {
    "RandomSubspaceMask": "random_mask",
    "RobustnessSweep": "robustness",
    "RunReport": "report",
    "SelectiveLayerMask": "layer_mask",
    "SubspaceEnergyMeans": "subspaces",
    "SubspaceTypeResponses": "subspaces",
    "VideoPredictionWriter": "predictions",
}


__getattr__ = lazy_exports(__name__, _HOMES)
