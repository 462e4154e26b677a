"""The frame manifest: one CSV row per extracted face crop, the contract between extraction and training."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..errors import InputNotFoundError, InvalidInputError
from ..io import write_csv

__all__ = ["FRAME_COLUMNS", "MANIFEST_NAME", "FrameRecord", "read_manifest", "write_manifest"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
# label: 0 real, 1 fake. video_id: unique within dataset (with label). crop_path: relative to the manifest's folder
# (or absolute); empty, with a status other than "ok", for a video that gave no crop (missing, unreadable, no_face).
FRAME_COLUMNS = (
    "dataset",
    "split",
    "label",
    "method",
    "video_id",
    "original_id",
    "video_path",
    "frame_index",
    "crop_path",
    "det_prob",
    "box",
    "status",
)
REQUIRED_COLUMNS = ("dataset", "split", "label", "method", "video_id", "frame_index", "crop_path")


class FrameRecord(NamedTuple):
    dataset: str
    split: str
    label: int
    method: str
    video_id: str
    frame_index: int
    path: Path

    @property
    def video_key(self) -> tuple[str, int, str]:
        """What identifies a video everywhere: (dataset, label, video id) — never a folder basename."""
        return self.dataset, self.label, self.video_id


def write_manifest(path: str | Path, rows: Iterable[dict[str, object]]) -> None:
    """Write rows atomically (temporary file, then rename), so a reader never sees half a manifest."""
    write_csv(path, rows, FRAME_COLUMNS)


def read_manifest(path: str | Path) -> list[FrameRecord]:
    """Read a frame manifest's usable crops; relative paths resolve against the manifest's folder. Rows of videos
    that gave no crop (status other than ``ok``) are left out and counted in a log line."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"frame manifest {str(path)!r} does not exist; generate or extract the dataset first")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(REQUIRED_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise InvalidInputError(
                f"frame manifest {str(path)!r} lacks columns {sorted(missing)}; expected {list(FRAME_COLUMNS)}"
            )
        records: list[FrameRecord] = []
        skipped: Counter[str] = Counter()
        for row in reader:
            line = reader.line_num
            status = row.get("status") or "ok"
            if status != "ok" or not row["crop_path"]:
                skipped[status] += 1
                continue
            if row["label"] not in ("0", "1"):
                raise InvalidInputError(f"{path}:{line}: label {row['label']!r} is not 0 (real) or 1 (fake)")
            if not str(row["frame_index"]).isdigit():
                raise InvalidInputError(f"{path}:{line}: frame_index {row['frame_index']!r} is not a whole number")
            label = int(row["label"])
            records.append(
                FrameRecord(
                    row["dataset"],
                    row["split"],
                    label,
                    row["method"],
                    row["video_id"],
                    int(row["frame_index"]),
                    path.parent / row["crop_path"],
                )
            )
    if skipped:
        log.info(
            "%s: %d videos without crops left out (%s)",
            path,
            sum(skipped.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
        )
    return records
