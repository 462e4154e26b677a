"""The batched MTCNN cascade: same results as facenet-pytorch's, exact pooling, the standard pyramid's levels."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN

from masm_lightning.data.faces import MTCNNDetector
from masm_lightning.data.mtcnn import StridedMaxPool2d, detect_faces, pyramid_levels, use_strided_pooling
from masm_lightning.data.settings import ExtractionSettings
from masm_lightning.data.video import read_frames

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CLIP = SHARED / "FaceForensics++/original_sequences/youtube/c23/videos/634.mp4"  # 1280×720, one face


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("size", [(7, 9), (8, 8), (23, 22)])  # odd sides need ceil mode's partial window
def test_strided_pooling_equals_ceil_mode_max_pooling(kernel, size):
    x = torch.randn(2, 3, *size)
    expected = torch.nn.MaxPool2d(kernel, 2, ceil_mode=True)(x)
    assert torch.equal(StridedMaxPool2d(kernel, 2)(x), expected)


def test_only_the_pooling_it_reproduces_is_replaced():
    with pytest.raises(ValueError, match="ceil-mode"):
        use_strided_pooling(torch.nn.Sequential(torch.nn.MaxPool2d(2, 2)))


def test_pyramid_levels_are_the_standard_pyramid_from_the_level_holding_the_smallest_face():
    full = pyramid_levels(720, 1280, min_face=20)  # facenet-pytorch's default pyramid: from scale 12/20
    assert full[0] == (0.6, (433, 769))
    assert all(b[0] == pytest.approx(a[0] * 0.709) for a, b in itertools.pairwise(full))
    levels = pyramid_levels(720, 1280, min_face=72)
    assert levels == full[len(full) - len(levels) :]  # a suffix: the same scales, none of the finest
    scale = levels[0][0]
    assert 12 <= 72 * scale < 12 / 0.709  # a 72 px face is 12-17 px on its finest level: P-net's cell


def test_frames_must_be_uint8_rgb():
    networks = [
        MTCNN(device="cpu").pnet,
    ] * 3
    with pytest.raises(ValueError, match="uint8 RGB"):
        detect_faces(np.zeros((1, 32, 32, 3), np.float32), *networks)


@pytest.mark.skipif(not CLIP.is_file(), reason=f"real sample clip not found at {CLIP}")
def test_same_faces_as_facenet_pytorch_on_real_frames():
    _, frames, _ = read_frames(CLIP, 6)
    frames = np.stack([f[::2, ::2] for f in frames])  # 640×360, as detection sees them
    reference = MTCNN(keep_all=True, device="cpu", min_face_size=36, thresholds=[0.7, 0.8, 0.9])
    networks = [use_strided_pooling(copy.deepcopy(net)) for net in (reference.pnet, reference.rnet, reference.onet)]
    boxes, probs, points = reference.detect(frames, landmarks=True)
    ours = detect_faces(frames, *networks, min_face_size=36, thresholds=(0.7, 0.8, 0.9))
    assert sum(len(b) for b, _, _ in ours) >= len(frames)  # the face, in every frame
    for (our_boxes, our_probs, our_points), b, p, marks in zip(ours, boxes, probs, points):
        np.testing.assert_allclose(our_boxes, b.astype(np.float32), atol=1e-3)  # measured: < 1e-4 px
        np.testing.assert_allclose(our_probs, p.astype(np.float32), atol=1e-5)
        np.testing.assert_allclose(our_points, marks.astype(np.float32), atol=1e-3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.skipif(not CLIP.is_file(), reason=f"real sample clip not found at {CLIP}")
def test_extraction_detector_boxes_agree_with_full_resolution_mtcnn():
    """The production detector (downscaled frames, standard-pyramid levels, full-resolution last stage,
    channels-last networks) against the reference loop's: facenet-pytorch defaults on the full 1280×720 frame."""
    _, frames, _ = read_frames(CLIP, 8)
    reference = MTCNN(keep_all=True, device="cpu")
    ours = MTCNNDetector.from_settings(ExtractionSettings(), device="cpu")(frames)
    ious = []
    for frame, (boxes, probs, _) in zip(frames, ours):
        reference_boxes, _ = reference.detect(frame)
        largest = max(reference_boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        assert len(boxes) and probs[0] >= 0.9
        ious.append(_iou(largest, boxes[0]))
    assert min(ious) >= 0.85 and np.median(ious) >= 0.93, np.round(ious, 3)  # measured: min 0.877, median 0.963
