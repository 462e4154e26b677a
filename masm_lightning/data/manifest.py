"""The frame manifest: one CSV row per extracted face crop, the contract between extraction and training."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["FRAME_COLUMNS", "MANIFEST_NAME", "FrameRecord", "read_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.csv"
# label: 0 real, 1 fake. path: relative to the manifest's folder (or absolute). video_id: unique within dataset.
FRAME_COLUMNS = ("dataset", "split", "label", "method", "video_id", "frame_index", "path")


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
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FRAME_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> list[FrameRecord]:
    """Read a frame manifest; relative frame paths resolve against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame manifest {str(path)!r} does not exist; generate or extract the dataset first")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(FRAME_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"frame manifest {str(path)!r} lacks columns {sorted(missing)}; "
                             f"expected {list(FRAME_COLUMNS)}")
        records = []
        for line, row in enumerate(reader, start=2):
            label = int(row["label"])
            if label not in (0, 1):
                raise ValueError(f"{path}:{line}: label {row['label']!r} is not 0 (real) or 1 (fake)")
            records.append(FrameRecord(row["dataset"], row["split"], label, row["method"], row["video_id"],
                                       int(row["frame_index"]), path.parent / row["path"]))
    return records
