"""``detect``: score videos, images and folders with a checkpoint or an export folder; print a table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..inference import Aggregation, ConfidentRule
from ..inference import detect as detect_paths
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
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Score videos, images and folders: is it fake?

    Exit status: 0 when at least one input was scored; 1 when none could be; 2 for a bad checkpoint or option.

    Args:
        paths: video files, image files or folders (searched recursively).
        ckpt: a checkpoint written by `fit`, or a folder written by `export`.
        frames: frames per video, spread uniformly (default: the checkpoint's extraction setting).
        threshold: decision threshold on the fake probability (default: the model's).
        out: results file, .json or .csv, written as inputs finish.
        device: cpu or cuda (default: cuda when available).
        batch_size: crops per forward pass.
        per_frame: also write each frame's index and score.
        face_crop: crop faces as in training; false scores whole frames/images (no face detection).
        aggregation: video score: `mean` of frames, or the DFDC winner's `confident`-frames rule.
        confident_fake: confident rule: a frame is confidently fake above this probability.
        confident_real: confident rule: a frame is confidently real below this probability.
        fake_share: confident rule: share of confidently fake frames needed to average only those.
        real_share: confident rule: share of confidently real frames needed to average only those.
        compile: compile the model with torch.compile (pays off over many inputs; docs/benchmarks.md).
    """
    confident = ConfidentRule(confident_fake, confident_real, fake_share, real_share)
    records = detect_paths(
        paths,
        ckpt,
        frames=frames,
        threshold=threshold,
        out=out,
        device=device,
        batch_size=batch_size,
        per_frame=per_frame,
        face_crop=face_crop,
        aggregation=aggregation,
        confident=confident,
        compile=compile,
    )
    print(_table(records))
    statuses = Counter(r["status"] for r in records)
    decisions = Counter(r["decision"] for r in records if r["status"] == "ok")
    print(
        f"\n{len(records)} inputs: {statuses['ok']} scored ({decisions['fake']} fake, {decisions['real']} real)"
        + "".join(f", {n} {s}" for s, n in sorted(statuses.items()) if s != "ok")
        + (f"; results in {Path(out)}" if out else "")
    )
    if not statuses["ok"]:
        raise NoResult("no input could be scored")
    return records
