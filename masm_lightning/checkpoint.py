"""Reading what ``fit`` saved: a checkpoint back into a detector, with the settings its training crops were made with.

A checkpoint of :class:`~masm_lightning.model.MASMDetector` holds only what training changed (trainable factors,
head) plus the base model's identity and weight fingerprint; the frozen weights are rebuilt from the base. The
data module's state (``state_dict``) records how the training faces were cropped (``face_crop``), so inference
crops the same way. Everything is read with ``torch.load(weights_only=True)``: a checkpoint cannot run code, and
a file that safe loading refuses is refused — the messages never suggest loading it unsafely.

Loads neither the video stack nor albumentations.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .data.settings import ExtractionSettings
from .errors import InvalidInputError
from .model import MASMDetector

__all__ = [
    "CheckpointError",
    "check_device",
    "extraction_settings",
    "face_crop_settings",
    "load_checkpoint",
    "read_checkpoint",
]

FACE_CROP_KEY = "face_crop"


class CheckpointError(InvalidInputError):
    """A path that is not a usable masm_lightning checkpoint (or export folder); the message says which and why."""


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, refusing one this machine does not have (before any checkpoint is read, so
    a missing GPU is not reported as a bad checkpoint).

    Raises:
        InvalidInputError: not a device name, or CUDA/MPS (or that CUDA index) is not available here.
    """
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidInputError(f"--device {device!r} is not a torch device (use cpu, cuda or cuda:N)") from error
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if target.index is not None and target.index >= count:
            raise InvalidInputError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return target


def _unreadable_reason(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in our words: torch's own message for refused pickles
    advises ``weights_only=False``, which would run whatever code the file holds."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text or "Unsupported global" in text:
        return "it holds Python objects that safe loading refuses (unpickling them could run code); it was not loaded"
    if "central directory" in text or "zip archive" in text or isinstance(error, (EOFError, OSError)):
        return "the file is truncated or is not a torch checkpoint (an interrupted copy or download?)"
    first = text.splitlines()[0] if text else type(error).__name__
    return f"torch cannot read it ({first})"


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
        raise CheckpointError(
            f"{str(path)!r} is not a readable masm_lightning checkpoint: {_unreadable_reason(error)}"
        ) from None
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
    target = check_device(device)
    checkpoint = read_checkpoint(path)
    try:
        model = MASMDetector.load_from_checkpoint(path, map_location=target, weights_only=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = str(error).split("\n")[0] if "weights_only" not in str(error) else _unreadable_reason(error)
        raise CheckpointError(f"{str(path)!r} does not load into MASMDetector: {reason}") from error
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
