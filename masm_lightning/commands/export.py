"""``export``: a trained checkpoint as plain timm weights (adapters merged) plus the JSON that says how to use them."""

from __future__ import annotations

from pathlib import Path

from ..export import CONFIG_NAME, WEIGHTS_NAME
from ..export import export as export_checkpoint

__all__ = ["export"]


def export(ckpt: str, out: str) -> Path:
    """Write a checkpoint as plain timm weights (adapters merged) and their config.

    Args:
        ckpt: a checkpoint written by `fit`.
        out: output folder (model.safetensors and config.json).
    """
    folder = export_checkpoint(ckpt, out)
    print(f"exported {ckpt} → {folder / WEIGHTS_NAME} and {folder / CONFIG_NAME}")
    return folder
