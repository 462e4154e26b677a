"""Extraction settings: everything that changes the face crops, and the version of the code that makes them.

Kept apart from the extractor so that what only reads settings (the checkpoint loader, exports, the data module's
configuration) does not load the video and detection stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from ..io import settings_digest

__all__ = ["EXTRACTOR_VERSION", "ExtractionSettings"]

# Bumped when the code crops differently for the same settings (2: exact frame counts from PyAV; MTCNN on the
# standard pyramid's levels with its last stage at full resolution).
EXTRACTOR_VERSION = 2


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything that changes the crops; its hash identifies an extraction."""

    frames: int = 32  # frames per video, spread uniformly over the whole video
    crop: Literal["box", "aligned"] = "box"
    faces: Literal["largest", "all"] = "largest"  # one tracked face per frame, or every confident face
    size: int = 256  # crop side in pixels
    scale: float = 1.3  # margin: crop side = scale × face size
    # Frames are downscaled to this shorter side for detection (never upscaled); MTCNN's last stage, which sets the
    # final boxes and landmarks, still crops from the full frame.
    detect_short_side: int = 360
    min_face: float = 0.1  # smallest face searched, as a share of the short side (bounds MTCNN's image pyramid)
    min_prob: float = 0.9  # faces below this confidence are not cropped
    # MTCNN's three stage thresholds (facenet-pytorch: 0.6, 0.7, 0.7). Raised, fewer candidates reach the later
    # stages: ~10% faster extraction here, same faces found; boxes move on a few frames (the last stage's NMS sees
    # fewer boxes). facenet's values + a detect_short_side of at least the frame give the reference loop's boxes
    # (docs/benchmarks.md).
    stage_thresholds: tuple[float, float, float] = (0.7, 0.8, 0.9)
    image_format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        checks = {
            "frames": self.frames >= 1,
            "size": self.size >= 16,
            "scale": self.scale >= 1.0,
            "detect_short_side": self.detect_short_side >= 48,
            "min_face": 0.0 < self.min_face <= 1.0,
            "min_prob": 0.0 <= self.min_prob < 1.0,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
            "stage_thresholds": len(self.stage_thresholds) == 3 and all(0.0 <= t < 1.0 for t in self.stage_thresholds),
        }
        valid = {
            "frames": ">= 1",
            "size": ">= 16 px",
            "scale": ">= 1.0",
            "detect_short_side": ">= 48 px",
            "min_face": "in (0, 1], a share of the short side",
            "min_prob": "in [0, 1)",
            "jpeg_quality": "in [1, 100]",
            "stage_thresholds": "three values in [0, 1)",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"extraction {name}={getattr(self, name)!r} is invalid: must be {valid[name]}")

    def digest(self) -> str:
        """Hash of the settings and of the extractor's version: crops made by older code are redone, not mixed."""
        return settings_digest({**asdict(self), "extractor_version": EXTRACTOR_VERSION})
