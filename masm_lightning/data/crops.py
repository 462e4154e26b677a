"""Crop geometry: a square around a face box, or a similarity alignment of five landmarks to a template."""

from __future__ import annotations

import cv2
import numpy as np

from .settings import ExtractionSettings

__all__ = ["FACE_TEMPLATE_112", "as_stored", "crop_aligned", "crop_box", "crop_face"]

# Standard 5-point face template (eyes, nose tip, mouth corners) on a 112×112 canvas (ArcFace/InsightFace), the
# reference DeepfakeBench aligns to; scaled to the crop size and shrunk by the margin scale below.
FACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)


def crop_box(frame: np.ndarray, box: np.ndarray, size: int, scale: float) -> np.ndarray:
    """A square of side ``scale × max(w, h)`` centred on the box (edges replicated past the frame), resized."""
    x0, y0, x1, y1 = box
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # An affine map does crop, pad and resize in one interpolation.
    factor = size / side
    matrix = np.array([[factor, 0, size / 2 - factor * cx], [0, factor, size / 2 - factor * cy]], np.float32)
    return cv2.warpAffine(
        frame,
        matrix,
        (size, size),
        flags=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )


def crop_aligned(frame: np.ndarray, landmarks: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Similarity transform of the 5 landmarks onto the standard template, the template shrunk by ``scale`` around
    the crop centre so the face keeps the same margin as a ``box`` crop."""
    template = (FACE_TEMPLATE_112 / 112.0 - 0.5) / scale + 0.5
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), template * size, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate: no similarity transform")
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def crop_face(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, settings: ExtractionSettings) -> np.ndarray:
    """One face crop as ``settings`` asks (``box`` or ``aligned``, side ``size``, margin ``scale``)."""
    if settings.crop == "aligned":
        try:
            return crop_aligned(frame, landmarks, settings.size, settings.scale)
        except ValueError:  # degenerate landmarks: the square crop still holds the face
            pass
    return crop_box(frame, box, settings.size, settings.scale)


def as_stored(crop: np.ndarray, settings: ExtractionSettings) -> np.ndarray:
    """An RGB crop as training read it back from disk: JPEG-encoded and decoded at the extraction quality when the
    crops were stored as jpg (the detector and the explanations see what the model was trained on), else itself.

    Raises:
        OSError: the JPEG round trip failed (the detector records it as that input's ``error``).
    """
    if settings.image_format != "jpg":
        return crop
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
    )
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise OSError(f"JPEG round trip at quality {settings.jpeg_quality} failed for a crop of shape {crop.shape}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
