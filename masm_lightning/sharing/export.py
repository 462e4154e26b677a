"""``export``: a trained checkpoint as plain timm weights (adapters merged), or as an adapter folder to share.

Plain export (the default)::

    model.safetensors   the timm model's state dict, our head as timm's ``head`` (num_classes=2: real, fake)
    config.json         timm name and kwargs, input size, mean/std, interpolation, face-crop settings, threshold

Loading needs timm and safetensors only (docs/inference.md, "Sharing a model").

Adapter export (``--adapter``), the way fine-tunes are shared on the hub::

    adapter_model.safetensors   what training changed only: the artifact factors (U, s, V) and the head
    adapter_config.json         base model (timm name, kwargs, weights source, fingerprint), the detector's
                                hyper-parameters, FMSD layers, input config, face-crop settings, threshold
    README.md                   model card (:mod:`masm_lightning.sharing.model_card`)

Loading an adapter folder (:func:`load_adapter`) rebuilds the base from its source (timm pretrained weights, a
``checkpoint_path`` file, or the recorded seed of a random-init demo base), re-injects the adapters (the SVD of the
base reproduces every frozen part) and loads the factors; a base whose fingerprint differs from the recorded one is
refused. A ViT-L/14 MASM adapter (K=4, d=4, four targets) is 28 MB in float32, 14 MB in bfloat16.

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

from ..adapters import merge_adapters
from ..data.settings import ExtractionSettings
from ..errors import first_line
from ..io import atomic_path, write_atomic
from ..training.callbacks.subspaces import ENERGY_KEY
from ..training.module import MASMDetector
from ..training.run_folder import training_run_folder
from .checkpoint import CheckpointError, extraction_settings, face_crop_settings, load_checkpoint
from .hub import is_hub_id

__all__ = [
    "LoadedModel",
    "export",
    "export_adapter",
    "export_model",
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
Dtype = Literal["float32", "bfloat16", "bf16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def export_model(
    model: MASMDetector, out: str | Path, face_crop: ExtractionSettings, source: str = "", dtype: Dtype = "float32"
) -> Path:
    """Write a :class:`~masm_lightning.training.module.MASMDetector` as plain timm weights; the adapters of ``model``
    are merged in place.

    The backbone is built with ``num_classes=0``; timm's ``num_classes=2`` model applies its ``head`` Linear to
    the very same pre-logits, so our head's weights become timm's ``head`` and the logits are identical.

    Returns:
        The output folder.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model.backbone is None or model.head is None:
        raise ValueError("the model has no backbone yet: export a loaded checkpoint (or call configure_model())")
    backbone = merge_adapters(model.backbone)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    state |= {f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    # The layout must be timm's own: fail here, not in the user's load_state_dict.
    with torch.device("meta"):  # shapes only: no memory, no init time for a ViT-L
        reference = timm.create_model(model.backbone_name, pretrained=False, num_classes=2, **model.backbone_kwargs)
    expected = reference.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != expected[k].shape for k in state):
        odd = sorted(state.keys() ^ expected.keys())[:5]
        raise ValueError(
            f"merged weights do not match timm's {model.backbone_name!r} layout (keys {odd}); "
            "the exported file would not load with strict=True"
        )
    state = _cast(state, dtype)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    config = {
        "format": FORMAT,
        "architecture": model.backbone_name,
        "model_kwargs": model.backbone_kwargs,
        "num_classes": 2,
        "labels": ["real", "fake"],  # logit order: softmax(...)[:, 1] is the fake probability
        **model.data_config,
        "face_crop": dataclasses.asdict(face_crop),
        "threshold": float(model.hparams["threshold"]),
        "source_checkpoint": str(source),
        "base_fingerprint": model.fingerprint,
        "adapters": model.hparams["adapters"],
        "weights": WEIGHTS_NAME,
        "dtype": str(_DTYPES[dtype]).removeprefix("torch."),
    }
    write_atomic(out / CONFIG_NAME, json.dumps(config, indent=2))
    return out


