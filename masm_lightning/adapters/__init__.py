"""MASM subspace adapters for any torch model with ``nn.Linear`` or pointwise ``nn.Conv2d`` layers; torch only."""

from .config import TARGET_PRESETS, MASMConfig, family_targets
from .inject import (
    inject_adapters,
    iter_adapters,
    merge_adapters,
    route_subspaces,
    select_targets,
    unload_adapters,
)
from .layer import ArtifactSubspace, MASMAdapter, MASMConv2d, MASMLinear
from .regularizers import SubspaceConstraints, apply_constraints, constraint_metrics

__all__ = [
    "TARGET_PRESETS",
    "ArtifactSubspace",
    "MASMAdapter",
    "MASMConfig",
    "MASMConv2d",
    "MASMLinear",
    "SubspaceConstraints",
    "apply_constraints",
    "constraint_metrics",
    "family_targets",
    "inject_adapters",
    "iter_adapters",
    "merge_adapters",
    "route_subspaces",
    "select_targets",
    "unload_adapters",
]
