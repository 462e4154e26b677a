"""Data sources: where a dataset's face crops come from, and how they become frame records.

A :class:`DataSource` names one dataset as the user downloaded it. ``prepare_source`` (one process) extracts its
faces into a cache folder unless a completed extraction with the same settings is already there; ``load_source``
reads the frame records. Four kinds of source:

- an official tree (``ffpp``, ``dfd``, ``celebdf-v1``, ``celebdf-v2``, ``dfdc``, ``dfdcp``): indexed by
  :mod:`.indexers` (official splits) and extracted by :mod:`.preprocess` into ``<cache_dir>/<name>/``;
- ``folder``: ``real/`` and ``fake/`` sub-folders of videos (extracted) or of face crops (``crops: true``, used as
  they are), with video-level splits;
- ``deepfakebench``: DeepfakeBench-preprocessed frames and its dataset JSON, used as they are;
- ``manifest``: a frame manifest written by ``python -m masm_lightning preprocess`` (e.g. sharded on a cluster).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import InputNotFoundError, InvalidInputError
from ..io import Stamp, walk_files
from .indexers import EXTRACTED_DATASETS, FFPP_METHODS, IMAGE_SUFFIXES, DatasetName, inside_root, read_json
from .manifest import MANIFEST_NAME, FrameRecord, read_manifest
from .settings import ExtractionSettings

__all__ = [
    "DataSource",
    "assign_video_splits",
    "extraction_stamp",
    "index_options",
    "load_source",
    "prepare_source",
    "read_deepfakebench",
    "read_image_folder",
]

log = logging.getLogger(__name__)

SourceKind = Literal[DatasetName, "deepfakebench", "manifest"]
PathField = Literal["root", "manifest", "dataset_json"]
STAMP_NAME = "prepared.json"  # written after a completed extraction: what was extracted, with which settings


@dataclass
class DataSource:
    """One dataset for training, validation or testing.

    Args:
        dataset: the kind of source (see the module docstring).
        root: the dataset's root as downloaded; for ``deepfakebench`` the folder its frame paths are relative to;
            unused for ``manifest``.
        name: the name in metric keys (``test/<name>/video_auc``) and the cache sub-folder; default from the
            dataset (``ffpp_c23``, ``celebdf-v2``, the folder's name, …).
        splits: ``ffpp`` only: folder of the official ``train/val/test.json`` (default ``<root>/splits``).
        compression: ``ffpp``/``dfd``/``deepfakebench`` (FF++ JSONs): ``raw``, ``c23`` or ``c40``.
        methods: ``ffpp`` (manipulations, default the paper's four) and ``deepfakebench`` (label names such as
            ``FF-DF``; default all) — what is kept.
        dataset_json: ``deepfakebench`` only: the dataset JSON (e.g. ``dataset_json/FaceForensics++.json``).
        manifest: ``manifest`` only: the frame manifest CSV.
        crops: ``folder`` only: the images are face crops already; use them as they are (no detection).
        split: ``folder`` only: one split for every video (``test``), or video-level ratios such as
            ``{train: 0.8, val: 0.1, test: 0.1}`` (per class, seeded): frames of one video never straddle splits.
        split_seed: ``folder`` only: the seed of those ratios — fixed, not the run's seed, so ``fit`` and
            ``test`` (and every seed of a study) see the same split.
        frame_pattern: ``folder`` crops directly under ``real/``/``fake/``: a regex on the file stem whose
            ``video`` group names the video (default: ``<video>_<frame number>``); crops in per-video
            sub-folders are grouped by folder.
        label_names: ``deepfakebench`` only: label name → 0/1 for names that do not end in ``real`` (real) —
            every other name is fake by default.
    """

    dataset: SourceKind
    root: str | None = None
    name: str | None = None
    splits: str | None = None
    compression: Literal["raw", "c23", "c40"] = "c23"
    methods: list[str] | None = None
    dataset_json: str | None = None
    manifest: str | None = None
    crops: bool = False
    split: str | dict[str, float] = "test"
    split_seed: int = 0
    frame_pattern: str = r"^(?P<video>.+?)[_-](?P<frame>\d+)$"
    label_names: dict[str, int] | None = None

    def __post_init__(self) -> None:
        needs: dict[str, PathField] = {"manifest": "manifest", "deepfakebench": "dataset_json"}
        self.require(needs.get(self.dataset, "root"))
        if isinstance(self.split, dict):
            unknown = set(self.split) - {"train", "val", "test"}
            if unknown or not self.split or any(v < 0 for v in self.split.values()) or sum(self.split.values()) <= 0:
                raise InvalidInputError(
                    f"source {self.display_name!r}: split ratios {self.split!r} must be non-negative "
                    "weights over train/val/test"
                )
        try:
            re.compile(self.frame_pattern)
        except re.error as error:
            raise InvalidInputError(
                f"source {self.display_name!r}: frame_pattern {self.frame_pattern!r} is not a regular expression "
                f"({error})"
            ) from None

    def require(self, field: PathField) -> str:
        """The value of a path field this kind of source needs (``root``, ``manifest`` or ``dataset_json``).

        Raises:
            ValueError: the field is unset.
        """
        value: str | None = getattr(self, field)
        if value is None:
            raise InvalidInputError(f"data source {self.dataset!r} needs `{field}` (got none)")
        return value

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.dataset in ("ffpp", "dfd"):
            return f"{self.dataset}_{self.compression}"
        if self.dataset == "folder":
            return Path(self.require("root")).name
        if self.dataset == "manifest":  # outputs/faces/dfdc/manifest.csv → dfdc; shards/celebdf.csv → celebdf
            path = Path(self.require("manifest"))
            return path.parent.name if path.stem == "manifest" else path.stem
        if self.dataset == "deepfakebench":
            return Path(self.require("dataset_json")).stem
        return self.dataset

    @property
    def needs_extraction(self) -> bool:
        return self.dataset in EXTRACTED_DATASETS or (self.dataset == "folder" and not self.crops)

    def selection(self) -> dict[str, object]:
        """What the extraction covers (besides the crop settings): a change re-runs it."""
        methods = sorted(self.methods) if self.methods else self.methods
        if self.dataset == "ffpp":
            methods = sorted(methods or FFPP_METHODS)
        splits = str(Path(self.splits).resolve()) if self.splits else None  # relative or absolute: same lists
        return {
            "dataset": self.dataset,
            "root": str(Path(self.require("root")).resolve()),
            "splits": splits,
            "compression": self.compression if self.dataset in ("ffpp", "dfd") else None,
            "methods": methods,
        }


def extraction_stamp(out: str | Path) -> Stamp:
    """The stamp of a completed extraction in ``out``: which videos (:meth:`DataSource.selection`) with which
    settings. ``preprocess`` and the data module write and read the same one, so either reuses the other's work."""
    return Stamp(Path(out) / STAMP_NAME)


def stamp_content(source: DataSource, settings: ExtractionSettings) -> dict[str, object]:
    """What :func:`extraction_stamp` records for ``source`` extracted with ``settings``."""
    return {"selection": source.selection(), "settings": asdict(settings), "hash": settings.digest()}


def prepare_source(
    source: DataSource, cache_dir: Path, settings: ExtractionSettings, workers: int = 2, device: str | None = None
) -> bool:
    """Extract ``source`` into ``cache_dir/<name>`` unless a completed extraction of the same videos with the same
    settings is there; returns whether extraction ran. Interrupted extractions resume (per-video records)."""
    kind = source.dataset
    # The two adopted kinds are never extracted; spelled out so that `kind` narrows to an extractable dataset.
    if kind == "deepfakebench" or kind == "manifest" or not source.needs_extraction:
        return False
    out = Path(cache_dir) / source.display_name
    stamp, expected = extraction_stamp(out), stamp_content(source, settings)
    if (out / MANIFEST_NAME).is_file() and stamp.matches(expected):
        log.info("faces of %s already extracted with these settings (%s): reusing them", source.display_name, out)
        return False
    from .extract import extract_dataset  # the video and detection stack only when something is extracted

    log.info("extracting faces of %s into %s (settings %s)", source.display_name, out, settings.digest())
    stamp.clear()  # stale until this extraction completes
    extract_dataset(
        kind, Path(source.require("root")), out, settings, index_options(source), workers=workers, device=device
    )
    stamp.write(expected)
    return True


def index_options(source: DataSource) -> dict[str, object]:
    """What the dataset's indexer takes from the source (splits, compression, methods, name)."""
    if source.dataset == "ffpp":
        options: dict[str, object] = {"splits": source.splits, "compression": source.compression}
        return options | ({"methods": tuple(source.methods)} if source.methods else {})
    if source.dataset == "dfd":
        return {"compression": source.compression}
    if source.dataset == "folder":
        return {"dataset": source.display_name}
    return {}


def load_source(source: DataSource, cache_dir: Path) -> list[FrameRecord]:
    """The usable frame records of ``source`` (videos without crops are counted in a log line and left out);
    ``folder`` sources get their splits here."""
    if source.dataset == "manifest":
        records = read_manifest(source.require("manifest"))
    elif source.dataset == "deepfakebench":
        records = read_deepfakebench(
            source.require("dataset_json"),
            source.root,
            source.name,
            source.compression,
            source.methods,
            source.label_names,
        )
    elif source.dataset == "folder" and source.crops:
        records = read_image_folder(source.require("root"), source.display_name, source.frame_pattern)
    else:
        manifest = Path(cache_dir) / source.display_name / MANIFEST_NAME
        if not manifest.is_file():
            raise InputNotFoundError(
                f"no extracted faces for {source.display_name!r} at {str(manifest)!r}: run "
                "`fit`/`test` (prepare_data extracts them) or `python -m masm_lightning "
                "preprocess`"
            )
        records = read_manifest(manifest)
    if source.dataset == "folder":
        records = assign_video_splits(records, source.split, source.split_seed)
    return [r._replace(dataset=source.display_name) for r in records] if source.name else records


def assign_video_splits(
    records: Sequence[FrameRecord], split: str | dict[str, float], seed: int = 0
) -> list[FrameRecord]:
    """Give every video one split: all to ``split`` if it is a name, else split the videos of each class by the
    ratios (a seeded shuffle of the sorted video keys), so all frames of a video land in the same split."""
    if isinstance(split, str):
        return [r._replace(split=split) for r in records]
    names = [s for s in ("train", "val", "test") if split.get(s, 0) > 0]
    weights = np.array([split[s] for s in names], float)
    chosen: dict[tuple[str, int, str], str] = {}
    for label in (0, 1):
        videos = sorted({r.video_key for r in records if r.label == label})
        order = np.random.default_rng([seed, label]).permutation(len(videos))
        bounds = np.round(np.cumsum(weights) / weights.sum() * len(videos)).astype(int)
        for rank, i in enumerate(order):
            chosen[videos[i]] = names[int(np.searchsorted(bounds, rank, side="right"))]
    return [r._replace(split=chosen[r.video_key]) for r in records]


def read_image_folder(root: str | Path, dataset: str, frame_pattern: str) -> list[FrameRecord]:
    """Face crops under ``root/real`` and ``root/fake`` (symlinked sub-folders followed), used as they are. A crop's
    video is its sub-folder, or, for crops directly in the class folder, the ``video`` group of ``frame_pattern``
    on its stem."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"folder source root {str(root)!r} is not a directory")
    pattern = re.compile(frame_pattern)
    records = []
    for label, folder in ((0, "real"), (1, "fake")):
        base = root / folder
        for path in walk_files(base, IMAGE_SUFFIXES) if base.is_dir() else []:
            relative = path.relative_to(base)
            match = pattern.match(path.stem)
            if len(relative.parts) > 1:
                video = relative.parent.as_posix()
            else:
                video = match.group("video") if match else path.stem
            if match and "frame" in pattern.groupindex and match.group("frame") is not None:
                frame = int(match.group("frame"))
            else:  # e.g. real/<video>/12.png: the last number in the name
                frame = _frame_number(path.name, 0)
            records.append(FrameRecord(dataset, "test", label, folder, video, frame, path))
    if not records:
        raise InputNotFoundError(f"no images under {str(root)!r}/real or /fake")
    return records


def _frame_number(path: str, position: int) -> int:
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else position


def read_deepfakebench(
    dataset_json: str | Path,
    root: str | Path | None,
    name: str | None = None,
    compression: str = "c23",
    methods: Sequence[str] | None = None,
    label_names: dict[str, int] | None = None,
) -> list[FrameRecord]:
    """DeepfakeBench-preprocessed frames listed by its dataset JSON, adopted without re-extraction.

    The JSON is ``{dataset: {label_name: {mode: [{compression:] {video: {"label": ..., "frames": [...]}}}}}`` with
    modes train/val/test and a compression level only for FF++-family datasets. Its known traps are fixed: every
    frame is kept (spread per video later, never the first K), and a video is keyed by (dataset, label,
    ``<label_name>/<video>``), so FF++'s ``000_003`` of Deepfakes and of FaceSwap stay two videos. Frame paths
    are relative to ``root`` (default: the JSON's folder), or absolute inside it; a path that leaves ``root``
    (``../``, ``/etc/passwd``) is refused here, naming the JSON and the entry. Listed frames absent from disk are
    counted and left out.

    Raises:
        InputNotFoundError: the JSON or ``root`` does not exist.
        InvalidInputError: the JSON does not parse or does not have DeepfakeBench's shape, or a frame path leaves
            ``root``.
    """
    path = Path(dataset_json)
    if not path.is_file():
        raise InputNotFoundError(f"DeepfakeBench dataset JSON {str(path)!r} does not exist")
    if root is not None and not Path(root).is_dir():
        raise InputNotFoundError(f"DeepfakeBench frame root {str(root)!r} is not a directory")
    info = read_json(path, "DeepfakeBench dataset JSON")
    if not isinstance(info, dict) or len(info) != 1:
        got = list(info)[:5] if isinstance(info, dict) else type(info).__name__
        raise InvalidInputError(f"{path}: expected one top-level dataset name, got {got}")
    ((top, labels),) = info.items()
    dataset = name or top
    base = Path(root) if root is not None else path.parent
    records: list[FrameRecord] = []
    absent: Counter[str] = Counter()
    for label_name, modes in labels.items():
        if methods and label_name not in methods and not label_name.lower().endswith("real"):
            continue
        label = (label_names or {}).get(label_name, 0 if label_name.lower().endswith("real") else 1)
        for mode, videos in modes.items():
            if mode not in ("train", "val", "test"):
                raise InvalidInputError(f"{path}: {label_name!r} has mode {mode!r}; expected train, val or test")
            if videos and set(videos) <= {"raw", "c23", "c40"}:
                if compression not in videos:
                    raise InvalidInputError(
                        f"{path}: {label_name}/{mode} has compressions {sorted(videos)}, not "
                        f"{compression!r}; set the source's compression"
                    )
                videos = videos[compression]
            for video, entry in videos.items():
                frames = entry.get("frames") if isinstance(entry, dict) else None
                if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
                    got = repr(entry)[:200]
                    raise InvalidInputError(
                        f"{path}: {label_name}/{mode}/{video} has no list of frame paths ('frames'), got {got}"
                    )
                for position, frame in enumerate(frames):
                    # Absolute or relative, a frame must lie under the root (by name: symlinked folders are fine).
                    file = inside_root(base, frame, f"{path} ({label_name}/{mode}/{video})")
                    if not file.is_file():
                        absent[label_name] += 1
                        continue
                    records.append(
                        FrameRecord(
                            dataset,
                            mode,
                            label,
                            label_name,
                            f"{label_name}/{video}",
                            _frame_number(frame, position),
                            file,
                        )
                    )
    if absent:
        log.warning(
            "%s: %d listed frames are not on disk and are left out (%s)",
            path,
            sum(absent.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(absent.items())),
        )
    by_split = defaultdict(set)
    for r in records:
        by_split[r.split].add(r.video_key)
    log.info("%s: %s", path, ", ".join(f"{s} {len(v)} videos" for s, v in sorted(by_split.items())))
    return records
