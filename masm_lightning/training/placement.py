"""Adapter placement on the backbone: on every target of the configuration, or on exactly the layers FMSD chose."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from ..adapters import MASMConfig, inject_adapters, iter_adapters, select_targets, unload_adapters
from ..adapters.svd import fused_parts
from ..errors import InvalidInputError

__all__ = ["candidate_layers", "inject_on_targets", "place_adapters", "selection_tails"]

_Result = TypeVar("_Result")


def _fitting(backbone_name: str, call: Callable[[], _Result]) -> _Result:
    """Run an adapter-library call on the backbone; its ``ValueError`` (targets matching nothing, ranks larger
    than a layer, a fused split that does not divide) is the user's config meeting this backbone: one line."""
    try:
        return call()
    except ValueError as error:
        raise InvalidInputError(f"model.adapters do not fit backbone {backbone_name!r}: {error}") from error


def inject_on_targets(backbone: nn.Module, config: MASMConfig, backbone_name: str) -> None:
    """Adapters on every layer the configuration targets (no FMSD selection)."""
    _fitting(backbone_name, lambda: inject_adapters(backbone, config))


def candidate_layers(backbone: nn.Module, config: MASMConfig, backbone_name: str) -> list[str]:
    """The layers the configuration targets: FMSD's candidates."""
    return _fitting(backbone_name, lambda: select_targets(backbone, config))


def selection_tails(candidates: list[str], config: MASMConfig) -> dict[str, tuple[int, int]]:
    """Per candidate, what injection will train: the trailing triplets of each (row block of a) layer."""
    tail = sum(config.ranks)
    return {name: (tail, fused_parts(name) if config.split_fused else 1) for name in candidates}


def place_adapters(backbone: nn.Module, config: MASMConfig, layers: list[str] | None, backbone_name: str) -> None:
    """Adapters on exactly ``layers`` (names inside the backbone), replacing any present; None injects none."""
    if [name for name, _ in iter_adapters(backbone)] == layers or layers is None:
        return
    unload_adapters(backbone)
    _fitting(
        backbone_name,
        lambda: inject_adapters(backbone, dataclasses.replace(config, targets=tuple(layers), blocks=None)),
    )
