"""Face extraction: frames spread over each video, MTCNN on downscaled frames, square or aligned crops, and a
resumable, shardable run that always ends in one manifest with a row for every video.

Layout written under ``out``::

    <dataset>/<split>/<real|fake>/<video_id>/<frame:05d>.png   crops
    records/<dataset>/<key>.json                               one per finished video (its manifest rows)
    settings.json                                              extraction settings and their hash
    manifest.csv                                               rebuilt from the records: every video appears

A video's crops go to a temporary folder that is renamed when complete, and its record is written last (atomic
rename): a run killed at any point and rerun redoes only unfinished videos, and ends with the same manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import av
import cv2
import numpy as np
import torch

from .indexers import IMAGE_SUFFIXES, VideoRecord
from .manifest import MANIFEST_NAME, write_manifest
from .mtcnn import detect_faces, pyramid_levels, use_strided_pooling

__all__ = [
    "EXTRACTOR_VERSION",
    "Detection",
    "ExtractionSettings",
    "MTCNNDetector",
    "build_manifest",
    "crop_aligned",
    "crop_box",
    "crop_face",
    "extract_video",
    "original_boxes",
    "read_frames",
    "sample_indices",
    "select_faces",
]

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (k, 4) xyxy, probs (k,), landmarks (k, 5, 2)
Detector = Callable[[list[np.ndarray]], list[Detection]]

# Standard 5-point face template (eyes, nose tip, mouth corners) on a 112×112 canvas (ArcFace/InsightFace), the
# reference DeepfakeBench aligns to; scaled to the crop size and shrunk by the margin scale below.
FACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                              [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


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
        checks = {"frames": self.frames >= 1, "size": self.size >= 16, "scale": self.scale >= 1.0,
                  "detect_short_side": self.detect_short_side >= 48, "min_face": 0.0 < self.min_face <= 1.0,
                  "min_prob": 0.0 <= self.min_prob < 1.0, "jpeg_quality": 1 <= self.jpeg_quality <= 100,
                  "stage_thresholds": len(self.stage_thresholds) == 3
                  and all(0.0 <= t < 1.0 for t in self.stage_thresholds)}
        valid = {"frames": ">= 1", "size": ">= 16 px", "scale": ">= 1.0", "detect_short_side": ">= 48 px",
                 "min_face": "in (0, 1], a share of the short side", "min_prob": "in [0, 1)",
                 "jpeg_quality": "in [1, 100]", "stage_thresholds": "three values in [0, 1)"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"extraction {name}={getattr(self, name)!r} is invalid: must be {valid[name]}")

    def digest(self) -> str:
        """Hash of the settings and of the extractor's version: crops made by older code are redone, not mixed."""
        identity = {**asdict(self), "extractor_version": EXTRACTOR_VERSION}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``total`` frames (centres of equal segments), never the
    first K; all frames when the video is shorter."""
    if total <= 0:
        return []
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def read_frames(path: Path, count: int, decode_threads: int = 0) -> tuple[list[int], list[np.ndarray], str]:
    """Read ``count`` frames spread over the video as upright RGB arrays; returns (indices, frames, status).

    An image file is one frame. Videos are read with PyAV: one pass over the packets (no decoding) gives the
    exact frame count (OpenCV's is an estimate from the header) and the group-of-pictures layout; the decoding
    pass then skips groups without a sampled frame and never decodes a non-reference frame that is not sampled —
    no other frame depends on it, so the sampled frames are bit-identical to decoding everything (tested on open
    and closed groups of pictures). Containers whose timestamps are not in display order (AVI) are decoded whole.
    Status: ok, unreadable, empty. ``decode_threads``: FFmpeg's decoding threads (0: one per core); 1 when
    several videos are decoded at once, which on a CPU scales better than threads inside one decoder.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return ([0], [cv2.cvtColor(image, cv2.COLOR_BGR2RGB)], "ok") if image is not None else ([], [], "unreadable")

    def decode(layout: list[tuple[int | None, bool]], by_timestamp: bool) -> dict[int, np.ndarray] | None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.codec_context is None:  # no decoder for this codec
                raise OSError(f"{path}: no decoder for its video stream")
            stream.thread_type = "SLICE" if decode_threads == 1 else "AUTO"
            stream.codec_context.thread_count = decode_threads
            return _decode_sample(container, stream, layout, count, by_timestamp)

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return [], [], "unreadable"
            layout = [(p.pts, p.is_keyframe) for p in _packets(container)]
            display_order = "avi" not in container.format.name  # AVI stores decoding-order timestamps
        if not layout:
            return [], [], "empty"
        timestamps = [pts for pts, _ in layout]
        by_timestamp = display_order and None not in timestamps and len(set(timestamps)) == len(timestamps)
        got = decode(layout, by_timestamp)
        if got is None:  # timestamps turned out not to be in display order: decode everything, count frames
            got = decode(layout, False)
    except (av.FFmpegError, OSError):
        return [], [], "unreadable"
    if not got:
        return [], [], "empty"
    indices = sorted(got)
    return indices, [got[i] for i in indices], "ok"


def _packets(container: Any) -> Any:
    """The video packets with data, up to the first demuxing error (a truncated file keeps what came before)."""
    try:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                yield packet
    except av.FFmpegError:
        return


def _decode_sample(container: Any, stream: Any, layout: list[tuple[int | None, bool]], count: int,
                   by_timestamp: bool) -> dict[int, np.ndarray] | None:
    """Decode the frames :func:`sample_indices` picks (index = rank in display order) from packets laid out as
    ``layout`` (presentation timestamp, keyframe) in decoding order. ``by_timestamp``: frames are found by their
    timestamps, and unneeded packets are skipped; otherwise everything is decoded and frames are counted. Returns
    None when the timestamps of the decoded frames are not increasing (they are not display order)."""
    if by_timestamp:
        ranked = sorted(pts for pts, _ in layout)
        wanted = {ranked[i]: i for i in sample_indices(len(ranked), count)}  # timestamp → frame index
        skip = _groups_to_skip(layout, set(wanted))
    else:
        wanted = {i: i for i in sample_indices(len(layout), count)}  # output position → frame index
        skip = set()
    context = stream.codec_context
    got: dict[int, np.ndarray] = {}
    shown, last_pts = 0, None

    def keep(frames: Any) -> bool:
        nonlocal shown, last_pts
        for frame in frames:
            if by_timestamp:
                if frame.pts is None or (last_pts is not None and frame.pts <= last_pts):
                    return False
                key, last_pts = frame.pts, frame.pts
            else:
                key, shown = shown, shown + 1
            if key in wanted:
                image = frame.to_ndarray(format="rgb24")
                turns = round((frame.rotation or 0) / 90) % 4  # phone videos: upright, as players show them
                got[wanted[key]] = np.ascontiguousarray(np.rot90(image, turns))
        return True

    skipping = False
    for position, packet in enumerate(_packets(container)):
        if position in skip:
            skipping = True
            continue
        if skipping:  # resuming at a keyframe after skipped groups: drain and reset the decoder first, or an
            skipping = False  # open group's keyframe meets stale reference state and yields nothing
            try:
                if not keep(context.decode(None)):
                    return None
            except av.FFmpegError:
                pass
            context.flush_buffers()
        if by_timestamp:
            context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        try:
            if not keep(packet.decode()):
                return None
        except av.FFmpegError:  # a corrupt packet: its frame is lost, the rest may still decode
            continue
        if len(got) == len(wanted):
            return got
    try:
        if not keep(context.decode(None)):  # frames still inside the decoder
            return None
    except av.FFmpegError:
        pass
    return got


def _groups_to_skip(layout: list[tuple[int, bool]], wanted: set[int]) -> set[int]:
    """Packet positions of the groups of pictures (keyframe to keyframe, decoding order) that hold no sampled
    frame and that no sampled frame may depend on (the leading frames of the next group, shown before its
    keyframe, can refer to this group)."""
    starts = [i for i, (_, key) in enumerate(layout) if key] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    groups = [range(a, b) for a, b in zip(starts, starts[1:] + [len(layout)])]
    skip: set[int] = set()
    for g, group in enumerate(groups):
        if any(layout[i][0] in wanted for i in group):
            continue
        if g + 1 < len(groups):
            following = groups[g + 1]
            key_pts = layout[following[0]][0]
            if any(layout[i][0] in wanted and layout[i][0] < key_pts for i in following):
                continue
        skip.update(group)
    return skip


class MTCNNDetector:
    """facenet-pytorch MTCNN (weights ship in the wheel), batched per video, on frames downscaled so the shorter
    side is at most ``short_side``; boxes and landmarks are mapped back to full resolution.

    Deepfake datasets film one or two large faces: searching only faces of at least ``min_face`` × the short side
    cuts MTCNN's image pyramid (its cost) several-fold versus its default 20 px minimum.
    """

    def __init__(self, device: str | None = None, short_side: int = 360, min_face: float = 0.1,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7)) -> None:
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.short_side, self.min_face, self.thresholds = short_side, min_face, tuple(thresholds)
        mtcnn = MTCNN(device=self.device)  # only for its three networks and their weights
        # Channels-last convolutions: ~20% less detection time on a CPU for these few-channel networks, same boxes.
        self.networks = tuple(use_strided_pooling(net).to(memory_format=torch.channels_last)
                              for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet))

    @classmethod
    def from_settings(cls, settings: ExtractionSettings, device: str | None = None) -> MTCNNDetector:
        """The detector an extraction with ``settings`` uses (preprocess and ``detect`` alike)."""
        return cls(device, settings.detect_short_side, settings.min_face, settings.stage_thresholds)

    def __call__(self, frames: list[np.ndarray]) -> list[Detection]:
        h, w = frames[0].shape[:2]
        factor = min(1.0, self.short_side / min(h, w))
        small = frames if factor == 1.0 else [
            cv2.resize(f, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA) for f in frames]
        # The levels of MTCNN's pyramid on the full frame that hold faces >= the smallest face (min_face of the
        # short side, never below MTCNN's usual 20 px on the frames it sees), taken from the downscaled copy; the
        # final stage crops from the full frame. Both keep the boxes close to those of the reference loop
        # (full-resolution MTCNN): docs/benchmarks.md.
        smallest = max(self.min_face * min(h, w), 20 / factor)
        levels = [(scale / factor, size) for scale, size in pyramid_levels(h, w, smallest)]
        return detect_faces(np.stack(small), *self.networks, thresholds=self.thresholds, levels=levels,
                            full_frames=None if factor == 1.0 else frames)


