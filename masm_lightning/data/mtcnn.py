"""MTCNN face detection on a batch of frames: facenet-pytorch's three networks, weights and cascade, with the two
costs that dominate it on a CPU removed and the results unchanged.

facenet-pytorch's ``detect_face`` resamples every candidate box of stages 2 and 3 with its own
``interpolate(mode="area")`` call (thousands of calls per video), and PyTorch's NCHW ``max_pool2d`` kernel is
3-8x slower on a CPU than taking maxima of strided slices. Here:

* every area resampling (the image pyramid and each candidate crop) is one gather from a summed-area table of the
  integer pixel values. An area-resampled pixel is the mean of a rectangle of source pixels, and
  ``adaptive_avg_pool2d`` picks the rectangles ``[floor(i*n/m), ceil((i+1)*n/m))`` exactly as done below, so the
  sums are exact integers and the means equal facenet's up to float rounding;
* the networks' ``MaxPool2d(k, 2, ceil_mode=True)`` layers become :class:`StridedMaxPool2d`, the same maxima.

What is kept from facenet-pytorch, deliberately: its networks and weights, its stage logic (box generation,
regression, NMS at 0.5/0.7 and the final "Min" NMS), its clipping of candidate boxes to the frame. The boxes,
scores and landmarks match ``facenet_pytorch.MTCNN.detect`` (tested on real frames). Two options change what is
computed, on purpose, for the extractor: ``levels`` (a chosen subset of the pyramid, :func:`pyramid_levels`) and
``full_frames`` (the last stage on the full-resolution originals of downscaled frames).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops.boxes import batched_nms

__all__ = ["StridedMaxPool2d", "detect_faces", "pyramid_levels", "use_strided_pooling"]


class StridedMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel_size, stride, ceil_mode=True)`` (no padding) as maxima of strided slices."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        h, w = x.shape[-2:]
        out_h, out_w = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1  # ceil mode: a last, partial window
        # Windows that run past the edge see -inf there, as in ceil mode.
        x = nn.functional.pad(x, (0, (out_w - 1) * s + k - w, 0, (out_h - 1) * s + k - h), value=float("-inf"))
        rows = x[..., 0 : (out_h - 1) * s + 1 : s, :]
        for dy in range(1, k):
            rows = torch.maximum(rows, x[..., dy : dy + (out_h - 1) * s + 1 : s, :])
        out = rows[..., 0 : (out_w - 1) * s + 1 : s]
        for dx in range(1, k):
            out = torch.maximum(out, rows[..., dx : dx + (out_w - 1) * s + 1 : s])
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, ceil_mode=True"


def use_strided_pooling(network: nn.Module) -> nn.Module:
    """Swap every ``MaxPool2d`` child of an MTCNN network (all are unpadded, ceil mode, kernel >= stride) for
    :class:`StridedMaxPool2d`."""
    for name, child in list(network.named_children()):
        if isinstance(child, nn.MaxPool2d):
            if (
                child.padding not in (0, (0, 0))
                or child.dilation not in (1, (1, 1))
                or not child.ceil_mode
                or not isinstance(child.kernel_size, int)
                or not isinstance(child.stride, int)
                or child.kernel_size < child.stride
            ):
                raise ValueError(
                    f"{name}: only unpadded, undilated ceil-mode pooling with a square kernel no "
                    f"smaller than its stride is replaced, got {child}"
                )
            setattr(network, name, StridedMaxPool2d(child.kernel_size, child.stride))
    return network


def _bin_edges(start: torch.Tensor, length: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """adaptive_avg_pool2d's bins over ``[start, start + length)``: bin i is [floor(i*n/m), ceil((i+1)*n/m))."""
    i = torch.arange(bins, device=start.device)
    n = length[:, None]
    return start[:, None] + i * n // bins, start[:, None] - (-((i + 1) * n) // bins)


