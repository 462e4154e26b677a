"""``export``: a trained checkpoint as plain timm weights (adapters merged) plus a JSON that says how to use them.

Layout of the output folder::

    model.safetensors   the timm model's state dict, our head as timm's ``head`` (num_classes=2: real, fake)
    config.json         timm name and kwargs, input size, mean/std, interpolation, face-crop settings, threshold

Loading needs timm and safetensors only (README: "Using an exported model").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .adapters import merge_adapters
from .data.extract import ExtractionSettings, _write_atomic

__all__ = ["CheckpointError", "export", "export_model", "extraction_settings", "face_crop_settings", "load_checkpoint",
           "load_exported"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "masm_lightning.export/1"


class CheckpointError(ValueError):
    """A path that is neither a masm_lightning checkpoint nor an exported folder."""


def face_crop_settings(checkpoint: dict[str, Any], source: str | Path) -> ExtractionSettings:
    """The extraction settings the training crops were made with (``checkpoint["masm"]["face_crop"]``); the
    defaults, with a warning, for checkpoints that predate them."""
    saved = checkpoint.get("masm", {}).get("face_crop")
    if saved is None:
        warnings.warn(f"{source}: the checkpoint does not record its face-crop settings; using the extraction "
                      f"defaults {dataclasses.asdict(ExtractionSettings())}", stacklevel=2)
        return ExtractionSettings()
    return extraction_settings(saved)


def extraction_settings(saved: dict[str, Any]) -> ExtractionSettings:
    """:class:`ExtractionSettings` from a saved dict, ignoring fields this version does not know."""
    known = {f.name for f in dataclasses.fields(ExtractionSettings)}
    return ExtractionSettings(**{k: v for k, v in saved.items() if k in known})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A :class:`~masm_lightning.model.MASMDetector` in eval mode and the raw checkpoint dict.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a masm_lightning checkpoint (the message names
            the path and why).
    """
    from .model import MASMDetector

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file (expected a .ckpt from `fit`, or an "
                              f"`export` folder holding {CONFIG_NAME})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or "masm" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{str(path)!r} is not a masm_lightning checkpoint (no 'masm' and "
                              "'hyper_parameters' entries); pass a checkpoint written by `fit`")
    try:
        model = MASMDetector.load_from_checkpoint(path, map_location=device)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{str(path)!r} does not load into MASMDetector: {error}") from error
    return model.eval(), checkpoint


def export_model(model: nn.Module, out: str | Path, face_crop: ExtractionSettings, source: str = "") -> Path:
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
    backbone = merge_adapters(model.backbone)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    state |= {f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    # The layout must be timm's own: fail here, not in the user's load_state_dict.
    with torch.device("meta"):  # shapes only: no memory, no init time for a ViT-L
        reference = timm.create_model(model.backbone_name, pretrained=False, num_classes=2, **model.backbone_kwargs)
    expected = reference.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != expected[k].shape for k in state):
        odd = sorted(state.keys() ^ expected.keys())[:5]
        raise ValueError(f"merged weights do not match timm's {model.backbone_name!r} layout (keys {odd}); "
                         "the exported file would not load with strict=True")
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    config = {
        "format": FORMAT,
        "architecture": model.backbone_name,
        "model_kwargs": model.backbone_kwargs,
        "num_classes": 2,
        "labels": ["real", "fake"],  # logit order: softmax(...)[:, 1] is the fake probability
        **model.data_config,
        "face_crop": dataclasses.asdict(face_crop),
        "threshold": float(model.hparams.threshold),
        "source_checkpoint": str(source),
        "base_fingerprint": model.fingerprint,
        "adapters": model.hparams.adapters,
        "weights": WEIGHTS_NAME,
    }
    _write_atomic(out / CONFIG_NAME, json.dumps(config, indent=2))
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
        raise CheckpointError(f"{str(folder)!r} is not an export folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                              "(written by `python -m masm_lightning export`)")
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"],
                                  **config["model_kwargs"])
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    except (json.JSONDecodeError, KeyError, RuntimeError, OSError) as error:
        raise CheckpointError(f"export folder {str(folder)!r} does not load: {error}") from error
    return model.eval().to(device), config


def main(args: list[str] | None = None) -> None:
    """``python -m masm_lightning export --ckpt CKPT --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m masm_lightning export", description=export.__doc__)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `fit`")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    options = parser.parse_args(sys.argv[2:] if args is None else args)
    try:
        out = export(options.ckpt, options.out)
    except CheckpointError as error:
        print(f"export: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {options.ckpt} → {out / WEIGHTS_NAME} and {out / CONFIG_NAME}")
