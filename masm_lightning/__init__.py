"""MASM: multi-artifact subspace fine-tuning with selective layer masking, for deepfake detection."""

from __future__ import annotations

from typing import Any

from .adapters import MASMConfig, inject_adapters, merge_adapters

__all__ = ["Detector", "MASMConfig", "MASMDetector", "SelectiveLayerMask", "inject_adapters", "merge_adapters"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lightning-based names load on first use, so `import masm_lightning.adapters` stays torch-only.
    if name == "MASMDetector":
        from .model import MASMDetector

        return MASMDetector
    if name == "Detector":  # the video stack (PyAV, MTCNN) loads only when it is asked for
        from .detector import Detector

        return Detector
    if name == "SelectiveLayerMask":
        from .callbacks import SelectiveLayerMask

        return SelectiveLayerMask
    raise AttributeError(f"module 'masm_lightning' has no attribute {name!r}")
