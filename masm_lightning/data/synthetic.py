"""A small face-forgery dataset the project generates itself, so the demo and the tests need no download.

Reals are procedural face-like images (skin-toned head, hair, eyes, brows, mouth on a textured background), a few
frames per "video" with small motion and lighting changes. Fakes are the same kind of faces turned into
self-blended images (SBI): real blending artifacts, no third-party media.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..io import Stamp, settings_digest
from .manifest import MANIFEST_NAME, write_manifest
from .transforms import ellipse_mask, self_blend

__all__ = ["face_image", "generate_demo_dataset"]

DEMO_DATASET = "demo"


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


def generate_demo_dataset(
    root: str | Path,
    videos: dict[str, int] | None = None,
    frames_per_video: int = 6,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the demo dataset under ``root`` and return its manifest path; reuse it if already made identically.

    Args:
        root: output directory.
        videos: videos per split: real videos and their self-blended fakes, one pair per identity (an odd
            count ends with a lone real); default train 32, val 12, test 16.
        frames_per_video: frames written per video.
        size: side of the square PNG frames.
        seed: everything is drawn from this seed, so the same arguments give the same files.
    """
    videos = videos or {"train": 32, "val": 12, "test": 16}
    root = Path(root)
    settings = {"videos": videos, "frames_per_video": frames_per_video, "size": size, "seed": seed, "version": 4}
    manifest, stamp = root / MANIFEST_NAME, Stamp(root / "settings.json")
    expected = {"hash": settings_digest(settings), "settings": settings}
    if manifest.exists() and stamp.matches(expected):
        return manifest
    stamp.clear()  # until this generation completes

    rows = []
    for split_index, (split, count) in enumerate(sorted(videos.items())):
        # SBI protocol: every identity gives a real video and the self-blended fake of the very same frames, so
        # identity cannot separate the classes, only the blending artifacts can.
        for person in range((count + 1) // 2):
            rng = np.random.default_rng([seed, split_index, person])
            identity = _identity(rng)
            frames = [_face_frame(identity, rng, size) for _ in range(frames_per_video)]
            real_id = f"{split}_{person:03d}"
            for label in (0, 1)[: count - 2 * person]:
                video_id = f"{real_id}_sbi" if label else real_id
                folder = root / split / ("fake" if label else "real") / video_id
                folder.mkdir(parents=True, exist_ok=True)
                for f, (image, mask) in enumerate(frames):
                    if label:
                        image = self_blend(image, mask, rng)
                    path = folder / f"{f:03d}.png"
                    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    rows.append(
                        {
                            "dataset": DEMO_DATASET,
                            "split": split,
                            "label": label,
                            "method": "self_blend" if label else "real",
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
