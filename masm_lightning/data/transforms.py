"""Image transforms: the self-blending pseudo-fake (SBI) and the train/eval pipelines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

__all__ = ["ellipse_mask", "eval_transform", "self_blend", "train_transform"]

Preset = Literal["none", "light", "effort"]


def ellipse_mask(height: int, width: int, center: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """A float32 mask in [0, 1], 1 inside the axis-aligned ellipse (centre and semi-axes in pixels)."""
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (round(center[0]), round(center[1])), (max(1, round(axes[0])), max(1, round(axes[1]))),
                0, 0, 360, 1.0, -1)
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
    source = image.astype(np.float32)
    # Source-target augmentation: per-channel colour shift, contrast change, and either blur or sharpening.
    source = (source - source.mean()) * rng.uniform(0.8, 1.2) + source.mean() + rng.uniform(-20, 20, size=3)
    if rng.random() < 0.5:
        source = cv2.GaussianBlur(source, (0, 0), rng.uniform(0.5, 1.5))
    else:
        source = cv2.addWeighted(source, 1.6, cv2.GaussianBlur(source, (0, 0), 1.0), -0.6, 0)
    # Small scale/translation warp of the source: misaligned edges at the blending boundary.
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, size=2) * (w, h)
    warp = cv2.getRotationMatrix2D((w / 2, h / 2), 0, scale)
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


def _resize_and_normalize(size: int, mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    return [
        A.Resize(size, size, interpolation=cv2.INTER_CUBIC),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ]


def train_transform(size: int, mean: Sequence[float], std: Sequence[float], preset: Preset = "effort") -> A.Compose:
    """Augmentation for training; ``effort`` follows the Effort/DeepfakeBench recipe."""
    if preset == "none":
        augment: list[A.BasicTransform] = []
    elif preset == "light":
        augment = [A.HorizontalFlip(p=0.5)]
    elif preset == "effort":
        augment = [
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=10, p=0.5),
            A.GaussianBlur(blur_limit=(3, 7), p=0.1),
            A.OneOf([A.RandomBrightnessContrast(0.1, 0.1), A.FancyPCA(), A.HueSaturationValue()], p=0.5),
            A.ImageCompression(quality_range=(40, 100), p=0.5),
        ]
    else:
        raise ValueError(f"augmentation preset {preset!r} is not one of 'none', 'light', 'effort'")
    return A.Compose(augment + _resize_and_normalize(size, mean, std))


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Deterministic resize and normalisation for validation, test and prediction."""
    return A.Compose(_resize_and_normalize(size, mean, std))
