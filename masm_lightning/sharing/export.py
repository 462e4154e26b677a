"""``export``: a trained checkpoint as plain timm weights (adapters merged), or as an adapter folder to share.

The folders' layouts and their readers (``load_model``, the one reader of every model source; ``load_adapter``;
``load_exported``) are in :mod:`masm_lightning.sharing.formats`; their names stay importable from here.
A ViT-L/14 MASM adapter (K=4, d=4, four targets) is 28 MB in float32, 14 MB in bfloat16.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, Literal

import timm
import torch

from ..adapters import merge_adapters
from ..data.settings import ExtractionSettings
from ..io import atomic_path, write_atomic
from ..training.callbacks.subspaces import ENERGY_KEY
from ..training.module import MASMDetector
from ..training.run_folder import training_run_folder
from .checkpoint import face_crop_settings, load_checkpoint
from .formats import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_FORMAT,
    ADAPTER_WEIGHTS_NAME,
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    LoadedModel,
    is_adapter_folder,
    load_adapter,
    load_exported,
    load_model,
)

__all__ = [
    "LoadedModel",  # the readers, from .formats: code that imports them from here keeps working
    "export",
    "export_adapter",
    "export_model",
    "is_adapter_folder",
    "load_adapter",
    "load_exported",
    "load_model",
]

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
