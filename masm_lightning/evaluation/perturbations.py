"""The DeeperForensics-1.0 perturbations at 5 severity levels, applied to face crops (the robustness sweep's inputs).

Perturbations and per-level parameters (level 1 → 5, mildest → harshest), from DeeperForensics-1.0
(Jiang et al., CVPR 2020), ``perturbation/add_distortion_to_video.py`` ``get_distortion_parameter``:

=========  ======================  ==================================  ===============================
type       what                    parameter                           levels 1–5
=========  ======================  ==================================  ===============================
``CS``     colour saturation       chroma (Cb, Cr) scale around grey   0.4, 0.3, 0.2, 0.1, 0.0
``CC``     colour contrast         pixel values × factor               0.85, 0.725, 0.6, 0.475, 0.35
``BW``     block-wise distortion   grey 8-px blocks per 256 px side    16, 32, 48, 64, 80
``GNC``    Gaussian noise          variance on normalised YCbCr        0.001, 0.002, 0.005, 0.01, 0.05
``GB``     Gaussian blur           kernel side (σ = side / 6)          7, 9, 13, 17, 21
``PX``     pixelation              down- then up-scaling factor        2, 3, 4, 5, 6
``JPEG``   JPEG compression        JPEG quality                        90, 70, 50, 30, 10
=========  ======================  ==================================  ===============================

Notes on faithfulness: DeeperForensics perturbs whole videos before face extraction; we perturb the face crops
the model sees (the test images, before resizing and normalisation). Its ``JPEG`` entry is in fact pixelation
(``PX`` here, same factors); its compression type is H.264 video compression (CRF 30–40), which has no
single-image equivalent, so ``JPEG`` uses real JPEG encoding at the qualities above (our choice, spanning the
range deepfake robustness studies report). Its block-wise rule, ``min(h, w) // 256 × param`` blocks of 8 px, puts
no block on images under 256 px; we keep the density it gives a 256-px frame at any size: ``param ×
max(1, min(h, w) // 256)`` blocks of side ``max(1, round(8 · min(h, w) / 256))``. Its noise is added in YCbCr
scaled to studio range, i.e. with a standard deviation of ``√var · 255² / 219`` grey levels on Y and
``√var · 255² / 224`` on Cb and Cr — reproduced here. Random draws (block positions, noise) are seeded from the
image content, so a sweep gives the same numbers in any order, with any number of workers.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

__all__ = ["LEVELS", "NAMES", "PerturbedTransform", "perturb"]

LEVELS: dict[str, tuple[float, ...]] = {
    "CS": (0.4, 0.3, 0.2, 0.1, 0.0),
    "CC": (0.85, 0.725, 0.6, 0.475, 0.35),
    "BW": (16, 32, 48, 64, 80),
    "GNC": (0.001, 0.002, 0.005, 0.01, 0.05),
    "GB": (7, 9, 13, 17, 21),
    "PX": (2, 3, 4, 5, 6),
    "JPEG": (90, 70, 50, 30, 10),
}
NAMES = {
    "CS": "colour saturation",
    "CC": "colour contrast",
    "BW": "block-wise",
    "GNC": "Gaussian noise",
    "GB": "Gaussian blur",
    "PX": "pixelation",
    "JPEG": "JPEG compression",
}


def _saturation(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    ycrcb = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb)  # float: chroma centred on 0.5
    ycrcb[..., 1:] = 0.5 + (ycrcb[..., 1:] - 0.5) * factor
    return _to_uint8(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB) * 255)


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) * factor)


def _blocks(image: np.ndarray, per_256: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(1, round(8 * min(h, w) / 256))
    out = image.copy()
    for _ in range(int(per_256) * max(1, min(h, w) // 256)):
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out[y : y + side, x : x + side] = 128
    return out


def _noise(image: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    ycrcb: np.ndarray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2YCrCb)
    sigma = np.sqrt(variance) * 255**2 / np.array([219, 224, 224], np.float32)  # studio-range scaling, see above
    ycrcb += rng.standard_normal(ycrcb.shape).astype(np.float32) * sigma
    return _to_uint8(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB))


def _blur(image: np.ndarray, side: float, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(image, (int(side), int(side)), side / 6)


def _pixelate(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // int(factor)), max(1, h // int(factor))), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"JPEG encoding at quality {quality} failed for an image of shape {image.shape}")
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if decoded is None:
        raise OSError(f"JPEG decoding at quality {quality} failed for an image of shape {image.shape}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


_FUNCTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "CS": _saturation,
    "CC": _contrast,
    "BW": _blocks,
    "GNC": _noise,
    "GB": _blur,
    "PX": _pixelate,
    "JPEG": _jpeg,
}


def perturb(image: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """One DeeperForensics perturbation of an RGB uint8 image (H×W×3); level 0 returns the image unchanged.

    Args:
        image: the image, RGB uint8.
        kind: ``CS``, ``CC``, ``BW``, ``GNC``, ``GB``, ``PX`` or ``JPEG`` (see the module docstring).
        level: severity, 0 (none) to 5.
        seed: mixed with the image content to seed the random perturbations (``BW``, ``GNC``).
    """
    if kind not in LEVELS:
        raise ValueError(f"perturbation {kind!r} is not one of {sorted(LEVELS)}")
    if not 0 <= level <= len(LEVELS[kind]):
        raise ValueError(f"perturbation level must be in [0, {len(LEVELS[kind])}], got {level}")
    if level == 0:
        return image
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
    return _FUNCTIONS[kind](image, LEVELS[kind][level - 1], rng)


class PerturbedTransform:
    """``transform(image=…)`` that perturbs the RGB uint8 image first, then runs the dataset's own transform
    (resize, normalisation): picklable, so it works in loader worker processes."""

    def __init__(self, kind: str, level: int, transform: Callable[..., dict[str, Any]], seed: int = 0) -> None:
        perturb(np.zeros((8, 8, 3), np.uint8), kind, level)  # validate now, not in a worker
        self.kind, self.level, self.transform, self.seed = kind, level, transform, seed

    def __call__(self, image: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        return self.transform(image=perturb(image, self.kind, self.level, self.seed), **kwargs)