def _summed_area_table(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H+1, W+1, C) integer prefix sums of (N, H, W, C) uint8 frames: exact, so the means taken from it are
    too. int32 holds 255 × H × W up to ~8.4 megapixels, int64 beyond."""
    count, h, w, channels = frames.shape
    if device.type != "cpu":
        dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
        table = torch.as_tensor(frames, device=device).to(dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
        return nn.functional.pad(table, (0, 0, 1, 0, 1, 0))
    # On a CPU NumPy's cumulative sums are ~5x faster than torch's; written straight into the padded table.
    sums = np.zeros((count, h + 1, w + 1, channels), np.int32 if 255 * h * w < 2**31 else np.int64)
    inner = sums[:, 1:, 1:]
    np.cumsum(frames, 1, dtype=sums.dtype, out=inner)
    np.cumsum(inner, 2, dtype=sums.dtype, out=inner)
    return torch.from_numpy(sums)


def _resample_frames(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Whole frames area-resampled to ``size``: (N, C, size[0], size[1]) float32, separably (rows, then columns)."""
    (h, w), device = (table.shape[1] - 1, table.shape[2] - 1), table.device
    whole = torch.zeros(1, dtype=torch.long, device=device)
    y0, y1 = (e[0] for e in _bin_edges(whole, whole + h, size[0]))
    x0, x1 = (e[0] for e in _bin_edges(whole, whole + w, size[1]))
    rows = table.index_select(1, y1) - table.index_select(1, y0)
    sums = rows.index_select(2, x1) - rows.index_select(2, x0)
    area = ((y1 - y0)[:, None] * (x1 - x0)[None, :]).to(torch.float32)
    return (sums.to(torch.float32) / area[None, :, :, None]).permute(0, 3, 1, 2)  # channels-last memory


def _resample_boxes(
    table: torch.Tensor,
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    side: int,
) -> torch.Tensor:
    """Rectangles of the frames area-resampled to side × side: rectangle k is rows ``[top, top+height)`` and
    columns ``[left, left+width)`` of frame ``images[k]``. Returns (K, C, side, side) float32."""
    _, rows, cols, channels = table.shape
    y0, y1 = _bin_edges(top, height, side)
    x0, x1 = _bin_edges(left, width, side)
    # One gather per rectangle corner (all channels of a pixel at once), no per-box loop.
    pixels = table.reshape(-1, channels)
    row0, row1 = ((images[:, None] * rows + y)[:, :, None] * cols for y in (y0, y1))
    col0, col1 = x0[:, None, :], x1[:, None, :]
    corner = lambda row, col: pixels.index_select(0, (row + col).reshape(-1))
    sums = (corner(row1, col1) - corner(row0, col1) - corner(row1, col0) + corner(row0, col0)).view(
        len(images), side, side, channels
    )
    area = ((y1 - y0)[:, :, None] * (x1 - x0)[:, None, :]).to(torch.float32)
    return (sums.to(torch.float32) / area[..., None]).permute(0, 3, 1, 2)  # channels-last memory


