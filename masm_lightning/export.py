"""``export``: a trained checkpoint as plain timm weights (adapters merged) plus a JSON that says how to use them.

Layout of the output folder::

    model.safetensors   the timm model's state dict, our head as timm's ``head`` (num_classes=2: real, fake)
    config.json         timm name and kwargs, input size, mean/std, interpolation, face-crop settings, threshold

Loading needs timm and safetensors only (README: "Using an exported model").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .adapters import merge_adapters
from .checkpoint import CheckpointError, face_crop_settings, load_checkpoint
from .data.settings import ExtractionSettings
from .io import atomic_path, write_atomic
from .model import MASMDetector

__all__ = ["export", "export_model", "load_exported"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "masm_lightning.export/1"


def export_model(model: MASMDetector, out: str | Path, face_crop: ExtractionSettings, source: str = "") -> Path:
    """Write a :class:`~masm_lightning.model.MASMDetector` as plain timm weights; the adapters of ``model`` are
    merged in place.

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
    }
    write_atomic(out / CONFIG_NAME, json.dumps(config, indent=2))
    return out


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Load a checkpoint, merge its adapters and write ``out/model.safetensors`` and ``out/config.json``."""
    model, checkpoint = load_checkpoint(ckpt)
    return export_model(model, out, face_crop_settings(checkpoint, ckpt), source=str(ckpt))


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
