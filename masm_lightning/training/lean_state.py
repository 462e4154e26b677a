"""Lean checkpoint state: what training changed (the trainable tensors, and BatchNorm statistics where training
updates them), plus the identity of the frozen base (name, settings, weight fingerprint) under the ``masm`` key.

The frozen backbone and the adapters' initial factors are not saved: ``configure_model`` rebuilds them from the base
weights, which the fingerprint pins (Lightning's documented ``state_dict``/``strict_loading`` pattern).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..errors import IncompatibleCheckpointError, InvalidInputError
from .backbone import norm_statistic_keys

__all__ = [
    "CHECKPOINT_KEY",
    "base_record",
    "check_fingerprint",
    "check_trained_keys",
    "drop_untrained",
    "normalise_keys",
    "saved_base",
    "trained_keys",
]

CHECKPOINT_KEY = "masm"
_KEY_PREFIXES = ("module.", "model.")


def trained_keys(module: nn.Module, backbone: nn.Module | None, norm_stats_frozen: bool) -> set[str]:
    """The trainable parameters, and the BatchNorm statistics when training updates them; the frozen backbone and
    the adapters' initial factors are rebuilt from the base weights (pinned by the fingerprint) in
    ``configure_model``."""
    keys = {name for name, p in module.named_parameters() if p.requires_grad}
    if backbone is not None and not norm_stats_frozen:
        keys |= set(norm_statistic_keys(backbone))
    return keys


def drop_untrained(full: dict[str, Any], prefix: str, keep: set[str]) -> None:
    """Delete from a state dict (in place) the entries under ``prefix`` that are not in ``keep``; only those: ``full``
    may be a parent's shared destination dict."""
    for key in [k for k in full if k.startswith(prefix) and k[len(prefix) :] not in keep]:
        del full[key]


def normalise_keys(state_dict: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    """Strip ``module.`` / ``model.`` prefixes (DataParallel, other trainers) where the bare key is ours."""
    out = {}
    for key, value in state_dict.items():
        bare = key
        while bare not in known and bare.startswith(_KEY_PREFIXES):
            bare = bare.split(".", 1)[1]
        out[bare if bare in known else key] = value
    return out


def check_trained_keys(
    given: Iterable[str], known: set[str], trained: set[str], strict: bool, model: str
) -> tuple[list[str], list[str]]:
    """The trained keys a state dict lacks and the keys it has that the model does not (sorted).

    Raises:
        IncompatibleCheckpointError: with ``strict``, when either list is not empty; ``model`` describes the model.
    """
    given = set(given)
    missing = sorted(trained - given)
    unexpected = sorted(given - known)
    if strict and (missing or unexpected):
        raise IncompatibleCheckpointError(
            f"checkpoint does not fit this MASMDetector ({model}): missing {len(missing)} trained keys {missing[:3]}, "
            f"unexpected {len(unexpected)} keys {unexpected[:3]}"
        )
    return missing, unexpected


def base_record(
    backbone: str,
    backbone_kwargs: dict[str, Any],
    fingerprint: str | None,
    adapters: dict[str, Any] | None,
    data_config: dict[str, Any],
    forgery_types: Iterable[str],
    routed_types: list[str] | None,
    selected_layers: Iterable[str] | None,
    selection_scores: dict[str, float] | None,
) -> dict[str, Any]:
    """What a checkpoint records under :data:`CHECKPOINT_KEY`: the base's identity, the adapters, the input, the
    forgery-type vocabulary and routing, and FMSD's chosen layers (``selected_layers`` None: no selection)."""
    return {
        "backbone": backbone,
        "backbone_kwargs": backbone_kwargs,
        "fingerprint": fingerprint,
        "adapters": adapters,
        "data_config": data_config,
        "forgery_types": list(forgery_types),
        "routed_types": routed_types,
        "selection": None if selected_layers is None else {"layers": list(selected_layers), "scores": selection_scores},
    }


def saved_base(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`CHECKPOINT_KEY` record of a checkpoint; empty for one written without it."""
    return dict(checkpoint.get(CHECKPOINT_KEY, {}))


def check_fingerprint(checkpoint: Mapping[str, Any], backbone: str, fingerprint: str | None) -> None:
    """Refuse to load a checkpoint onto a base whose weights differ from the ones it was trained on.

    Raises:
        InvalidInputError: naming both bases and fingerprints.
    """
    saved = saved_base(checkpoint).get("fingerprint")
    if saved is not None and fingerprint is not None and saved != fingerprint:
        raise InvalidInputError(
            f"checkpoint was trained on a {checkpoint[CHECKPOINT_KEY]['backbone']!r} backbone with weight "
            f"fingerprint {saved}, but this model's {backbone!r} backbone has {fingerprint}: "
            "load the same base weights as in training (model.pretrained / model.checkpoint_path)"
        )
