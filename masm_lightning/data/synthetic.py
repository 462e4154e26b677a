"""A small face-forgery dataset the project generates itself, so the demo and the tests need no download.

Reals are procedural face-like images (skin-toned head, hair, eyes, brows, mouth on a textured background), a few
frames per "video" with small motion and lighting changes. Fakes are the same faces with one of several forgery
types applied inside a soft face-region mask, each leaving a different artifact (:data:`DEMO_TYPES`):

- ``demo_blend``: self-blended images (SBI): a colour/frequency-changed, slightly warped copy blended in;
- ``demo_upsample``: the face re-rendered at half resolution and upsampled, with a checkerboard (the pattern
  transposed convolutions leave);
- ``demo_colour``: a colour cast and a blur on the face (a colour-transfer mismatch);
- ``demo_grid``: 8×8 block quantisation of the face (a compression grid pasted into an uncompressed frame).

One type (``held_out``, default ``demo_grid``) never appears in the train and val splits, only in test: its AUC
says how far what was learned from the others generalises. No third-party media.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..io import Stamp, settings_digest
from .manifest import MANIFEST_NAME, write_manifest
from .transforms import ellipse_mask, self_blend

__all__ = ["DEMO_TYPES", "check_demo_types", "face_image", "forge", "generate_demo_dataset"]

DEMO_DATASET = "demo"
DEMO_TYPES = ("demo_blend", "demo_upsample", "demo_colour", "demo_grid")


def _soft(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The face mask blurred into a soft (H, W, 1) blending weight with a random strength in [0.7, 1]."""
    size = mask.shape[0]
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(size / 40, 0.5))
    return (soft * rng.uniform(0.7, 1.0))[..., None]


