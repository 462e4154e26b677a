"""``detect``: score videos, images and folders with a checkpoint or an export folder; print a table.

A thin command over :class:`masm_lightning.Detector` (:mod:`masm_lightning.inference.detector`) and its runs
(:func:`masm_lightning.inference.runs.detect`: output file, resume, shards); docs/inference.md."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..inference.detector import SCORED, Aggregation, ConfidentRule, Detector, DetectorOptions, Result
from ..inference.runs import detect as detect_paths
from ..inference.runs import shard_output
from ..performance import return_freed_memory
from . import NoResult

__all__ = ["detect"]

_RULE = ConfidentRule()


def _table(records: Sequence[dict[str, Any]]) -> str:
    rows = [("status", "kind", "score", "decision", "frames", "path")]
    rows += [
        (
            r["status"],
            r["kind"],
            "" if r["score"] == "" else f"{r['score']:.4f}",
            r["decision"],
            str(r["frames"]),
            r["path"],
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5] for row in rows)


def detect(
    paths: list[str],
    ckpt: str,
    frames: int | None = None,
    threshold: float | None = None,
    out: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
    per_frame: bool = False,
    face_crop: bool = True,
    aggregation: Aggregation = "mean",
    confident_fake: float = _RULE.fake_threshold,
    confident_real: float = _RULE.real_threshold,
    fake_share: float = _RULE.fake_share,
    real_share: float = _RULE.real_share,
    workers: int = 1,
    shard: int = 0,
    num_shards: int = 1,
    resume: bool = True,
    explain: str | None = None,
    explain_faces: int = 3,
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Score videos, images and folders: is it fake?

    Exit status: 0 when at least one input was scored; 1 when none could be; 2 for a bad checkpoint or option.
    Inputs are recognised by content, not by name; any --frames holds a bounded number of frames in memory.

    Args:
        paths: video files, image files or folders (searched recursively).
        ckpt: a checkpoint written by `fit`, or a folder written by `export`.
        frames: frames per video, spread uniformly (default: the checkpoint's extraction setting).
        threshold: decision threshold on the fake probability (default: the model's).
        out: results file, .json or .csv, written as inputs finish; rerun with the same --out to resume (inputs
            already scored with the same model and settings are kept).
        device: cpu or cuda (default: cuda when available).
        batch_size: crops per forward pass.
        per_frame: also write each frame's index and score.
        face_crop: crop faces as in training; false scores whole frames/images (no face detection).
        aggregation: video score: `mean` of frames, or the DFDC winner's `confident`-frames rule.
        confident_fake: confident rule: a frame is confidently fake above this probability.
        confident_real: confident rule: a frame is confidently real below this probability.
        fake_share: confident rule: share of confidently fake frames needed to average only those.
        real_share: confident rule: share of confidently real frames needed to average only those.
        workers: inputs scored at once (threads; about the number of cores).
        shard: this process's shard, in [0, num_shards): every num_shards-th input of the sorted list.
        num_shards: number of shards (e.g. a SLURM array); each writes <out>.shard<i>-of-<N>.<csv|json>.
        resume: false: score everything again even if --out holds results of the same model and settings.
        explain: write, per scored input, its most suspicious faces' relevance heatmaps and artifact-subspace
            responses into this folder (docs/app.md).
        explain_faces: faces explained per input with --explain.
        compile: compile the model with torch.compile (pays off over many inputs; docs/benchmarks.md).
    """
    options = DetectorOptions(
        frames=frames,
        aggregation=aggregation,
        confident=ConfidentRule(confident_fake, confident_real, fake_share, real_share),
        threshold=threshold,
        batch_size=batch_size,
        face_crop=face_crop,
        workers=workers,
        compile=compile,
    )
    return_freed_memory()  # resident memory stays at the peak of one chunk, not growing video after video
    detector: Detector | None = None
    results: list[Result] = []
    if explain is not None:  # loaded here: the explanations need the detector that scored, and its results
        detector = Detector.load(ckpt, device, options)
    records = detect_paths(
        paths,
        ckpt,
        options,
        out=out,
        device=device,
        per_frame=per_frame,
        shard=shard,
        num_shards=num_shards,
        resume=resume,
        detector=detector,
        on_result=results.append if detector is not None else None,
    )
    print(_table(records))
    if detector is not None and explain is not None:
        from ..inference.explain import explain_detected

        print(f"explanations of {explain_detected(detector, results, explain, explain_faces)} faces in {explain}")
    statuses = Counter(r["status"] for r in records)
    decisions = Counter(r["decision"] for r in records if r["status"] in SCORED)
    scored = sum(statuses[s] for s in SCORED)
    where = shard_output(Path(out), shard, num_shards) if out else None
    print(
        f"\n{len(records)} inputs: {scored} scored ({decisions['fake']} fake, {decisions['real']} real)"
        + "".join(f", {n} {s}" for s, n in sorted(statuses.items()) if s != "ok")
        + (f"; results in {where}" if where else "")
    )
    if not scored:
        raise NoResult("no input could be scored")
    return records
