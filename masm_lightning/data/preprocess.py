"""The ``preprocess`` job: index a dataset, extract faces from every video, write one manifest."""

from __future__ import annotations

import csv
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from .extract import (
    EXTRACTOR_VERSION,
    ExtractionSettings,
    MTCNNDetector,
    _write_atomic,
    build_manifest,
    done,
    extract_video,
    original_boxes,
)
from .indexers import DatasetName, VideoRecord, index_dataset
from .sources import DataSource, index_options, write_stamp

__all__ = ["extract_dataset", "preprocess"]


def _shard(records: list[VideoRecord], shard: int, num_shards: int) -> list[VideoRecord]:
    """Deterministic partition: videos sorted by key, every ``num_shards``-th from ``shard``."""
    ordered = sorted(records, key=lambda r: (r.dataset, r.label, r.video_id))
    return ordered[shard::num_shards]


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
    """Extract faces from a dataset as downloaded and write ``<out>/manifest.csv``.

    Args:
        dataset: ffpp, dfd, celebdf-v1, celebdf-v2, dfdc, dfdcp or folder.
        root: the dataset's root folder.
        out: output folder (crops, per-video records, settings, manifest).
        splits: FF++ only: folder with the official train/val/test.json (default ``<root>/splits``).
        compression: FF++/DFD only: raw, c23 or c40.
        methods: FF++ only: manipulations to include (default the four of the paper).
        frames: frames per video, spread uniformly over the whole video.
        crop: ``box`` (square around the detection) or ``aligned`` (5-point similarity to the template).
        faces: ``largest`` (one face per frame, followed across the video) or ``all`` confident faces.
        size: crop side in pixels.
        image_format: png or jpg.
        jpeg_quality: JPEG quality when ``image_format`` is jpg.
        detect_short_side: frames are downscaled to this shorter side for detection (the last MTCNN stage still
            crops from the full frame); at least the videos' short side: full-resolution detection, boxes closest
            to full-resolution MTCNN, about 40% slower (docs/benchmarks.md).
        min_face: smallest face searched, as a share of the frame's short side.
        stage_thresholds: MTCNN's three stage thresholds; ``[0.6,0.7,0.7]`` (facenet-pytorch's) with a
            ``detect_short_side`` of at least the videos' short side reproduces full-resolution MTCNN's boxes.
        workers: videos extracted at once (threads; about the number of cores; for many more, run shards).
        device: cpu or cuda (default: cuda when available).
        shard: this process's shard, in [0, num_shards).
        num_shards: number of shards (e.g. a SLURM array); run once more with the defaults to combine.
        reuse_original_boxes: crop a fake where its original (FF++ target video, DFDC original) was cropped,
            frame by frame, instead of detecting again — the fake and its source stay aligned. Falls back to
            detection when the original has not been extracted (e.g. it is in another shard).
    """
    source = DataSource(dataset, root=str(root), splits=None if splits is None else str(splits),
                        compression=compression, methods=methods)
    settings = ExtractionSettings(frames=frames, crop=crop, faces=faces, size=size, image_format=image_format,
                                  jpeg_quality=jpeg_quality, detect_short_side=detect_short_side, min_face=min_face,
                                  stage_thresholds=tuple(stage_thresholds))
    manifest = extract_dataset(dataset, root, out, settings, index_options(source), workers=workers, device=device,
                               shard=shard, num_shards=num_shards, reuse_original_boxes=reuse_original_boxes)
    if num_shards == 1:  # complete: a data module with the same source and settings reuses it as it is
        write_stamp(Path(out), source, settings)
    return manifest


