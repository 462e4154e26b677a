"""Lightning callbacks; they find adapters through ``iter_adapters`` and never import the detector."""

from .layer_mask import SelectiveLayerMask

__all__ = ["SelectiveLayerMask"]
