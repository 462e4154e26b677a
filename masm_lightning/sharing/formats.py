"""The two folder formats ``export`` writes, and the one reader of every model source.

Plain export (``masm_lightning.sharing.export.export_model``)::

    model.safetensors   the timm model's state dict, our head as timm's ``head`` (num_classes=2: real, fake)
    config.json         timm name and kwargs, input size, mean/std, interpolation, face-crop settings, threshold

Adapter export (``export_adapter``), the way fine-tunes are shared on the hub::

    adapter_model.safetensors   what training changed only: the artifact factors (U, s, V) and the head
    adapter_config.json         base model (timm name, kwargs, weights source, fingerprint), the detector's
                                hyper-parameters, FMSD layers, input config, face-crop settings, threshold
    README.md                   model card (:mod:`masm_lightning.sharing.model_card`)

Loading an adapter folder (:func:`load_adapter`) rebuilds the base from its source (timm pretrained weights, a
``checkpoint_path`` file, or the recorded seed of a random-init demo base), re-injects the adapters (the SVD of the
base reproduces every frozen part) and loads the factors; a base whose fingerprint differs from the recorded one is
refused. :func:`load_exported` needs timm and safetensors only (docs/inference.md, "Sharing a model").

:func:`load_model` is the one reader of every model source (a hub id, an adapter folder, an export folder, a
``fit`` checkpoint): the detector and the explanations both load through it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from ..data.settings import ExtractionSettings
from ..errors import first_line
from ..training.callbacks.subspaces import ENERGY_KEY
from ..training.module import MASMDetector
from .checkpoint import CheckpointError, extraction_settings, face_crop_settings, load_checkpoint
from .hub import is_hub_id

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT",
    "ADAPTER_WEIGHTS_NAME",
    "CARD_NAME",
    "CONFIG_NAME",
    "FORMAT",
    "WEIGHTS_NAME",
    "LoadedModel",
    "is_adapter_folder",
    "load_adapter",
    "load_exported",
    "load_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "masm_lightning.export/1"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
ADAPTER_FORMAT = "masm_lightning.adapter/1"


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``export --adapter``."""
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def _check_hparams(folder: Path, hparams: dict[str, Any]) -> None:
    """Each of ``hparams``' scalar settings has the type the detector takes (a hand edit such as
    ``"threshold": "high"`` is refused naming the field, not met as a ``TypeError`` deep inside)."""
    parameters = inspect.signature(MASMDetector.__init__).parameters
    unknown = sorted(set(hparams) - set(parameters) - {"self"})
    if unknown:
        raise CheckpointError(
            f"adapter folder {str(folder)!r}: {ADAPTER_CONFIG_NAME} hparams has unknown field(s) {unknown}"
        )
    for name, value in hparams.items():
        default, annotation = parameters[name].default, str(parameters[name].annotation)
        if value is None and "None" in annotation:
            continue
        if isinstance(default, bool):
            ok, takes = isinstance(value, bool), "true or false"
        elif isinstance(default, int | float):
            ok, takes = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            raise CheckpointError(
                f"adapter folder {str(folder)!r}: {ADAPTER_CONFIG_NAME} hparams.{name} is {value!r}, but it takes "
                f"{takes}{' (or null)' if 'None' in annotation else ''}"
            )


# Entries of adapter_config.json that repeat a setting of `hparams` for readers (the hub's convention of a
# `base_model` block): the model is built from `hparams` alone, so a copy that says otherwise is refused.
_MIRRORS = (
    ("base_model.name", "backbone"),
    ("base_model.kwargs", "backbone_kwargs"),
    ("base_model.pretrained", "pretrained"),
    ("base_model.checkpoint_path", "checkpoint_path"),
    ("base_model.backbone_seed", "backbone_seed"),
    ("adapters", "adapters"),
    ("threshold", "threshold"),
)


def _check_mirror(folder: Path, field: str, value: Any, source: str, truth: Any) -> None:
    value, truth = json.loads(json.dumps(value)), json.loads(json.dumps(truth))
    if isinstance(value, dict) and isinstance(truth, dict):  # name the entry that differs
        for key in sorted(set(value) | set(truth)):
            _check_mirror(folder, f"{field}.{key}", value.get(key), f"{source}.{key}", truth.get(key))
    elif value != truth:
        raise CheckpointError(
            f"adapter folder {str(folder)!r}: {ADAPTER_CONFIG_NAME} says {field} = {json.dumps(value)}, but "
            f"{source} = {json.dumps(truth)}: the model is built from hparams; make {field} agree with it (or "
            "export the checkpoint again)"
        )


def _check_mirrors(folder: Path, config: dict[str, Any], hparams: dict[str, Any]) -> None:
    for field, name in _MIRRORS:
        section, _, key = field.rpartition(".")
        where = config.get(section) if section else config
        if isinstance(where, dict) and key in where:
            _check_mirror(folder, field, where[key], f"hparams.{name}", hparams.get(name))


