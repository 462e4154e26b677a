"""What a training or test batch holds beyond its tensors' meaning: the key of unreadable frames and whether any
image is left. Light (no image stack), so the model and the callbacks read batches without loading the data
modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["UNREADABLE_KEY", "has_images"]

# The batch key listing the dataset indices of frames that could not be read (present only when some could not).
UNREADABLE_KEY = "unreadable"


def has_images(batch: Mapping[str, Any]) -> bool:
    """Whether a :func:`~masm_lightning.data.datamodule.collate_frames` batch holds any image: one whose every frame
    was unreadable holds only ``batch["unreadable"]``, and every step skips it (the report counts its frames)."""
    return "image" in batch
