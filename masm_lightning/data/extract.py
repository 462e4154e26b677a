"""Face extraction: frames spread over each video, MTCNN on downscaled frames, square or aligned crops, and a
resumable, shardable run that always ends in one manifest with a row for every video.

Layout written under ``out``::

    <dataset>/<split>/<real|fake>/<video_id>/<frame:05d>.png   crops
    records/<dataset>/<key>.json                               one per finished video (its manifest rows)
    settings.json                                              extraction settings and their hash
    manifest.csv                                               rebuilt from the records: every video appears

A video's crops go to a temporary folder ``.<video>.<pid>.partial`` beside its final one that is renamed when
complete, and its record is written last (atomic rename): a run killed at any point and rerun redoes only
unfinished videos, and ends with the same manifest. The rerun also removes the partial folders the killed run left
(:func:`remove_stale_partials`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import InvalidInputError
from ..io import Stamp, check_shard, shard_inputs, write_atomic
from ..performance import split_cores
from .crops import crop_face
from .faces import Detection, Detector, MTCNNDetector, select_faces
from .indexers import DatasetName, VideoRecord, index_dataset
from .manifest import MANIFEST_NAME, write_manifest
from .settings import EXTRACTOR_VERSION, ExtractionSettings
from .video import Frame, chunks_ahead, open_video, read_image, sample_indices, sniff

__all__ = ["build_manifest", "done", "extract_dataset", "extract_video", "original_boxes", "remove_stale_partials"]

_PARTIAL = re.compile(r"^\.(?P<video>.+)\.(?P<pid>\d+)\.partial$")


def _key(record: VideoRecord) -> str:
    """A file name for a video's record, unique per (dataset, label, video id)."""
    digest = hashlib.sha1(f"{record.dataset}|{record.label}|{record.video_id}".encode()).hexdigest()[:12]
    return f"{record.video_id.replace('/', '__')}.{record.label}.{digest}"


def _record_path(out: Path, record: VideoRecord) -> Path:
    return out / "records" / record.dataset / f"{_key(record)}.json"


