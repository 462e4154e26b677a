"""Face detection (batched MTCNN) and the choice of which detected face to crop in each frame."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from .mtcnn import detect_faces, pyramid_levels, use_strided_pooling
from .settings import ExtractionSettings

__all__ = ["Detection", "Detector", "MTCNNDetector", "select_faces", "track_face"]

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (k, 4) xyxy, probs (k,), landmarks (k, 5, 2)
Detector = Callable[[list[np.ndarray]], list[Detection]]


class MTCNNDetector:
    """facenet-pytorch MTCNN (weights ship in the wheel), batched per video, on frames downscaled so the shorter
    side is at most ``short_side``; boxes and landmarks are mapped back to full resolution.

    Deepfake datasets film one or two large faces: searching only faces of at least ``min_face`` × the short side
    cuts MTCNN's image pyramid (its cost) several-fold versus its default 20 px minimum.
    """

    def __init__(
        self,
        device: str | None = None,
        short_side: int = 360,
        min_face: float = 0.1,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    ) -> None:
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.short_side, self.min_face, self.thresholds = short_side, min_face, tuple(thresholds)
        mtcnn = MTCNN(device=self.device)  # only for its three networks and their weights
        # Channels-last convolutions: ~20% less detection time on a CPU for these few-channel networks, same boxes.
        pnet, rnet, onet = (
            use_strided_pooling(net).to(memory_format=torch.channels_last)
            for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet)
        )
        self.networks = (pnet, rnet, onet)

    @classmethod
    def from_settings(cls, settings: ExtractionSettings, device: str | None = None) -> MTCNNDetector:
        """The detector an extraction with ``settings`` uses (preprocess and ``detect`` alike)."""
        return cls(device, settings.detect_short_side, settings.min_face, settings.stage_thresholds)

    def __call__(self, frames: list[np.ndarray]) -> list[Detection]:
        h, w = frames[0].shape[:2]
        factor = min(1.0, self.short_side / min(h, w))
        small = (
            frames
            if factor == 1.0
            else [cv2.resize(f, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA) for f in frames]
        )
        # The levels of MTCNN's pyramid on the full frame that hold faces >= the smallest face (min_face of the
        # short side, never below MTCNN's usual 20 px on the frames it sees), taken from the downscaled copy; the
        # final stage crops from the full frame. Both keep the boxes close to those of the reference loop
        # (full-resolution MTCNN): docs/benchmarks.md.
        smallest = max(self.min_face * min(h, w), 20 / factor)
        levels = [(scale / factor, size) for scale, size in pyramid_levels(h, w, smallest)]
        return detect_faces(
            np.stack(small),
            *self.networks,
            thresholds=self.thresholds,
            levels=levels,
            full_frames=None if factor == 1.0 else frames,
        )


def track_face(detections: list[Detection], min_prob: float) -> list[int | None]:
    """One face per frame that stays the same person: start from the largest confident face of the frame where
    it is largest, then in every frame take the confident face nearest the previous choice (largest as tie-break)."""
    confident = [np.flatnonzero(p >= min_prob) for _, p, _ in detections]
    areas = [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b, _, _ in detections]
    candidates = [(areas[f][i], f, i) for f in range(len(detections)) for i in confident[f]]
    if not candidates:
        return [None] * len(detections)
    _, anchor_frame, anchor = max(candidates)
    centre = lambda f, i: detections[f][0][i].reshape(2, 2).mean(0)
    chosen: list[int | None] = [None] * len(detections)
    chosen[anchor_frame] = int(anchor)
    for order in (range(anchor_frame + 1, len(detections)), range(anchor_frame - 1, -1, -1)):
        previous = centre(anchor_frame, anchor)
        for f in order:
            if len(confident[f]):
                distance = [np.linalg.norm(centre(f, i) - previous) - 1e-3 * areas[f][i] for i in confident[f]]
                chosen[f] = int(confident[f][int(np.argmin(distance))])
                previous = centre(f, chosen[f])
    return chosen


def select_faces(detections: Sequence[Detection], settings: ExtractionSettings) -> list[list[int]]:
    """Per frame, the indices of the detections to crop: the tracked face (``faces="largest"``) or every face
    of at least ``min_prob`` (``faces="all"``)."""
    if settings.faces == "all":
        return [[int(i) for i in np.flatnonzero(probs >= settings.min_prob)] for _, probs, _ in detections]
    return [[] if pick is None else [pick] for pick in track_face(list(detections), settings.min_prob)]
