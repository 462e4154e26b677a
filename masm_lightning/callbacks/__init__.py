"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector."""

from .layer_mask import SelectiveLayerMask
from .predictions import VideoPredictionWriter
from .report import RunReport
from .robustness import RobustnessSweep

__all__ = ["RobustnessSweep", "RunReport", "SelectiveLayerMask", "VideoPredictionWriter"]