def _track(detections: list[Detection], min_prob: float) -> list[int | None]:
    """One face per frame that stays the same person: start from the largest confident face of the frame where
    it is largest, then in every frame take the confident face nearest the previous choice (largest as tie-break)."""
    confident = [np.flatnonzero(p >= min_prob) for _, p, _ in detections]
    areas = [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b, _, _ in detections]
    candidates = [(areas[f][i], f, i) for f in range(len(detections)) for i in confident[f]]
    if not candidates:
        return [None] * len(detections)
    _, anchor_frame, anchor = max(candidates)
    centre = lambda f, i: detections[f][0][i].reshape(2, 2).mean(0)  # noqa: E731
    chosen: list[int | None] = [None] * len(detections)
    chosen[anchor_frame] = anchor
    for order in (range(anchor_frame + 1, len(detections)), range(anchor_frame - 1, -1, -1)):
        previous = centre(anchor_frame, anchor)
        for f in order:
            if len(confident[f]):
                distance = [np.linalg.norm(centre(f, i) - previous) - 1e-3 * areas[f][i] for i in confident[f]]
                chosen[f] = int(confident[f][int(np.argmin(distance))])
                previous = centre(f, chosen[f])
    return chosen


def crop_box(frame: np.ndarray, box: np.ndarray, size: int, scale: float) -> np.ndarray:
    """A square of side ``scale × max(w, h)`` centred on the box (edges replicated past the frame), resized."""
    x0, y0, x1, y1 = box
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # An affine map does crop, pad and resize in one interpolation.
    factor = size / side
    matrix = np.array([[factor, 0, size / 2 - factor * cx], [0, factor, size / 2 - factor * cy]], np.float32)
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def crop_aligned(frame: np.ndarray, landmarks: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Similarity transform of the 5 landmarks onto the standard template, the template shrunk by ``scale`` around
    the crop centre so the face keeps the same margin as a ``box`` crop."""
    template = (FACE_TEMPLATE_112 / 112.0 - 0.5) / scale + 0.5
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), template * size, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate: no similarity transform")
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def select_faces(detections: Sequence[Detection], settings: ExtractionSettings) -> list[list[int]]:
    """Per frame, the indices of the detections to crop: the tracked face (``faces="largest"``) or every face
    of at least ``min_prob`` (``faces="all"``)."""
    if settings.faces == "all":
        return [[int(i) for i in np.flatnonzero(probs >= settings.min_prob)] for _, probs, _ in detections]
    return [[] if pick is None else [pick] for pick in _track(list(detections), settings.min_prob)]


def crop_face(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, settings: ExtractionSettings) -> np.ndarray:
    """One face crop as ``settings`` asks (``box`` or ``aligned``, side ``size``, margin ``scale``)."""
    if settings.crop == "aligned":
        try:
            return crop_aligned(frame, landmarks, settings.size, settings.scale)
        except ValueError:  # degenerate landmarks: the square crop still holds the face
            pass
    return crop_box(frame, box, settings.size, settings.scale)


def _key(record: VideoRecord) -> str:
    """A file name for a video's record, unique per (dataset, label, video id)."""
    digest = hashlib.sha1(f"{record.dataset}|{record.label}|{record.video_id}".encode()).hexdigest()[:12]
    return f"{record.video_id.replace('/', '__')}.{record.label}.{digest}"


def _record_path(out: Path, record: VideoRecord) -> Path:
    return out / "records" / record.dataset / f"{_key(record)}.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _row(record: VideoRecord, **fields: Any) -> dict[str, Any]:
    row = {"dataset": record.dataset, "split": record.split, "label": record.label, "method": record.method,
           "video_id": record.video_id, "original_id": record.original_id, "video_path": str(record.video_path),
           "frame_index": "", "crop_path": "", "det_prob": "", "box": "", "status": "ok"}
    row.update(fields)
    return row


def extract_video(record: VideoRecord, out: Path, settings: ExtractionSettings, detector: Detector | None,
                  reuse_boxes: dict[str, Any] | None = None, decode_threads: int = 0) -> list[dict[str, Any]]:
    """Extract one video's faces; write its crops and its record atomically; return its manifest rows.

    A video that yields nothing gets one row with an empty path and a status (missing, unreadable, empty,
    no_face). ``reuse_boxes`` (frame index → box and landmarks of the original video) skips detection for aligned
    fakes. Safe to call from several threads at once, with one shared detector.
    """
    if record.status == "missing":
        rows = [_row(record, status="missing")]
    else:
        indices, frames, status = read_frames(record.video_path, settings.frames, decode_threads)
        if status != "ok":
            rows = [_row(record, status=status)]
        else:
            rows = _crop_frames(record, out, settings, detector, indices, frames, reuse_boxes)
    _write_atomic(_record_path(out, record), json.dumps({"settings": settings.digest(), "rows": rows}))
    return rows


def _crop_frames(record: VideoRecord, out: Path, settings: ExtractionSettings, detector: Detector,
                 indices: list[int], frames: list[np.ndarray], reuse_boxes: dict[str, Any] | None) -> list[dict]:
    if reuse_boxes is not None and all(str(i) in reuse_boxes for i in indices):
        detections = [(np.array([reuse_boxes[str(i)]["box"]], np.float32), np.array([1.0], np.float32),
                        np.array([reuse_boxes[str(i)]["landmarks"]], np.float32)) for i in indices]
    else:
        detections = detector(frames)
    folder = out / record.dataset / record.split / ("fake" if record.label else "real") / record.video_id
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    for index, frame, (boxes, probs, points), picks in zip(indices, frames, detections,
                                                           select_faces(detections, settings)):
        for face, i in enumerate(picks):
            crop = crop_face(frame, boxes[i], points[i], settings)
            name = f"{index:05d}" + (f"_{face}" if settings.faces == "all" else "") + f".{settings.image_format}"
            params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality] if settings.image_format == "jpg" else []
            if not cv2.imwrite(str(tmp / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params):
                raise OSError(f"could not write {tmp / name} (disk full or folder removed?)")
            rows.append(_row(record, frame_index=index, crop_path=(folder / name).relative_to(out).as_posix(),
                             det_prob=round(float(probs[i]), 4), box=" ".join(f"{v:.1f}" for v in boxes[i]),
                             landmarks=points[i].round(1).tolist()))
    if not rows:
        shutil.rmtree(tmp, ignore_errors=True)
        return [_row(record, status="no_face")]
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return rows


def original_boxes(record: VideoRecord, out: Path,
                   records: dict[tuple[str, int, str], VideoRecord]) -> dict[str, Any] | None:
    """Frame index → box and landmarks of the real video ``record`` was made from, if it was extracted."""
    original = records.get((record.dataset, 0, record.original_id))
    if original is None or not _record_path(out, original).is_file():
        return None
    rows = json.loads(_record_path(out, original).read_text())["rows"]
    return {str(r["frame_index"]): {"box": [float(v) for v in r["box"].split()], "landmarks": r["landmarks"]}
            for r in rows if r["status"] == "ok"}


def done(record: VideoRecord, out: Path, settings: ExtractionSettings) -> bool:
    """Has this video been extracted with these settings already?"""
    path = _record_path(out, record)
    return path.is_file() and json.loads(path.read_text()).get("settings") == settings.digest()


def build_manifest(out: Path, records: Sequence[VideoRecord] | None = None, name: str = MANIFEST_NAME) -> Path:
    """Rebuild ``manifest.csv`` from the per-video records (of ``records`` only, or of every finished video), in a
    fixed order, so interrupted, resumed and sharded runs give the same file."""
    if records is None:
        files = sorted((out / "records").glob("*/*.json"))
    else:
        files = [_record_path(out, r) for r in records if _record_path(out, r).is_file()]
    rows = [row for f in files for row in json.loads(f.read_text())["rows"]]
    rows.sort(key=lambda r: (r["dataset"], r["split"], r["label"], r["video_id"], str(r["frame_index"]).zfill(8)))
    manifest = out / name
    write_manifest(manifest, rows)
    return manifest