def _in_chunks(network: nn.Module, pixels: torch.Tensor, chunk: int = 128) -> tuple[torch.Tensor, ...]:
    """The network on at most ``chunk`` crops at a time (bounded GPU memory with thousands of candidates)."""
    outputs = [network(pixels[i : i + chunk]) for i in range(0, len(pixels), chunk)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def _area_resize(crop: np.ndarray, side: int) -> np.ndarray:
    """``interpolate(mode="area")`` (adaptive average pooling) of one (h, w, C) uint8 crop to side × side, from
    the crop's own summed-area table: exact means, float32 (side, side, C)."""
    table = cv2.integral(crop)  # (h+1, w+1, C) int32
    i = np.arange(side)
    (y0, y1), (x0, x1) = ((i * n // side, -(-(i + 1) * n // side)) for n in crop.shape[:2])
    sums = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    return sums.astype(np.float32) / ((y1 - y0)[:, None, None] * (x1 - x0)[None, :, None]).astype(np.float32)


def _crops_one_by_one(
    frames: Sequence[np.ndarray], boxes: torch.Tensor, image_inds: torch.Tensor, pad: Callable, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-3 crops from full-resolution frames, each area-resampled on its own as facenet-pytorch does (a few
    hundred per video: no summed-area table of every full frame needed). Returns normalised (K, 3, side, side)
    CPU crops and the mask of boxes that had pixels to crop."""
    h, w = frames[0].shape[:2]
    y, ey, x, ex = pad(boxes, w, h)
    valid = torch.as_tensor((ey > y - 1) & (ex > x - 1))
    resized = [
        _area_resize(frames[int(i)][y0 - 1 : y1, x0 - 1 : x1], side)
        for i, y0, y1, x0, x1, ok in zip(image_inds.tolist(), y, ey, x, ex, valid)
        if ok
    ]
    pixels = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2) if resized else torch.zeros(0, 3, side, side)
    return _normalise(pixels), valid.to(boxes.device)


def pyramid_levels(
    height: int, width: int, min_face: float, factor: float = 0.709, smallest_face: int = 20
) -> list[tuple[float, tuple[int, int]]]:
    """MTCNN's standard image pyramid for a ``height`` × ``width`` frame (facenet-pytorch's: scales
    ``12 / smallest_face × factor**k`` while the short side keeps 12 px, level k of size ``int(side × scale + 1)``),
    from the finest level that can still hold a face of ``min_face`` pixels on.

    Detecting only on these levels is the standard detector restricted to faces of at least ``min_face``; the
    candidate boxes match the full pyramid's far better than a pyramid of other scales would (MTCNN's boxes move
    by a few pixels with the scale grid). Returns (scale, (level height, level width)) pairs.
    """
    levels, scale = [], 12.0 / smallest_face
    while min(height, width) * scale >= 12:
        levels.append((scale, (int(height * scale + 1), int(width * scale + 1))))
        scale *= factor
    # A face of min_face px is 12 to 12/factor px (P-net's 12 px cell) on the finest level of scale >= 12/min_face.
    finest = max([i for i, (scale, _) in enumerate(levels) if scale >= 12.0 / min_face], default=0)
    return levels[finest:]


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125  # MTCNN's input scaling


@torch.no_grad()
def detect_faces(
    frames: np.ndarray,
    pnet: nn.Module,
    rnet: nn.Module,
    onet: nn.Module,
    min_face_size: int = 20,
    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    factor: float = 0.709,
    levels: Sequence[tuple[float, tuple[int, int]]] | None = None,
    full_frames: Sequence[np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Faces in a batch of equal-size uint8 RGB frames (N, H, W, 3).

    Returns per frame (boxes (k, 4) xyxy, probabilities (k,), landmarks (k, 5, 2)), largest face first — what
    ``facenet_pytorch.MTCNN(keep_all=True).detect(frames, landmarks=True)`` returns, as float32 arrays (empty ones
    where it returns None).

    ``levels``: the pyramid as (scale, size) pairs instead of the one ``min_face_size`` and ``factor`` give (see
    :func:`pyramid_levels`). ``full_frames``: when ``frames`` are downscaled copies, the originals: the last stage,
    which sets the final boxes and landmarks, then crops the faces from them (as the reference pipelines do), and
    boxes and landmarks come back in their coordinates.
    """
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, generateBoundingBox, pad, rerec

    device = next(pnet.parameters()).device
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8 RGB, got {frames.dtype} of shape {frames.shape}")
    count, h, w = frames.shape[:3]
    table = _summed_area_table(frames, device)

    # Stage 1: P-net over an image pyramid whose smallest searched face is min_face_size.
    if levels is None:
        scale, short, levels = 12.0 / min_face_size, min(h, w) * 12.0 / min_face_size, []
        while short >= 12:
            levels.append((scale, (int(h * scale + 1), int(w * scale + 1))))
            scale, short = scale * factor, short * factor
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    if not levels:  # frames too small for P-net's 12 px cell at any scale
        return [empty] * count
    level_boxes: list[torch.Tensor] = []
    level_inds: list[torch.Tensor] = []
    for scale, size in levels:
        pyramid = _resample_frames(table, size)
        reg, probs = pnet(_normalise(pyramid))
        found, inds = generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        keep = batched_nms(found[:, :4], found[:, 4], inds, 0.5)
        level_boxes.append(found[keep])
        level_inds.append(inds[keep])
    boxes, image_inds = torch.cat(level_boxes), torch.cat(level_inds)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[keep], image_inds[keep]
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack(
        [
            boxes[:, 0] + boxes[:, 5] * width,
            boxes[:, 1] + boxes[:, 6] * height,
            boxes[:, 2] + boxes[:, 7] * width,
            boxes[:, 3] + boxes[:, 8] * height,
            boxes[:, 4],
        ],
        1,
    )
    boxes = rerec(boxes)

    def crops(boxes: torch.Tensor, image_inds: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        # facenet-pytorch crops the box clipped to the frame (1-based inclusive ends) and stretches it to side².
        y, ey, x, ex = (torch.as_tensor(v, dtype=torch.long, device=device) for v in pad(boxes, w, h))
        valid = (ey > y - 1) & (ex > x - 1)  # boxes entirely outside the frame have nothing to crop
        pixels = _resample_boxes(
            table, image_inds[valid], y[valid] - 1, x[valid] - 1, (ey - y + 1)[valid], (ex - x + 1)[valid], side
        )
        return _normalise(pixels), valid

    # Stage 2: R-net on 24×24 crops of the candidates.
    if len(boxes):
        pixels, valid = crops(boxes, image_inds, 24)
        boxes, image_inds = boxes[valid], image_inds[valid]
    if len(boxes):
        regression, probs = _in_chunks(rnet, pixels)
        passed = probs[:, 1] > thresholds[1]
        boxes = torch.cat((boxes[passed, :4], probs[passed, 1:2]), 1)
        image_inds, regression = image_inds[passed], regression[passed]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes = rerec(bbreg(boxes[keep], regression[keep]))
        image_inds = image_inds[keep]

    # Stage 3: O-net on 48×48 crops: final boxes, probabilities and landmarks.
    points = torch.zeros(0, 5, 2, device=device)
    if len(boxes) and full_frames is not None:  # from here on, full-resolution coordinates
        full_h, full_w = full_frames[0].shape[:2]
        to_full = torch.tensor([full_w / w, full_h / h], device=device)
        # Boxes are 1-based with inclusive ends (pixels x1-1 … x2-1): the same pixels at full resolution are
        # ((x1-1)·s, x2·s), i.e. 1-based x1' = (x1-1)·s + 1, x2' = x2·s.
        boxes = torch.cat(((boxes[:, :2] - 1) * to_full + 1, boxes[:, 2:4] * to_full, boxes[:, 4:]), 1)
        boxes = rerec(boxes)
    if len(boxes):
        if full_frames is None:
            pixels, valid = crops(boxes, image_inds, 48)
        else:
            pixels, valid = _crops_one_by_one(full_frames, boxes, image_inds, pad, 48)
            pixels = pixels.to(device)
        boxes, image_inds = boxes[valid], image_inds[valid]
    if len(boxes):
        regression, landmarks, probs = _in_chunks(onet, pixels)
        passed = probs[:, 1] > thresholds[2]
        boxes = torch.cat((boxes[passed, :4], probs[passed, 1:2]), 1)
        image_inds, regression, landmarks = image_inds[passed], regression[passed], landmarks[passed]
        box_w, box_h = boxes[:, 2:3] - boxes[:, 0:1] + 1, boxes[:, 3:4] - boxes[:, 1:2] + 1
        points = torch.stack(
            (box_w * landmarks[:, :5] + boxes[:, 0:1] - 1, box_h * landmarks[:, 5:] + boxes[:, 1:2] - 1), 2
        )
        boxes = bbreg(boxes, regression)
        keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds, points = boxes[keep], image_inds[keep], points[keep]

    found_boxes, found_points, found_inds = boxes.cpu().numpy(), points.cpu().numpy(), image_inds.cpu().numpy()
    out = []
    for i in range(count):
        mine = np.flatnonzero(found_inds == i)
        areas = (found_boxes[mine, 2] - found_boxes[mine, 0]) * (found_boxes[mine, 3] - found_boxes[mine, 1])
        mine = mine[np.argsort(areas)[::-1]]
        out.append(
            (
                found_boxes[mine, :4].astype(np.float32),
                found_boxes[mine, 4].astype(np.float32),
                found_points[mine].astype(np.float32).reshape(-1, 5, 2),
            )
        )
    return out
