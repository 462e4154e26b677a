"""MASM: multi-artifact subspace fine-tuning with selective layer masking, for deepfake detection."""

from __future__ import annotations

from . import moved
from .adapters import MASMConfig, inject_adapters, merge_adapters
from .io import lazy_exports

__all__ = ["Detector", "MASMConfig", "MASMDetector", "SelectiveLayerMask", "inject_adapters", "merge_adapters"]
__version__ = "0.1.0"

moved.install()  # the previous layout's module names (configs, run folders) import as the modules they moved to


# Lightning-based names load on first use, so `import masm_lightning.adapters` stays torch-only; the video stack
# (PyAV, MTCNN) loads only when `Detector` is asked for.
__getattr__ = lazy_exports(
    __name__,
    {"MASMDetector": "training.module", "Detector": "inference.detector", "SelectiveLayerMask": "training.callbacks"},
)
