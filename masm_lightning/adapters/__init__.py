"""MASM subspace adapters for any torch model with ``nn.Linear`` layers. Imports torch only."""

from .config import MASMConfig
from .inject import find_targets, inject_adapters, iter_adapters, merge_adapters, unload_adapters
from .layer import ArtifactSubspace, MASMLinear
from .regularizers import orthogonality_loss, spectral_consistency_loss

__all__ = [
    "ArtifactSubspace",
    "MASMConfig",
    "MASMLinear",
    "find_targets",
    "inject_adapters",
    "iter_adapters",
    "merge_adapters",
    "orthogonality_loss",
    "spectral_consistency_loss",
    "unload_adapters",
]
