"""Reading what ``fit`` saved: a checkpoint back into a detector, with the settings its training crops were made with.

A checkpoint of :class:`~masm_lightning.model.MASMDetector` holds only what training changed (trainable factors,
head) plus the base model's identity and weight fingerprint; the frozen weights are rebuilt from the base. The
data module's state (``state_dict``) records how the training faces were cropped (``face_crop``), so inference
crops the same way. Everything is read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.

Loads neither the video stack nor albumentations.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .data.settings import ExtractionSettings
from .model import MASMDetector

__all__ = ["CheckpointError", "extraction_settings", "face_crop_settings", "load_checkpoint", "read_checkpoint"]

FACE_CROP_KEY = "face_crop"


class CheckpointError(ValueError):
    """A path that is not a usable masm_lightning checkpoint (or export folder); the message says which and why."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict of a ``fit`` checkpoint, read safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, unreadable, or not a masm_lightning checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a file (expected a .ckpt written by `fit`, or an `export` folder)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not a checkpoint
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds Python objects that safe loading refuses (it may run code when unpickled)"
        raise CheckpointError(f"{str(path)!r} is not a readable masm_lightning checkpoint: {reason}") from None
    if not isinstance(checkpoint, dict) or "masm" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{str(path)!r} is not a masm_lightning checkpoint (no 'masm' and "
            "'hyper_parameters' entries); pass a checkpoint written by `fit`"
        )
    return checkpoint


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MASMDetector, dict[str, Any]]:
    """A :class:`~masm_lightning.model.MASMDetector` in eval mode and the raw checkpoint dict.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a masm_lightning checkpoint (the message names
            the path and why).
    """
    checkpoint = read_checkpoint(path)
    try:
        model = MASMDetector.load_from_checkpoint(path, map_location=device, weights_only=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{str(path)!r} does not load into MASMDetector: {error}") from error
    return model.eval(), checkpoint


def _recorded_face_crop(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The face-crop record: in the data module's state (Lightning keys it by the data module's class name), or
    under ``masm`` in checkpoints written before it moved there."""
    for value in checkpoint.values():
        if isinstance(value, Mapping) and isinstance(value.get(FACE_CROP_KEY), Mapping):
            return dict(value[FACE_CROP_KEY])
    return None


def face_crop_settings(checkpoint: Mapping[str, Any], source: str | Path) -> ExtractionSettings:
    """The extraction settings the training crops were made with; the defaults, with a warning, for checkpoints
    that do not record them (trained on crops of unknown origin)."""
    saved = _recorded_face_crop(checkpoint)
    if saved is None:
        warnings.warn(
            f"{source}: the checkpoint does not record its face-crop settings; using the extraction "
            f"defaults {dataclasses.asdict(ExtractionSettings())}",
            stacklevel=2,
        )
        return ExtractionSettings()
    return extraction_settings(saved)


def extraction_settings(saved: Mapping[str, Any]) -> ExtractionSettings:
    """:class:`ExtractionSettings` from a saved dict, ignoring fields this version does not know."""
    known = {f.name for f in dataclasses.fields(ExtractionSettings)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    return ExtractionSettings(**values)