def load_adapter(
    folder: str | Path, device: str | torch.device = "cpu", base_checkpoint: str | None = None
) -> tuple[MASMDetector, dict[str, Any]]:
    """The detector of an adapter folder (eval mode, on ``device``, adapters not merged) and its config.

    The base is rebuilt from what ``adapter_config.json`` names (timm pretrained weights, a ``checkpoint_path``
    file, or a seeded random init); ``base_checkpoint`` points at a local copy of the base weights instead.

    Raises:
        CheckpointError: the folder is not an adapter folder, the base cannot be built, or its fingerprint differs
            from the one the adapters were trained on (the message names both).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_adapter_folder(folder) or not (folder / ADAPTER_WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{str(folder)!r} is not an adapter folder: it needs {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME} "
            "(written by `python -m masm_lightning export --adapter`)"
        )
    try:
        config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
        hparams = dict(config["hparams"])
        base = config["base_model"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"adapter folder {str(folder)!r}: {ADAPTER_CONFIG_NAME} is unreadable ({error})"
        ) from None
    if config.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(
            f"adapter folder {str(folder)!r} has format {config.get('format')!r}; this version reads {ADAPTER_FORMAT!r}"
        )
    _check_hparams(folder, hparams)
    _check_mirrors(folder, config, hparams)
    if base_checkpoint is not None:
        hparams["checkpoint_path"] = base_checkpoint
    where = hparams.get("checkpoint_path") or (
        f"timm pretrained {hparams.get('backbone')!r}"
        if hparams.get("pretrained")
        else f"random init, seed {hparams.get('backbone_seed')}"
    )
    try:
        model = MASMDetector(**hparams)
        model.configure_model()
    except (OSError, RuntimeError, ValueError, TypeError) as error:  # no file, no hub, weights that do not fit
        raise CheckpointError(
            f"adapter folder {str(folder)!r}: cannot build its base from {where}: {first_line(error)}"
        ) from None
    _check_mirror(folder, "input", config.get("input"), "the built model's input", model.data_config)
    if "selection" in config:  # the FMSD layers, a copy of hparams.selection.layers
        layers = list(model.selection.layers or ()) if model.selection is not None else []
        _check_mirror(folder, "selection", config["selection"], "hparams.selection.layers", layers or None)
    if model.fingerprint != base["fingerprint"]:
        raise CheckpointError(
            f"adapter folder {str(folder)!r} was trained on base {base['name']!r} with weight fingerprint "
            f"{base['fingerprint']}, but the base built from {where} has fingerprint {model.fingerprint}: "
            "load the same base weights (pass the right base checkpoint)"
        )
    try:
        model.load_state_dict(load_file(str(folder / ADAPTER_WEIGHTS_NAME)), strict=True)
    except (RuntimeError, OSError) as error:
        raise CheckpointError(f"adapter folder {str(folder)!r} does not load: {error}") from None
    return model.eval().to(device), config


def load_exported(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The timm model of an export folder (eval mode, on ``device``) and its ``config.json``.

    Raises:
        CheckpointError: the folder lacks ``config.json``/``model.safetensors`` or they do not fit each other.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{str(folder)!r} is not an export folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by `python -m masm_lightning export`)"
        )
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        model = timm.create_model(
            config["architecture"], pretrained=False, num_classes=config["num_classes"], **config["model_kwargs"]
        )
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    except (json.JSONDecodeError, KeyError, RuntimeError, OSError) as error:
        raise CheckpointError(f"export folder {str(folder)!r} does not load: {error}") from error
    return model.eval().to(device), config


@dataclasses.dataclass
class LoadedModel:
    """A model as :func:`load_model` read it, whatever its source, with what scoring it needs."""

    kind: Literal["checkpoint", "adapter", "export"]
    model: nn.Module  # a MASMDetector (adapters not merged) or, for an export folder, the timm model
    input: dict[str, Any]  # image_size, mean, std, interpolation: the backbone's resize and normalisation
    face_crop: ExtractionSettings  # how the training crops were made
    threshold: float
    source: Path  # the file or folder read (a hub id's local folder)
    energy_means: dict[str, Any] | None = None  # the training means of the subspace responses, where recorded


def load_model(source: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read any model source, tried in this order: ``hf-hub:ORG/NAME`` (downloaded, or the local cache with
    ``HF_HUB_OFFLINE=1``; then read as the folder it is), an adapter folder (``adapter_config.json``: the base
    rebuilt and fingerprint-checked), an export folder, else a ``fit`` checkpoint file.

    Raises:
        CheckpointError: ``source`` is none of these (the message names it and says why; a missing path too).
        HubError: a hub id that cannot be downloaded and is not in the local cache.
    """
    if is_hub_id(source):
        from .hub import resolve

        path = resolve(str(source))
    else:
        path = Path(source)
    if is_adapter_folder(path):
        detector, config = load_adapter(path, device)
        return LoadedModel(
            "adapter",
            detector,
            {"interpolation": "bicubic", **config["input"]},
            extraction_settings(config["face_crop"]),
            float(config["threshold"]),
            path,
            config.get(ENERGY_KEY),
        )
    if path.is_dir():
        model, config = load_exported(path, device)
        inputs = {key: config[key] for key in ("image_size", "mean", "std")}
        inputs["interpolation"] = config.get("interpolation", "bicubic")
        return LoadedModel(
            "export", model, inputs, extraction_settings(config["face_crop"]), float(config["threshold"]), path
        )
    detector, checkpoint = load_checkpoint(path, device)
    return LoadedModel(
        "checkpoint",
        detector,
        dict(detector.data_config),
        face_crop_settings(checkpoint, path),
        float(detector.hparams["threshold"]),
        path,
        checkpoint.get(ENERGY_KEY),
    )
