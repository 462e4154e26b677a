"""``preprocess``: index a dataset as downloaded, extract faces from every video, write one manifest."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any, Literal

from ..data.extract import extract_dataset
from ..data.indexers import DatasetName
from ..data.settings import ExtractionSettings
from ..data.sources import DataSource, extraction_stamp, index_options, stamp_content
from . import NoResult

__all__ = ["preprocess", "preprocess_command"]


def preprocess(
    dataset: DatasetName,
    root: Path,
    out: Path,
    splits: Path | None = None,
    compression: Literal["raw", "c23", "c40"] = "c23",
    methods: list[str] | None = None,
    frames: int = 32,
    crop: Literal["box", "aligned"] = "box",
    faces: Literal["largest", "all"] = "largest",
    size: int = 256,
    image_format: Literal["png", "jpg"] = "png",
    jpeg_quality: int = 95,
    detect_short_side: int = ExtractionSettings.detect_short_side,
    min_face: float = ExtractionSettings.min_face,
    stage_thresholds: tuple[float, float, float] = ExtractionSettings.stage_thresholds,
    workers: int = 2,
    device: str | None = None,
    shard: int = 0,
    num_shards: int = 1,
    reuse_original_boxes: bool = False,
) -> Path:
    """Extract faces from a dataset as downloaded and write <out>/manifest.csv.

    As a command, its exit status is 0 when some video gave a face crop, 1 when none did, 2 for a bad option.

    Args:
        dataset: ffpp, dfd, celebdf-v1, celebdf-v2, dfdc, dfdcp or folder.
        root: the dataset's root folder.
        out: output folder (crops, per-video records, settings, manifest).
        splits: FF++ only: folder with the official train/val/test.json (default <root>/splits).
        compression: FF++/DFD only: raw, c23 or c40.
        methods: FF++ only: manipulations to include (default the four of the paper).
        frames: frames per video, spread uniformly over the whole video.
        crop: box (square around the detection) or aligned (5-point similarity to the template).
        faces: largest (one face per frame, followed across the video) or all confident faces.
        size: crop side in pixels.
        image_format: png or jpg.
        jpeg_quality: JPEG quality when image_format is jpg.
        detect_short_side: frames are downscaled to this shorter side for detection (the last MTCNN stage still
            crops from the full frame); at least the videos' short side: full-resolution detection, boxes closest
            to full-resolution MTCNN, about 40% slower (docs/benchmarks.md).
        min_face: smallest face searched, as a share of the frame's short side.
        stage_thresholds: MTCNN's three stage thresholds; [0.6,0.7,0.7] (facenet-pytorch's) with a
            detect_short_side of at least the videos' short side reproduces full-resolution MTCNN's boxes.
        workers: videos extracted at once (threads; about the number of cores; for many more, run shards).
        device: cpu or cuda (default: cuda when available).
        shard: this process's shard, in [0, num_shards).
        num_shards: number of shards (e.g. a SLURM array); run once more with the defaults to combine.
        reuse_original_boxes: crop a fake where its original (FF++ target video, DFDC original) was cropped,
            frame by frame, instead of detecting again — the fake and its source stay aligned. Falls back to
            detection when the original has not been extracted (e.g. it is in another shard).
    """
    source = DataSource(
        dataset,
        root=str(root),
        splits=None if splits is None else str(splits),
        compression=compression,
        methods=methods,
    )
    settings = ExtractionSettings(
        frames=frames,
        crop=crop,
        faces=faces,
        size=size,
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        detect_short_side=detect_short_side,
        min_face=min_face,
        stage_thresholds=(*stage_thresholds,),
    )  # a tuple also when given a list
    manifest = extract_dataset(
        dataset,
        root,
        out,
        settings,
        index_options(source),
        workers=workers,
        device=device,
        shard=shard,
        num_shards=num_shards,
        reuse_original_boxes=reuse_original_boxes,
    )
    if num_shards == 1:  # complete: a data module with the same source and settings reuses it as it is
        extraction_stamp(out).write(stamp_content(source, settings))
    return manifest


@functools.wraps(preprocess)
def preprocess_command(*args: Any, **kwargs: Any) -> Path:
    """:func:`preprocess` as a command: exit status 1 when no video gave a face crop."""
    manifest = preprocess(*args, **kwargs)
    with Path(manifest).open(newline="") as f:
        if not any(row["crop_path"] for row in csv.DictReader(f)):
            raise NoResult("no video gave a face crop")
    return manifest
