"""Videos/s of ``detect`` (:class:`masm_lightning.Detector`) vs the naive pipeline, on the shared real clips, with
the same checkpoint; and the peak memory of ``detect`` at ``--frames 32`` and at a huge ``--frames``.

Naive (the reference pipelines' loop): decode every frame with OpenCV up to the last sampled one, facenet-pytorch
MTCNN (its defaults) on each sampled frame at full resolution, crop the largest confident face (the same crop
geometry), classify frame by frame, average. Ours: ``Detector.score_many`` (chunked decoding on a thread, MTCNN
on downscaled frames with the checkpoint's settings, batched crops, ``--workers`` videos in flight). Both run in
this process on the same clips and sample the same frame indices, naive and ours alternating for ``--rounds``.
Peak RSS is measured on the real command line in a child process (``getrusage(RUSAGE_CHILDREN).ru_maxrss``): at
``--frames 32`` with detect's default ``--workers 1`` (the headline figure), with ``--workers`` if it differs, and
at a huge ``--frames``. This process sets the heap as ``detect`` does (``return_freed_memory``), for both loops.

    python benchmarks/detect_speed.py [--ckpt best.ckpt] [--frames 32] [--workers 2] [--rounds 1]
        [--huge-frames 100000] [--huge-clips brtujopkby.mp4]

Without ``--ckpt`` a tiny model is trained for one epoch in a temporary folder (the test config). The decisions of
a tiny random model are all alike: the score difference is the informative figure there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def clips() -> list[Path]:
    found = sorted((SHARED / "FaceForensics++").rglob("*.mp4")) + sorted((SHARED / "DFDC").rglob("*.mp4"))
    return [p for p in found if p.is_file()]


def tiny_checkpoint(folder: Path) -> Path:
    """One epoch of the test config (tiny ViT, generated data): a real checkpoint in a few tens of seconds."""
    sys.path.insert(0, str(ROOT))
    from masm_lightning.cli import main
    from tests.helpers import tiny_args

    cli = main(["fit", *tiny_args(folder, "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false")])
    return Path(cli.trainer.checkpoint_callback.best_model_path)


def naive(path: Path, count: int, mtcnn: object, classifier: object) -> tuple[float | None, int]:
    """The reference loop; returns (video score or None without a face, sampled frames)."""
    from masm_lightning.data.crops import crop_face
    from masm_lightning.data.video import sample_indices

    settings = classifier.face_crop  # type: ignore[attr-defined]
    capture = cv2.VideoCapture(str(path))
    wanted = set(sample_indices(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), count))
    scores, index, seen = [], 0, 0
    while index <= max(wanted, default=-1):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            seen += 1
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            boxes, probs, points = mtcnn.detect(rgb[None], landmarks=True)  # type: ignore[attr-defined]
            if boxes[0] is not None:
                keep = [i for i in range(len(probs[0])) if probs[0][i] >= settings.min_prob]
                if keep:
                    i = max(keep, key=lambda k: (boxes[0][k][2] - boxes[0][k][0]) * (boxes[0][k][3] - boxes[0][k][1]))
                    crop = crop_face(rgb, boxes[0][i], points[0][i], settings)
                    scores.append(float(classifier.fake_probability([crop], 1)[0]))  # type: ignore[attr-defined]
        index += 1
    capture.release()
    return (float(np.mean(scores)) if scores else None), seen


_WRAPPER = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)


def peak_rss_mb(ckpt: Path, paths: list[Path], frames: int, workers: int) -> float:
    """Peak RSS (MB) of the real ``detect`` command, a child of a fresh wrapper process whose only child it is
    (``ru_maxrss`` of children is the largest child ever waited for)."""
    command = [sys.executable, "-m", "masm_lightning", "detect", *map(str, paths), "--ckpt", str(ckpt)]
    command += ["--frames", str(frames), "--device", "cpu", "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"detect failed ({done.returncode}): {done.stderr[-2000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("MAXRSS_KB")][-1]
    return int(line.split()[1]) / 1024  # Linux: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a fit checkpoint or export folder (default: train a tiny one)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="detect --workers (videos in flight)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--huge-frames", type=int, default=100000)
    parser.add_argument(
        "--huge-clips", nargs="*", default=["brtujopkby.mp4"], help="clip names for the huge --frames run"
    )
    args = parser.parse_args()
    found = clips()
    if not found:
        print(f"detect speed: skipped: no shared clips under {SHARED}")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from facenet_pytorch import MTCNN

    from masm_lightning.inference.detector import Detector
    from masm_lightning.performance import return_freed_memory

    return_freed_memory()  # as the detect command does

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or tiny_checkpoint(Path(tmp))
        torch.set_num_threads(os.cpu_count() or 1)
        det = Detector.load(ckpt, "cpu", frames=args.frames, workers=args.workers)
        reference = MTCNN(keep_all=True, device="cpu")  # facenet-pytorch's defaults, full resolution
        naive_time = ours_time = 0.0
        naive_scores: dict[str, float | None] = {}
        ours_scores: dict[str, float | None] = {}
        for _ in range(args.rounds):
            start = time.perf_counter()
            for clip in found:
                naive_scores[clip.name] = naive(clip, args.frames, reference, det.classifier)[0]
            naive_time += time.perf_counter() - start
            start = time.perf_counter()
            for result in det.score_many(found):
                ours_scores[Path(result.path).name] = result.score
            ours_time += time.perf_counter() - start
        videos = len(found) * args.rounds
        naive_vps, ours_vps = videos / naive_time, videos / ours_time
        both = [n for n in ours_scores if ours_scores[n] is not None and naive_scores[n] is not None]
        differences = [abs(ours_scores[n] - naive_scores[n]) for n in both]  # type: ignore[operator]
        decide = lambda s: None if s is None else s >= det.threshold
        same = sum(decide(ours_scores[n]) == decide(naive_scores[n]) for n in ours_scores)
        print(f"\n{len(found)} clips x {args.rounds} rounds, --frames {args.frames}")
        for name in ours_scores:
            print(f"  {name:24s} ours {ours_scores[name]}  naive {naive_scores[name]}")
        print(
            f"naive {naive_vps:.4f} videos/s   ours (--workers {args.workers}) {ours_vps:.4f} videos/s   "
            f"speed-up {ours_vps / naive_vps:.2f}x; identical decisions {same}/{len(ours_scores)}; "
            f"max |score difference| {max(differences, default=float('nan')):.2e}"
        )
        rss32 = peak_rss_mb(ckpt, found, 32, 1)
        print(f"peak RSS of detect --frames 32 (default --workers 1) on the {len(found)} clips: {rss32:.0f} MB")
        rss32_workers = peak_rss_mb(ckpt, found, 32, args.workers) if args.workers != 1 else rss32
        print(f"peak RSS of detect --frames 32 --workers {args.workers}: {rss32_workers:.0f} MB")
        huge = [c for c in found if c.name in args.huge_clips] or found[:1]
        rss_huge = peak_rss_mb(ckpt, huge, args.huge_frames, 1)
        print(f"peak RSS of detect --frames {args.huge_frames} on {[c.name for c in huge]}: {rss_huge:.0f} MB")
    print(
        f"detect speed: ratio={ours_vps / naive_vps:.2f} ours_vps={ours_vps:.4f} naive_vps={naive_vps:.4f} "
        f"peak_rss_mb={max(rss32, rss_huge):.0f} rss32_mb={rss32:.0f} "
        f"rss32_workers{args.workers}_mb={rss32_workers:.0f} rss_huge_mb={rss_huge:.0f} "
        f"decisions_same={same}/{len(ours_scores)} max_score_diff={max(differences, default=float('nan')):.2e}"
    )


if __name__ == "__main__":
    main()