def _video_folder(out: Path, record: VideoRecord) -> Path:
    return out / record.dataset / record.split / ("fake" if record.label else "real") / record.video_id


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(out: Path, records: Sequence[VideoRecord]) -> int:
    """Remove the ``.<video>.<pid>.partial`` folders that killed runs left for the videos of ``records``; returns
    how many.

    Only the videos of ``records`` (this run's shard: no other shard works on them) are looked at, and a partial
    folder is stale when its process is no longer running on this machine. A partial folder of a live process —
    the same shard started twice on one machine — is left alone; one written on another machine of a cluster
    (its pid means nothing here) is removed only by a run of that shard, which owns the video.
    """
    folders = {_video_folder(out, r) for r in records}
    removed = 0
    for parent in sorted({f.parent for f in folders}):
        try:
            entries = list(os.scandir(parent))
        except OSError:  # nothing extracted there yet
            continue
        for entry in entries:
            match = _PARTIAL.match(entry.name)
            if (
                match
                and entry.is_dir(follow_symlinks=False)
                and parent / match["video"] in folders
                and not _alive(int(match["pid"]))
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _row(record: VideoRecord, **fields: Any) -> dict[str, Any]:
    row = {
        "dataset": record.dataset,
        "split": record.split,
        "label": record.label,
        "method": record.method,
        "video_id": record.video_id,
        "original_id": record.original_id,
        "video_path": str(record.video_path),
        "frame_index": "",
        "crop_path": "",
        "det_prob": "",
        "box": "",
        "status": "ok",
    }
    row.update(fields)
    return row


def extract_video(
    record: VideoRecord,
    out: Path,
    settings: ExtractionSettings,
    detector: Detector | None,
    reuse_boxes: dict[str, Any] | None = None,
    decode_threads: int = 0,
    chunk_frames: int = 8,
) -> list[dict[str, Any]]:
    """Extract one video's faces; write its crops and its record atomically; return its manifest rows.

    A video that yields nothing gets one row with an empty path and a status (missing, unreadable, empty,
    no_face). ``reuse_boxes`` (frame index → box and landmarks of the original video) skips detection for aligned
    fakes. Safe to call from several threads at once, with one shared detector.

    Frames are streamed (:func:`~.video.chunks_ahead`): decoded, detected and cropped ``chunk_frames`` at a time
    while the next chunk is decoded, so memory holds a few chunks at any ``settings.frames``. Which face is the
    tracked one depends on the whole video, so with ``faces="largest"`` every confident face is cropped to the
    temporary folder and those not chosen are removed at the end: the same crops as holding every frame.
    """
    if record.status == "missing":
        rows = [_row(record, status="missing")]
    else:
        rows = _stream_crops(record, out, settings, detector, reuse_boxes, decode_threads, chunk_frames)
    write_atomic(_record_path(out, record), json.dumps({"settings": settings.digest(), "rows": rows}))
    return rows


def _sampled_chunks(path: Path, settings: ExtractionSettings, decode_threads: int, chunk_frames: int) -> Any:
    """(sampled frame indices, chunks of frames or None to start over), or (status, None) when unreadable."""
    if sniff(path) == "image":
        image = read_image(path)
        return ("unreadable", None) if image is None else ([0], iter([[Frame(0, None, image)]]))
    video = open_video(path, decode_threads)
    if video.frames == 0:
        return "empty", None
    indices = sample_indices(video.frames, settings.frames)
    return indices, chunks_ahead(video.frames_sampled(settings.frames), chunk_frames)


def _stream_crops(
    record: VideoRecord,
    out: Path,
    settings: ExtractionSettings,
    detector: Detector | None,
    reuse_boxes: dict[str, Any] | None,
    decode_threads: int,
    chunk_frames: int,
) -> list[dict]:
    try:
        indices, chunks = _sampled_chunks(record.video_path, settings, decode_threads, chunk_frames)
    except OSError:
        return [_row(record, status="unreadable")]
    if chunks is None:
        return [_row(record, status=indices)]
    find: Callable[[list[Frame]], list[Detection]]
    if reuse_boxes is not None and all(str(i) in reuse_boxes for i in indices):
        find = partial(_reused, reuse_boxes=reuse_boxes)
    elif detector is not None:
        find = partial(_detected, detector=detector)
    else:
        raise ValueError(f"video {record.video_id!r} needs a face detector (got none) to find its faces")
    folder = _video_folder(out, record)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality] if settings.image_format == "jpg" else []
    seen: list[int] = []
    detections: list[Detection] = []
    try:
        for chunk in chunks:
            if chunk is None:  # the decoder starts over (timestamps not in display order)
                seen, detections = [], []
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                continue
            found = find(chunk)
            for frame, (boxes, probs, points) in zip(chunk, found):
                for candidate in np.flatnonzero(probs >= settings.min_prob):  # every face the selection may pick
                    crop = crop_face(frame.image, boxes[candidate], points[candidate], settings)
                    file = tmp / f"{frame.index:05d}.face{candidate}.{settings.image_format}"
                    if not cv2.imwrite(str(file), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params):
                        raise OSError(f"could not write {file} (disk full or folder removed?)")
            seen += [f.index for f in chunk]
            detections += found
            del chunk
    except OSError as error:  # the video stopped decoding; a full disk is not the video's fault
        if str(error).startswith("could not write"):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return [_row(record, status="unreadable")]
    if not seen:
        shutil.rmtree(tmp, ignore_errors=True)
        return [_row(record, status="empty")]
    order = sorted(range(len(seen)), key=seen.__getitem__)
    seen, detections = [seen[k] for k in order], [detections[k] for k in order]
    rows = []
    for index, (boxes, probs, points), picks in zip(seen, detections, select_faces(detections, settings)):
        for face, i in enumerate(picks):
            name = f"{index:05d}" + (f"_{face}" if settings.faces == "all" else "") + f".{settings.image_format}"
            os.replace(tmp / f"{index:05d}.face{i}.{settings.image_format}", tmp / name)
            rows.append(
                _row(
                    record,
                    frame_index=index,
                    crop_path=(folder / name).relative_to(out).as_posix(),
                    det_prob=round(float(probs[i]), 4),
                    box=" ".join(f"{v:.1f}" for v in boxes[i]),
                    landmarks=points[i].round(1).tolist(),
                )
            )
    for leftover in tmp.glob("*.face*.*"):  # confident faces the tracking did not choose
        leftover.unlink()
    if not rows:
        shutil.rmtree(tmp, ignore_errors=True)
        return [_row(record, status="no_face")]
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return rows


def _detected(chunk: list[Frame], detector: Detector) -> list[Detection]:
    return detector([f.image for f in chunk])


def _reused(chunk: list[Frame], reuse_boxes: dict[str, Any]) -> list[Detection]:
    return [
        (
            np.array([reuse_boxes[str(f.index)]["box"]], np.float32),
            np.array([1.0], np.float32),
            np.array([reuse_boxes[str(f.index)]["landmarks"]], np.float32),
        )
        for f in chunk
    ]


