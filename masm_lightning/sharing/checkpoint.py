"""Reading what ``fit`` saved: a checkpoint back into a detector, with the settings its training crops were made with.

A checkpoint of :class:`~masm_lightning.training.module.MASMDetector` holds only what training changed (trainable
factors, head) plus the base model's identity and weight fingerprint; the frozen weights are rebuilt from the base. The
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

from ..data.settings import ExtractionSettings
from ..errors import InvalidInputError, first_line
from ..training.module import CHECKPOINT_KEY, MASMDetector

__all__ = [
    "WEIGHT_SETTINGS",
    "CheckpointError",
    "check_device",
    "checkpoint_model_settings",
    "extraction_settings",
    "face_crop_settings",
    "is_lean",
    "load_checkpoint",
    "read_checkpoint",
]

FACE_CROP_KEY = "face_crop"
# The model settings that fix what a checkpoint's tensors mean (their shapes, the layers they sit in, the base they
# are added to): run under another value, the same tensors would be another model. A conflicting value is refused.
# Every other setting (threshold, the constraint strengths, where the base weights are read from: the fingerprint
# check verifies they are the same weights) is the user's to change, and the given value is used.
WEIGHT_SETTINGS = ("backbone", "backbone_kwargs", "backbone_seed", "adapters", "freeze_backbone", "freeze_norm_stats")


class CheckpointError(InvalidInputError):
    """A path that is not a usable masm_lightning checkpoint (or export folder); the message says which and why."""


def check_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device`` (None: ``cuda`` when available, else ``cpu``), refusing one this machine
    does not have (before any checkpoint is read, so a missing GPU is not reported as a bad checkpoint). The one
    device check of the package.

    Raises:
        InvalidInputError: not a device name, or CUDA/MPS (or that CUDA index) is not available here.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    return f"torch cannot read it ({first_line(error)})"


def _check_torch_file(path: Path) -> None:
    """A file that is neither a zip archive (``torch.save``) nor a pickle (its legacy format) is named for what it
    is (an image, a video, text), rather than described by what torch's unpickler makes of it."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {error.strerror or error}") from None
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return
    from ..data.video import sniff  # only here: it loads the video library

    kind = sniff(path)
    what = {"image": "an image", "video": "a video", "text": "a text file"}.get(kind, "not a torch file")
    raise CheckpointError(
        f"{str(path)!r} is not a checkpoint: it is {what}; pass a .ckpt written by `fit` or an `export` folder"
    )


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
    _check_torch_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise CheckpointError(
            f"{str(path)!r} is not a readable masm_lightning checkpoint: {_unreadable_reason(error)}"
        ) from None
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"{str(path)!r} is not a masm_lightning checkpoint (no {CHECKPOINT_KEY!r} and "
            "'hyper_parameters' entries); pass a checkpoint written by `fit`"
        )
    return checkpoint


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MASMDetector, dict[str, Any]]:
    """A :class:`~masm_lightning.training.module.MASMDetector` in eval mode and the raw checkpoint dict.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a masm_lightning checkpoint (the message names
            the path and why).
    """
    target = check_device(device)
    checkpoint = read_checkpoint(path)
    try:
        model = MASMDetector.load_from_checkpoint(path, map_location=target, weights_only=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = first_line(error) if "weights_only" not in str(error) else _unreadable_reason(error)
        raise CheckpointError(f"{str(path)!r} does not load into MASMDetector: {reason}") from error
    return model.eval(), checkpoint


def is_lean(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a ``fit`` checkpoint is a lean one (``best.ckpt``: weights for inference, no optimizer state), which
    ``test``/``detect``/``export`` read but a resumed ``fit`` cannot continue from."""
    return "optimizer_states" not in checkpoint


def _plain(value: Any) -> Any:
    """Comparable plain data: jsonargparse Namespaces as dicts, tuples as lists (YAML gives lists)."""
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _conflicts(key: str, given: Any, saved: Any) -> bool:
    """Whether a given value changes what the checkpoint's weights mean (only :data:`WEIGHT_SETTINGS` can)."""
    if key == "selection":  # FMSD: only the chosen layers matter once chosen; the scoring settings do not
        layers = given.get("layers") if isinstance(given, Mapping) else None
        chosen = saved.get("layers") if isinstance(saved, Mapping) else None
        return layers is not None and chosen is not None and layers != chosen
    if key not in WEIGHT_SETTINGS:
        return False
    if key == "adapters" and isinstance(given, Mapping) and isinstance(saved, Mapping):  # the fields given
        return any(saved.get(field) != value for field, value in given.items())
    return given != saved


def checkpoint_model_settings(
    saved: Mapping[str, Any], given: Mapping[str, Any], configured: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], list[str]]:
    """The model settings to run a checkpoint under, and what to tell the user about them.

    ``saved`` are the checkpoint's hyper-parameters, ``given`` the model settings the config files and command line
    set explicitly, ``configured`` the settings the run would use without the checkpoint (defaults included). A
    setting not given comes from the checkpoint; a given one that agrees is silent; a given one that differs is
    used if it does not change what the weights mean (the threshold, constraint strengths, the base weights'
    location), and refused otherwise (:data:`WEIGHT_SETTINGS`; FMSD's chosen layers).

    Returns:
        The settings (the checkpoint's, with the given values that are kept) and one line per setting that came
        from the checkpoint with a value the configuration did not have, or that the configuration overrides.

    Raises:
        CheckpointError: a given value conflicts with the checkpoint; the message names both values.
    """
    settings: dict[str, Any] = {}
    lines: list[str] = []
    for key, saved_value in saved.items():
        if key.startswith("_"):  # LightningCLI's own entries (_instantiator, _class_path)
            continue
        saved_plain = _plain(saved_value)
        if key not in given:
            settings[key] = saved_value
            if key in configured and _plain(configured[key]) != saved_plain:
                lines.append(
                    f"  {key}: {saved_plain!r} (from the checkpoint; the configuration had {_plain(configured[key])!r})"
                )
            continue
        given_plain = _plain(given[key])
        if _conflicts(key, given_plain, saved_plain):
            raise CheckpointError(
                f"model.{key} {given_plain!r} conflicts with {key} {saved_plain!r} in checkpoint {source!r}: it "
                "defines what the saved weights mean; remove it from the config and command line (the checkpoint's "
                "value is then used) or use a checkpoint trained with it"
            )
        if isinstance(saved_plain, Mapping) and isinstance(given_plain, Mapping):
            merged = {**saved_plain, **given_plain}
            settings[key] = merged
            changed = merged != saved_plain
        else:
            settings[key] = given_plain
            changed = given_plain != saved_plain
        if changed:
            lines.append(f"  {key}: {given_plain!r} (given; the checkpoint has {saved_plain!r})")
    return settings, lines


def _recorded_face_crop(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The face-crop record: in the data module's state (Lightning keys it by the data module's class name), or
    under :data:`~masm_lightning.training.module.CHECKPOINT_KEY` in checkpoints written before it moved there."""
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