def forge(image: np.ndarray, mask: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One demo fake of forgery type ``kind`` (:data:`DEMO_TYPES`) made from an RGB uint8 ``image`` and its face
    ``mask`` in [0, 1]."""
    if kind == "demo_blend":
        return self_blend(image, mask, rng)
    h, w = image.shape[:2]
    source = image.astype(np.float32)
    if kind == "demo_upsample":
        low = cv2.resize(source, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        yy, xx = np.mgrid[0:h, 0:w]
        checker = ((yy + xx) % 2 * 2 - 1).astype(np.float32)[..., None] * rng.uniform(3, 6)
        altered = cv2.resize(low, (w, h), interpolation=cv2.INTER_NEAREST) + checker
    elif kind == "demo_colour":
        altered = cv2.GaussianBlur(source, (0, 0), rng.uniform(0.6, 1.0)) + rng.uniform(-1, 1, 3) * 18
    elif kind == "demo_grid":
        block = 8
        hb, wb = h // block * block, w // block * block
        means = cv2.resize(source[:hb, :wb], (wb // block, hb // block), interpolation=cv2.INTER_AREA)
        altered = source.copy()
        mix = rng.uniform(0.5, 0.8)
        blocky = cv2.resize(means, (wb, hb), interpolation=cv2.INTER_NEAREST)
        altered[:hb, :wb] = mix * blocky + (1 - mix) * source[:hb, :wb]
    else:
        raise ValueError(f"unknown demo forgery type {kind!r}; known: {list(DEMO_TYPES)}")
    weight = _soft(mask, rng)
    return np.clip(weight * altered + (1 - weight) * source, 0, 255).round().astype(np.uint8)


def _face_frame(identity: dict, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One RGB frame of one identity, and its face-region mask."""
    s = size / 64
    _yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = identity["bg"] + identity["bg_slope"] * (xx / size)[..., None] * 40
    image = np.clip(background, 0, 255).astype(np.uint8)
    cx = identity["cx"] * size + rng.uniform(-1.5, 1.5) * s
    cy = identity["cy"] * size + rng.uniform(-1.5, 1.5) * s
    ax, ay = identity["ax"] * size, identity["ay"] * size
    hair = tuple(int(c) for c in identity["hair"])
    cv2.ellipse(image, (round(cx), round(cy - 0.35 * ay)), (round(1.1 * ax), round(0.8 * ay)), 0, 180, 360, hair, -1)
    skin = tuple(int(c) for c in np.clip(identity["skin"] * rng.uniform(0.93, 1.07), 0, 255))
    cv2.ellipse(image, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, skin, -1)
    for side in (-1, 1):
        ex, ey = round(cx + side * 0.4 * ax), round(cy - 0.2 * ay)
        cv2.ellipse(image, (ex, ey), (max(1, round(0.2 * ax)), max(1, round(0.1 * ay))), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(image, (ex, ey), max(1, round(0.08 * ax)), tuple(int(c) for c in identity["iris"]), -1)
        cv2.line(
            image,
            (ex - round(0.2 * ax), ey - round(0.2 * ay)),
            (ex + round(0.2 * ax), ey - round(0.22 * ay)),
            hair,
            max(1, round(s)),
        )
    cv2.line(
        image,
        (round(cx), round(cy - 0.05 * ay)),
        (round(cx), round(cy + 0.25 * ay)),
        tuple(int(c) for c in identity["skin"] * 0.8),
        max(1, round(s)),
    )
    cv2.ellipse(
        image,
        (round(cx), round(cy + 0.5 * ay)),
        (round(0.35 * ax), round(0.1 * ay)),
        0,
        0,
        180,
        (150, 60, 60),
        max(1, round(1.5 * s)),
    )
    shading = 1 + 0.15 * ((xx - cx) / size)[..., None] * identity["light"]
    # Sensor noise over the whole frame, as a camera would add: the texture a blended region loses or changes.
    noisy = image.astype(np.float32) * shading + rng.normal(0, identity["noise"], (size, size, 3))
    image = np.clip(noisy, 0, 255).astype(np.uint8)
    return image, ellipse_mask(size, size, (cx, cy), (ax, ay))


def _identity(rng: np.random.Generator) -> dict:
    return {
        "bg": rng.uniform(30, 220, 3),
        "bg_slope": rng.uniform(-1, 1, 3),
        "skin": np.array([rng.uniform(150, 240), rng.uniform(100, 190), rng.uniform(80, 160)]),
        "hair": rng.uniform(10, 120, 3),
        "iris": rng.uniform(20, 140, 3),
        "cx": rng.uniform(0.45, 0.55),
        "cy": rng.uniform(0.5, 0.58),
        "ax": rng.uniform(0.22, 0.3),
        "ay": rng.uniform(0.3, 0.38),
        "light": rng.uniform(-1, 1),
        "noise": rng.uniform(4, 10),
    }


def face_image(seed: int | Sequence[int], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One generated face (a new identity per seed) as an RGB uint8 image, and its face-region mask in [0, 1];
    what the demo dataset's frames are made of, for tests that build their own fakes."""
    rng = np.random.default_rng(seed)
    return _face_frame(_identity(rng), rng, size)


def check_demo_types(forgery_types: Sequence[str], held_out: str | None) -> None:
    """Refuse types outside :data:`DEMO_TYPES` and a ``held_out`` type that is not one of (several) ``forgery_types``.

    Raises:
        ValueError: naming the bad value and the valid ones.
    """
    unknown = sorted(set(forgery_types) - set(DEMO_TYPES))
    if unknown or not forgery_types:
        raise ValueError(f"forgery_types {unknown or list(forgery_types)} are not a choice of {list(DEMO_TYPES)}")
    if held_out is not None and (held_out not in forgery_types or len(forgery_types) < 2):
        raise ValueError(
            f"held_out {held_out!r} must be one of the forgery types {list(forgery_types)} (and not the only one)"
        )


def generate_demo_dataset(
    root: str | Path,
    videos: dict[str, int] | None = None,
    frames_per_video: int = 6,
    size: int = 64,
    seed: int = 0,
    forgery_types: Sequence[str] = DEMO_TYPES,
    held_out: str | None = "demo_grid",
) -> Path:
    """Write the demo dataset under ``root`` and return its manifest path; reuse it if already made identically.

    Args:
        root: output directory.
        videos: videos per split: real videos and their fakes, one pair per identity (an odd count ends with a
            lone real); default train 32, val 12, test 16.
        frames_per_video: frames written per video.
        size: side of the square PNG frames.
        seed: everything is drawn from this seed, so the same arguments give the same files.
        forgery_types: the fake types (:data:`DEMO_TYPES`), cycled over the identities of each split.
        held_out: a type of ``forgery_types`` made for the test split only (None: every type in every split).

    Raises:
        ValueError: for a type not in :data:`DEMO_TYPES`, or a ``held_out`` type not among ``forgery_types``.
    """
    videos = videos or {"train": 32, "val": 12, "test": 16}
    forgery_types = list(forgery_types)
    check_demo_types(forgery_types, held_out)
    root = Path(root)
    settings = {
        "videos": videos,
        "frames_per_video": frames_per_video,
        "size": size,
        "seed": seed,
        "forgery_types": forgery_types,
        "held_out": held_out,
        "version": 5,
    }
    manifest, stamp = root / MANIFEST_NAME, Stamp(root / "settings.json")
    expected = {"hash": settings_digest(settings), "settings": settings}
    if manifest.exists() and stamp.matches(expected):
        return manifest
    stamp.clear()  # until this generation completes

    rows = []
    for split_index, (split, count) in enumerate(sorted(videos.items())):
        # SBI protocol: every identity gives a real video and a fake of the very same frames, so identity cannot
        # separate the classes, only the forgery artifacts can.
        kinds = [k for k in forgery_types if split == "test" or k != held_out]
        for person in range((count + 1) // 2):
            kind = kinds[person % len(kinds)]
            rng = np.random.default_rng([seed, split_index, person])
            identity = _identity(rng)
            frames = [_face_frame(identity, rng, size) for _ in range(frames_per_video)]
            real_id = f"{split}_{person:03d}"
            for label in (0, 1)[: count - 2 * person]:
                video_id = f"{real_id}_{kind}" if label else real_id
                folder = root / split / ("fake" if label else "real") / video_id
                folder.mkdir(parents=True, exist_ok=True)
                for f, (image, mask) in enumerate(frames):
                    if label:
                        image = forge(image, mask, kind, rng)
                    path = folder / f"{f:03d}.png"
                    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    rows.append(
                        {
                            "dataset": DEMO_DATASET,
                            "split": split,
                            "label": label,
                            "method": kind if label else "real",
                            "video_id": video_id,
                            "frame_index": f,
                            "crop_path": path.relative_to(root).as_posix(),
                            "original_id": real_id if label else "",
                            "status": "ok",
                        }
                    )
    write_manifest(manifest, rows)
    stamp.write(expected)
    return manifest