def extract_dataset(
    dataset: DatasetName,
    root: Path,
    out: Path,
    settings: ExtractionSettings,
    index_options: dict[str, object] | None = None,
    workers: int = 2,
    device: str | None = None,
    shard: int = 0,
    num_shards: int = 1,
    reuse_original_boxes: bool = False,
) -> Path:
    """:func:`preprocess` with the settings as one object (what the data module calls); ``index_options`` go to
    the dataset's indexer."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard must be in [0, --num-shards={num_shards}), got {shard}")
    records = index_dataset(dataset, root, **(index_options or {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "settings.json", json.dumps(
        {"hash": settings.digest(), "extractor_version": EXTRACTOR_VERSION, "dataset": dataset, "root": str(root),
         "settings": asdict(settings)}, indent=2))
    mine = _shard(records, shard, num_shards)  # reals sort before fakes: originals are done first
    by_key = {(r.dataset, r.label, r.video_id): r for r in records}
    todo = [r for r in mine if not done(r, out, settings)]
    detector = MTCNNDetector.from_settings(settings, device) if any(r.status != "missing" for r in todo) else None
    statuses: Counter[str] = Counter()
    workers = max(1, workers)
    # Each thread extracts whole videos (decode, detect, crop, write) with an equal share of the cores for its
    # decoder and of torch's threads: on a CPU several narrow pipelines scale far better than one pipeline with
    # threads inside the decoder and the convolutions (1.56x on 2 cores, docs/benchmarks.md); FFmpeg and torch
    # release the GIL. Processes (shards) take over where the GIL would limit threads.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    decode_threads = 0 if workers == 1 else max(1, cores // workers)  # 0: FFmpeg's own choice
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, torch_threads // workers))
    frames_done, start, lock = 0, time.perf_counter(), threading.Lock()
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(todo), unit="video", desc=f"{dataset} shard {shard}/{num_shards}", mininterval=1.0,
                 disable=None) as bar:  # disable=None: no bar when output is not a terminal
        def extract(record: VideoRecord) -> None:
            nonlocal frames_done
            reuse = original_boxes(record, out, by_key) if reuse_original_boxes and record.label == 1 else None
            rows = extract_video(record, out, settings, detector, reuse_boxes=reuse, decode_threads=decode_threads)
            with lock:
                statuses[rows[0]["status"]] += 1
                frames_done += sum(1 for r in rows if r["crop_path"])
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(videos_s=f"{(bar.n + 1) / elapsed:.2f}", frames_s=f"{frames_done / elapsed:.1f}")
                bar.update()

        try:
            # Fakes reusing their originals' boxes wait until every real video is done.
            phases = ([[r for r in todo if r.label == 0], [r for r in todo if r.label != 0]] if reuse_original_boxes
                      else [todo])
            for phase in phases:
                futures = [pool.submit(extract, record) for record in phase]
                try:
                    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        future.result()  # re-raises the first failure (disk full, …)
                except BaseException:  # that, or Ctrl-C: stop; finished videos stay done for the rerun
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        finally:
            torch.set_num_threads(torch_threads)
    # Shards write their own file (no two processes share a temporary name); a 1-shard run writes the whole one.
    manifest = (build_manifest(out, records) if num_shards == 1
                else build_manifest(out, mine, name=f"manifest.shard{shard}-of-{num_shards}.csv"))
    _summary(manifest, statuses, len(mine) - len(todo))
    return manifest


def _summary(manifest: Path, statuses: Counter[str], reused: int) -> None:
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    videos = {(r["dataset"], r["label"], r["video_id"]): r for r in rows}
    by_status = Counter(r["status"] for r in videos.values())
    by_split = Counter((r["split"], "fake" if r["label"] == "1" else "real") for r in videos.values()
                       if r["status"] == "ok")
    print(f"\nmanifest: {manifest}  ({len(videos)} videos, {sum(1 for r in rows if r['crop_path'])} crops; "
          f"{reused} videos already done, {sum(statuses.values())} processed now)")
    print("videos by status: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    print("usable videos by split/label: " + ", ".join(f"{s}/{lbl} {v}" for (s, lbl), v in sorted(by_split.items())))


def _underscored(arg: str) -> str:
    """``--num-shards=2`` → ``--num_shards=2``: both spellings work on the command line."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return "--" + name[2:].replace("-", "_") + eq + value


def main(args: list[str] | None = None) -> None:
    """``python -m masm_lightning preprocess …`` (also accepts ``--config file.yaml``)."""
    from jsonargparse import CLI

    args = [_underscored(a) for a in (sys.argv[2:] if args is None else args)]
    try:
        manifest = CLI(preprocess, args=args, as_positional=False, env_prefix="MASM_PREPROCESS")
    except (FileNotFoundError, ValueError) as error:  # wrong root, split files, arguments: a message, exit 2
        print(f"preprocess: error: {error}", file=sys.stderr)
        sys.exit(2)
    with Path(manifest).open(newline="") as f:
        if not any(row["crop_path"] for row in csv.DictReader(f)):
            print("preprocess: error: no video gave a face crop", file=sys.stderr)
            sys.exit(1)
