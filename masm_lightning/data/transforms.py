"""Image transforms: the self-blending pseudo-fake (SBI) and the train/eval pipelines."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

__all__ = [
    "crop_face_mask",
    "ellipse_mask",
    "eval_transform",
    "sample_generators",
    "seed_transform",
    "self_blend",
    "train_transform",
]

Preset = Literal["none", "light", "effort"]


def ellipse_mask(height: int, width: int, center: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """A float32 mask in [0, 1], 1 inside the axis-aligned ellipse (centre and semi-axes in pixels)."""
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(
        mask, (round(center[0]), round(center[1])), (max(1, round(axes[0])), max(1, round(axes[1]))), 0, 0, 360, 1.0, -1
    )
    return mask


def self_blend(image: np.ndarray, face_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn a real face into a pseudo-fake by blending it with an altered copy of itself (SBI).

    Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022: a source copy gets a colour
    and frequency change and a small affine warp; the face-region mask is deformed and blurred into a soft blending
    mask with a random blend ratio; the output ``mask·source + (1 − mask)·target`` carries the blending boundary
    and statistical mismatches that real face swaps leave, while identity and pose stay the same.

    Args:
        image: H×W×3 uint8 RGB face crop (the target).
        face_mask: H×W mask of the face region, values in [0, 1] (landmark hull or an ellipse).
        rng: the random generator (pass a seeded one for reproducible fakes).
    """
    h, w = image.shape[:2]
    source: np.ndarray = image.astype(np.float32)  # float32 throughout (cv2's stubs type results as any dtype)
    # Source-target augmentation: per-channel colour shift, contrast change, and either blur or sharpening.
    source = (source - source.mean()) * rng.uniform(0.8, 1.2) + source.mean() + rng.uniform(-20, 20, size=3)
    if rng.random() < 0.5:
        source = cv2.GaussianBlur(source, (0, 0), rng.uniform(0.5, 1.5))
    else:
        source = cv2.addWeighted(source, 1.6, cv2.GaussianBlur(source, (0, 0), 1.0), -0.6, 0)
    # Small scale/translation warp of the source: misaligned edges at the blending boundary.
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, size=2) * (w, h)
    warp: np.ndarray = cv2.getRotationMatrix2D((w / 2, h / 2), 0, scale)  # float64 (2, 3)
    warp[:, 2] += shift
    source = cv2.warpAffine(source, warp, (w, h), borderMode=cv2.BORDER_REFLECT)
    # Mask deformation: an affine squeeze, then a blur of random width for a soft, irregular boundary.
    deform = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), rng.uniform(0.85, 1.0))
    mask = cv2.warpAffine(face_mask.astype(np.float32), deform, (w, h))
    sigma = rng.uniform(0.02, 0.06) * max(h, w)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    mask = mask / max(float(mask.max()), 1e-6) * rng.choice([0.5, 0.75, 1.0, 1.0, 1.0])
    blended = mask[..., None] * source + (1 - mask[..., None]) * image.astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def sample_generators(seed: int, epoch: int, draw: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators for one training sample, a pure function of (run seed, epoch, draw, index): one
    for the augmentation, one for the self-blend.

    ``draw`` is the sample's position in its epoch's draw (before the split by rank), ``index`` its dataset index:
    a frame drawn twice in one epoch (balanced sampling draws with replacement) gets two different augmentations,
    and nothing depends on the worker that loads it, the number of workers or ranks, or on what ran before, so a
    run resumed at an epoch boundary, or repeated with the same seed, sees the same images.
    """
    augment, blend = np.random.SeedSequence([seed, epoch, draw, index]).spawn(2)
    return np.random.default_rng(augment), np.random.default_rng(blend)


def seed_transform(transform: Callable[..., dict[str, Any]], rng: np.random.Generator) -> None:
    """Make an albumentations pipeline draw from ``rng`` (its numpy generator, and a Python ``random.Random`` seeded
    from it). Albumentations keeps its own random state and ignores ``seed_everything``; this reseeds it per sample.
    Other callables (test stubs, deterministic transforms) are left as they are."""
    set_state = getattr(transform, "set_random_state", None)
    if set_state is not None:
        set_state(rng, random.Random(int(rng.integers(2**63))))


INTERPOLATIONS = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def _resize_and_normalize(
    size: int, mean: Sequence[float], std: Sequence[float], interpolation: str
) -> list[A.BasicTransform]:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(INTERPOLATIONS)}")
    return [
        A.Resize(size, size, interpolation=INTERPOLATIONS[interpolation]),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ]


def train_transform(
    size: int, mean: Sequence[float], std: Sequence[float], preset: Preset = "effort", interpolation: str = "bicubic"
) -> A.Compose:
    """Augmentation for training, then resize and normalisation as the backbone was pretrained.

    ``effort`` is the Effort/DeepfakeBench recipe (flip, rotation ±10°, blur, brightness/contrast or PCA colour or
    hue/saturation, JPEG quality 40–100) plus motion blur and Gaussian noise as alternatives to its blur, for
    robustness to the degradations of cross-dataset videos; ``light`` is a horizontal flip; ``none`` nothing.
    """
    if preset == "none":
        augment: list[A.BasicTransform] = []
    elif preset == "light":
        augment = [A.HorizontalFlip(p=0.5)]
    elif preset == "effort":
        augment = [
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=10, p=0.5),
            A.OneOf(
                [
                    A.GaussianBlur(blur_limit=(3, 7)),
                    A.MotionBlur(blur_limit=(3, 7)),
                    A.GaussNoise(std_range=(0.02, 0.08)),
                ],
                p=0.2,
            ),
            A.OneOf([A.RandomBrightnessContrast(0.1, 0.1), A.FancyPCA(), A.HueSaturationValue()], p=0.5),
            A.ImageCompression(quality_range=(40, 100), p=0.5),
        ]
    else:
        raise ValueError(f"augmentation preset {preset!r} is not one of 'none', 'light', 'effort'")
    return A.Compose(augment + _resize_and_normalize(size, mean, std, interpolation))


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic") -> A.Compose:
    """Deterministic resize and normalisation for validation, test and prediction."""
    return A.Compose(_resize_and_normalize(size, mean, std, interpolation))


def crop_face_mask(height: int, width: int) -> np.ndarray:
    """Where the face is in our crops: an ellipse over the central face box (crops are the detection box, or the
    aligned template, enlarged by the 1.3 margin), a little below centre to cover the chin rather than the hair."""
    return ellipse_mask(height, width, (width / 2, height * 0.53), (width * 0.34, height * 0.41))
