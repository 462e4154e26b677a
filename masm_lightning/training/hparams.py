"""The model's hyper-parameter checks: each bad value is one user error naming the setting and what is allowed."""

from __future__ import annotations

from typing import Any

from ..adapters import MASMConfig, SubspaceConstraints
from ..errors import InvalidInputError
from .backbone import check_backbone_name
from .selection import LayerSelection

__all__ = ["check_hparams"]


def check_hparams(
    backbone: str,
    backbone_kwargs: dict[str, Any],
    adapters: MASMConfig | None,
    selection: LayerSelection | None,
    lambda_orth: float,
    lambda_spec: float,
    lambda_semantic: float,
    spectral_cap: float | None,
    threshold: float,
    image_size: int | None,
) -> SubspaceConstraints:
    """Check ``MASMDetector``'s settings, in the order a user reads them, and return the constraint strengths.

    Raises:
        InvalidInputError / ValueError: the first bad setting, with its value and what would be valid.
    """
    check_backbone_name(backbone)
    if selection is not None and adapters is None:
        raise InvalidInputError(
            "model.selection chooses where adapters go, but model.adapters is null: set adapters "
            "(its targets are the candidates) or drop selection"
        )
    for name, value in (
        ("lambda_orth", lambda_orth),
        ("lambda_spec", lambda_spec),
        ("lambda_semantic", lambda_semantic),
    ):
        if not 0 <= value < float("inf"):
            raise InvalidInputError(f"model.{name} must be a finite number >= 0, got {value}")
    if spectral_cap is not None and not spectral_cap > 0:
        raise InvalidInputError(f"model.spectral_cap must be > 0 or null (no cap), got {spectral_cap}")
    constraints = SubspaceConstraints(
        lambda_orth, lambda_spec, lambda_semantic, float("inf") if spectral_cap is None else spectral_cap
    )
    if not 0 < threshold < 1:
        raise InvalidInputError(f"model.threshold must be in (0, 1), got {threshold}")
    if image_size is not None and not image_size > 0:
        raise ValueError(f"model.image_size must be a positive number of pixels or null, got {image_size}")
    if image_size is not None and "img_size" in backbone_kwargs and image_size != backbone_kwargs["img_size"]:
        raise ValueError(
            f"model.image_size {image_size} disagrees with model.backbone_kwargs.img_size "
            f"{backbone_kwargs['img_size']}: set one of them"
        )
    return constraints