def _cast(state: dict[str, torch.Tensor], dtype: Dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype`` (integer buffers such as BatchNorm's counter stay as they are)."""
    if dtype not in _DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    target = _DTYPES[dtype]
    return {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _hparams(model: MASMDetector) -> dict[str, Any]:
    """The detector's constructor arguments, as plain JSON values (what :func:`load_adapter` rebuilds it from)."""
    accepted = set(inspect.signature(MASMDetector.__init__).parameters) - {"self", "optimizer", "lr_scheduler"}
    values = {k: v for k, v in dict(model.hparams).items() if k in accepted}
    return json.loads(json.dumps(values))  # tuples → lists, and a loud error now for anything not JSON


def export_adapter(
    model: MASMDetector,
    out: str | Path,
    face_crop: ExtractionSettings,
    dtype: Dtype = "float32",
    source: str = "",
    datasets: list[str] | None = None,
    results: dict[str, dict[str, float]] | None = None,
    licence: str | None = None,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an adapter folder: trained factors and head, their config, and a model card.

    Args:
        model: a detector with adapters (``configure_model()`` done, e.g. from :func:`load_checkpoint`).
        out: output folder.
        face_crop: the settings its training crops were made with.
        dtype: storage type of the tensors (``bf16`` halves the file; loading casts back to float32).
        source: the checkpoint it came from (recorded).
        datasets: training data for the card (licence and ``datasets`` front matter).
        results: test metrics for the card (``{test set: {"video_auc": …}}``).
        licence: overrides the licence derived from ``datasets``.
        name: the card's title.
        extra: more JSON entries for ``adapter_config.json`` (e.g. the subspace-energy means of the explanations).

    Returns:
        The output folder.

    Raises:
        ValueError: the model has no adapters, or an unknown dtype.
    """
    from safetensors.torch import save_file

    from ..adapters import iter_adapters
    from .model_card import model_card

    if model.backbone is None or model.head is None:
        raise ValueError("the model has no backbone yet: export a loaded checkpoint (or call configure_model())")
    if model.adapter_config is None or not any(True for _ in iter_adapters(model.backbone)):
        raise ValueError(
            "--adapter exports MASM adapters, but this checkpoint has none (model.adapters is null): "
            "use the plain export (without --adapter)"
        )
    state = _cast({k: v.detach().cpu() for k, v in model.state_dict().items()}, dtype)
    hparams = _hparams(model)
    layers = list(model.selection.layers or ()) if model.selection is not None else []
    config: dict[str, Any] = {
        "format": ADAPTER_FORMAT,
        "name": name or "",
        "base_model": {
            "name": model.backbone_name,
            "kwargs": model.backbone_kwargs,
            "pretrained": hparams.get("pretrained"),
            "checkpoint_path": hparams.get("checkpoint_path"),
            "backbone_seed": hparams.get("backbone_seed"),
            "fingerprint": model.fingerprint,  # sha256 of the base weights' names, shapes and sampled values
        },
        "adapters": model.hparams["adapters"],
        "selection": layers or None,
        "hparams": hparams,
        "input": model.data_config,
        "face_crop": dataclasses.asdict(face_crop),
        "threshold": float(model.hparams["threshold"]),
        "labels": ["real", "fake"],
        "dtype": "bfloat16" if _DTYPES[dtype] is torch.bfloat16 else "float32",
        "weights": ADAPTER_WEIGHTS_NAME,
        "source_checkpoint": str(source),
        **(extra or {}),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ADAPTER_WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "masm_format": ADAPTER_FORMAT})
    write_atomic(out / ADAPTER_CONFIG_NAME, json.dumps(config, indent=2))
    write_atomic(out / CARD_NAME, model_card(config, list(datasets or []), results, licence))
    return out


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


def _run_config(ckpt: Path) -> dict[str, Any] | None:
    """The ``config.yaml`` LightningCLI wrote in the checkpoint's run folder, if any."""
    import yaml

    run = training_run_folder(ckpt) or ckpt.parent
    try:
        loaded = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def export(
    ckpt: str | Path,
    out: str | Path,
    adapter: bool = False,
    dtype: Dtype = "float32",
    datasets: list[str] | None = None,
    results: str | Path | None = None,
    licence: str | None = None,
    name: str | None = None,
) -> Path:
    """Load a checkpoint and write it as plain timm weights (adapters merged) or, with ``adapter``, as an adapter
    folder (see the module doc). The model card's datasets come from the run's ``config.yaml`` and its metrics
    from ``results`` or the ``results.md`` of a test of this checkpoint (:func:`~.model_card.find_results`)."""
    from .model_card import find_results, parse_results, training_datasets

    model, checkpoint = load_checkpoint(ckpt)
    face_crop = face_crop_settings(checkpoint, ckpt)
    if not adapter:
        return export_model(model, out, face_crop, source=str(ckpt), dtype=dtype)
    results_path = Path(results) if results is not None else find_results(ckpt)
    if results_path is not None and not results_path.is_file():
        raise FileNotFoundError(f"--results {str(results_path)!r} is not a file (a results.md written by `test`)")
    metrics = parse_results(results_path.read_text()) if results_path is not None else {}
    extra = {ENERGY_KEY: checkpoint[ENERGY_KEY]} if ENERGY_KEY in checkpoint else {}
    return export_adapter(
        model,
        out,
        face_crop,
        dtype=dtype,
        source=str(ckpt),
        datasets=datasets if datasets is not None else training_datasets(_run_config(Path(ckpt))),
        results=metrics,
        licence=licence,
        name=name,
        extra=extra,
    )


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
