"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector."""

from .layer_mask import SelectiveLayerMask
from .predictions import VideoPredictionWriter

__all__ = ["SelectiveLayerMask", "VideoPredictionWriter"]