def original_boxes(
    record: VideoRecord, out: Path, records: dict[tuple[str, int, str], VideoRecord]
) -> dict[str, Any] | None:
    """Frame index → box and landmarks of the real video ``record`` was made from, if it was extracted."""
    original = records.get((record.dataset, 0, record.original_id))
    if original is None or not _record_path(out, original).is_file():
        return None
    rows = json.loads(_record_path(out, original).read_text())["rows"]
    return {
        str(r["frame_index"]): {"box": [float(v) for v in r["box"].split()], "landmarks": r["landmarks"]}
        for r in rows
        if r["status"] == "ok"
    }


def done(record: VideoRecord, out: Path, settings: ExtractionSettings) -> bool:
    """Has this video been extracted with these settings already?"""
    record_file = Stamp(_record_path(out, record)).read()
    return record_file is not None and record_file.get("settings") == settings.digest()


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
    """Extract the faces of every video of a dataset (or of one shard of it) into ``out`` and write its manifest.

    ``index_options`` go to the dataset's indexer (:func:`~.indexers.index_dataset`). Videos already extracted
    with ``settings`` are kept; ``reuse_original_boxes`` crops a fake where its original was cropped (the
    ``preprocess`` command documents every option).
    """
    check_shard(shard, num_shards)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} is a file: name a folder (created if it does not exist)")
    records = index_dataset(dataset, root, **(index_options or {}))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInputError(f"--out {str(out)!r} cannot be created: {error.strerror or error}") from None
    # What this folder holds, for people reading it; whether a video is done is decided by its own record.
    write_atomic(
        out / "settings.json",
        json.dumps(
            {
                "hash": settings.digest(),
                "extractor_version": EXTRACTOR_VERSION,
                "dataset": dataset,
                "root": str(root),
                "settings": asdict(settings),
            },
            indent=2,
        ),
    )
    # Reals sort before fakes: originals are done first.
    mine = shard_inputs(records, shard, num_shards, key=lambda r: (r.dataset, r.label, r.video_id))
    stale = remove_stale_partials(out, mine)
    if stale:
        print(f"removed {stale} unfinished crop folder(s) (.partial) left by interrupted runs")
    by_key = {(r.dataset, r.label, r.video_id): r for r in records}
    todo = [r for r in mine if not done(r, out, settings)]
    detector = MTCNNDetector.from_settings(settings, device) if any(r.status != "missing" for r in todo) else None
    statuses: Counter[str] = Counter()
    workers = max(1, workers)
    frames_done, start, lock = 0, time.perf_counter(), threading.Lock()
    # Each thread extracts whole videos (decode, detect, crop, write) with an equal share of the cores.
    with (
        split_cores(workers) as decode_threads,
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(
            total=len(todo), unit="video", desc=f"{dataset} shard {shard}/{num_shards}", mininterval=1.0, disable=None
        ) as bar,
    ):  # disable=None: no bar when output is not a terminal

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

        # Fakes reusing their originals' boxes wait until every real video is done.
        phases = (
            [[r for r in todo if r.label == 0], [r for r in todo if r.label != 0]] if reuse_original_boxes else [todo]
        )
        for phase in phases:
            futures = [pool.submit(extract, record) for record in phase]
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for future in finished:
                    future.result()  # re-raises the first failure (disk full, …)
            except BaseException:  # that, or Ctrl-C: stop; finished videos stay done for the rerun
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    # Shards write their own file (no two processes share a temporary name); a 1-shard run writes the whole one.
    manifest = (
        build_manifest(out, records)
        if num_shards == 1
        else build_manifest(out, mine, name=f"manifest.shard{shard}-of-{num_shards}.csv")
    )
    _summary(manifest, statuses, len(mine) - len(todo))
    return manifest


def _summary(manifest: Path, statuses: Counter[str], reused: int) -> None:
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    videos = {(r["dataset"], r["label"], r["video_id"]): r for r in rows}
    by_status = Counter(r["status"] for r in videos.values())
    by_split = Counter(
        (r["split"], "fake" if r["label"] == "1" else "real") for r in videos.values() if r["status"] == "ok"
    )
    print(
        f"\nmanifest: {manifest}  ({len(videos)} videos, {sum(1 for r in rows if r['crop_path'])} crops; "
        f"{reused} videos already done, {sum(statuses.values())} processed now)"
    )
    print("videos by status: " + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    print("usable videos by split/label: " + ", ".join(f"{s}/{lbl} {v}" for (s, lbl), v in sorted(by_split.items())))
