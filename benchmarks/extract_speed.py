"""Sampled frames/s of ``preprocess`` vs the naive loop of the reference pipelines, on the shared real clips.

Naive: decode every frame sequentially up to each sampled index, run MTCNN (facenet-pytorch defaults) on each
sampled frame at full resolution, one frame at a time. Ours: the real ``preprocess`` code path
(:func:`extract_dataset` on a folder dataset of links to the same clips, each listed ``--copies`` times so that
``--workers`` threads run in steady state), crops written to disk. Both sample the same frame indices, in the same
process, alternating naive and ours for ``--rounds`` rounds. Also checks that we find a face wherever the naive
loop does, with boxes agreeing (IoU >= 0.9).

    python benchmarks/extract_speed.py [--frames 32] [--workers 2] [--copies 2] [--rounds 2]
    python benchmarks/extract_speed.py --short-side 4000 --stage-thresholds 0.6 0.7 0.7   # reference boxes
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN

from masm_lightning.data.extract import extract_dataset
from masm_lightning.data.indexers import index_dfdc, index_ffpp
from masm_lightning.data.settings import ExtractionSettings
from masm_lightning.data.video import sample_indices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def naive(path: Path, count: int, mtcnn: MTCNN) -> dict[int, np.ndarray | None]:
    capture = cv2.VideoCapture(str(path))
    wanted = set(sample_indices(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), count))
    boxes: dict[int, np.ndarray | None] = {}
    index = 0
    while wanted - boxes.keys():
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            b, p, _ = mtcnn.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)[None], landmarks=True)
            keep = [] if b[0] is None else [i for i in range(len(p[0])) if p[0][i] >= 0.9]
            areas = [(b[0][i][2] - b[0][i][0]) * (b[0][i][3] - b[0][i][1]) for i in keep]
            boxes[index] = b[0][keep[int(np.argmax(areas))]] if keep else None
        index += 1
    capture.release()
    return boxes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="preprocess --workers (videos extracted at once)")
    parser.add_argument("--copies", type=int, default=2, help="times each clip is listed in ours' dataset")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--short-side",
        type=int,
        default=ExtractionSettings.detect_short_side,
        help="detection resolution (shorter side, px) of ours",
    )
    parser.add_argument("--min-face", type=float, default=ExtractionSettings.min_face)
    parser.add_argument(
        "--stage-thresholds",
        type=float,
        nargs=3,
        default=ExtractionSettings.stage_thresholds,
        help="ours' MTCNN stage thresholds (facenet-pytorch's: 0.6 0.7 0.7)",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    clips = [
        r
        for r in index_ffpp(SHARED / "FaceForensics++", methods=("Deepfakes", "FaceSwap")) + index_dfdc(SHARED / "DFDC")
        if r.status == "listed"
    ]
    settings = ExtractionSettings(
        frames=args.frames,
        detect_short_side=args.short_side,
        min_face=args.min_face,
        stage_thresholds=tuple(args.stage_thresholds),
    )
    reference_mtcnn = MTCNN(keep_all=True, device="cpu")  # the reference pipelines' defaults (20 px minimum face)
    sampled = {
        c.video_id: len(sample_indices(int(cv2.VideoCapture(str(c.video_path)).get(7)), args.frames)) for c in clips
    }
    naive_time = ours_time = 0.0
    naive_frames = ours_frames = 0
    reference: dict[str, dict[int, np.ndarray | None]] = {}
    ours: dict[str, dict[int, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "clips"
        for clip in clips:  # links, named <clip>__<copy>, under real/ or fake/ as labelled
            for copy in range(args.copies):
                link = dataset / ("fake" if clip.label else "real") / f"{clip.video_id}__{copy}{clip.video_path.suffix}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(clip.video_path.resolve())
        for round_ in range(args.rounds):
            for clip in clips:
                start = time.perf_counter()
                reference[clip.video_id] = naive(clip.video_path, args.frames, reference_mtcnn)
                naive_time += time.perf_counter() - start
                naive_frames += len(reference[clip.video_id])
            start = time.perf_counter()
            manifest = extract_dataset(
                "folder", dataset, Path(tmp) / f"out{round_}", settings, workers=args.workers, device="cpu"
            )
            ours_time += time.perf_counter() - start
            ours_frames += args.copies * sum(sampled.values())
            with manifest.open(newline="") as f:
                for row in csv.DictReader(f):
                    if row["status"] == "ok":
                        clip_id = row["video_id"].rsplit("__", 1)[0]
                        ours.setdefault(clip_id, {})[int(row["frame_index"])] = np.array(row["box"].split(), float)
    faces_naive = faces_missed = 0
    ious: list[float] = []
    for clip_id, boxes in reference.items():
        for index, box in boxes.items():
            if box is None:
                continue
            faces_naive += 1
            if index not in ours.get(clip_id, {}):
                faces_missed += 1
            else:
                ious.append(iou(box, ours[clip_id][index]))
    naive_fps, ours_fps = naive_frames / naive_time, ours_frames / ours_time
    print(
        f"\n{len(clips)} clips; naive: {naive_fps:.2f} sampled frames/s   ours (--workers {args.workers}): "
        f"{ours_fps:.2f} sampled frames/s   speed-up {ours_fps / naive_fps:.2f}x"
    )
    print(
        f"faces found by the naive loop: {faces_naive}; missed by ours: {faces_missed}; "
        f"box IoU min {min(ious):.3f}, median {float(np.median(ious)):.3f}, share >= 0.9: "
        f"{np.mean(np.array(ious) >= 0.9):.3f}, >= 0.85: {np.mean(np.array(ious) >= 0.85):.3f}"
    )


if __name__ == "__main__":
    main()
