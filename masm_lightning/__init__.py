"""MASM: multi-artifact subspace fine-tuning with selective layer masking, for deepfake detection."""

from .adapters import MASMConfig, inject_adapters, merge_adapters

__all__ = ["MASMConfig", "inject_adapters", "merge_adapters"]
__version__ = "0.1.0"
