"""MASM subspace adapters for any torch model with ``nn.Linear`` layers. Imports torch only."""

from .config import MASMConfig
from .inject import inject_adapters, iter_adapters, merge_adapters, unload_adapters
from .layer import ArtifactSubspace, MASMLinear
from .regularizers import SubspaceConstraints, apply_constraints, constraint_metrics

__all__ = [
    "ArtifactSubspace",
    "MASMConfig",
    "MASMLinear",
    "SubspaceConstraints",
    "apply_constraints",
    "constraint_metrics",
    "inject_adapters",
    "iter_adapters",
    "merge_adapters",
    "unload_adapters",
]
