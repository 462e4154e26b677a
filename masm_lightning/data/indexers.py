"""Official dataset layouts → one list of video records (the rows face extraction works through).

Every indexer reads a dataset tree exactly as it is downloaded, takes splits from the dataset's own lists (never a
random split), and returns one :class:`VideoRecord` per listed video. A video that a list names but the disk lacks
is kept with ``status="missing"`` so it shows up in the manifest instead of vanishing. Names read from list files
must stay inside the dataset root: anything that resolves outside it is rejected.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

__all__ = [
    "EXTRACTED_DATASETS",
    "FFPP_METHODS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "VideoRecord",
    "index_celebdf",
    "index_dataset",
    "index_dfd",
    "index_dfdc",
    "index_dfdcp",
    "index_ffpp",
    "index_folder",
    "inside_root",
]

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
Compression = Literal["raw", "c23", "c40"]
# The datasets read from their official layouts (and extracted); with `folder`, everything `index_dataset` takes.
OfficialDataset = Literal["ffpp", "dfd", "celebdf-v1", "celebdf-v2", "dfdc", "dfdcp"]
DatasetName = Literal[OfficialDataset, "folder"]
EXTRACTED_DATASETS: tuple[str, ...] = get_args(OfficialDataset)


class VideoRecord(NamedTuple):
    dataset: str
    split: str  # train / val / test
    label: int  # 0 real, 1 fake
    method: str  # manipulation, or "real"
    video_id: str  # unique within the dataset (with label): the video key everywhere downstream
    original_id: str  # for fakes, the real video it was made from, where known; else ""
    video_path: Path
    status: str  # "listed" (on disk, not yet processed) or "missing"


def inside_root(root: Path, relative: str, source: str) -> Path:
    """``root / relative``, refusing names that escape the root (``..``, absolute paths). The check is on the
    names, not on resolved links: a sub-folder symlinked to another disk (common for large datasets) is fine."""
    path = Path(os.path.normpath(Path(root).absolute() / relative))
    if not path.is_relative_to(Path(os.path.normpath(Path(root).absolute()))):
        raise ValueError(f"{source} names {relative!r}, which resolves outside the dataset root {str(root)!r}")
    return path


def _record(
    dataset: str, split: str, label: int, method: str, video_id: str, original_id: str, path: Path
) -> VideoRecord:
    return VideoRecord(
        dataset, split, label, method, video_id, original_id, path, "listed" if path.is_file() else "missing"
    )


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} is not a directory")


def index_ffpp(
    root: str | Path,
    splits: str | Path | None = None,
    compression: Compression = "c23",
    methods: Sequence[str] = FFPP_METHODS,
) -> list[VideoRecord]:
    """FaceForensics++: reals ``original_sequences/youtube/<comp>/videos/NNN.mp4`` and fakes
    ``manipulated_sequences/<method>/<comp>/videos/TTT_SSS.mp4`` (target TTT, source SSS).

    Splits come from the official pair lists ``train.json``, ``val.json``, ``test.json``: a pair ``[a, b]`` puts
    reals a and b and fakes ``a_b`` and ``b_a`` of every method in that split. Fake ids are ``<method>/<a_b>``.

    Args:
        root: the FF++ download.
        splits: folder with the three JSON files; default ``<root>/splits``.
        compression: ``raw``, ``c23`` or ``c40``.
        methods: manipulations to include (FaceShifter too, if downloaded).
    """
    root = Path(root)
    _require_dir(root, "FF++ root")
    split_dir = Path(splits) if splits is not None else root / "splits"
    files = {name: split_dir / f"{name}.json" for name in ("train", "val", "test")}
    absent = [str(p) for p in files.values() if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"FF++ split lists not found: {absent}. They are not part of the video download: take "
            "train.json, val.json and test.json from the FaceForensics GitHub repository (dataset/splits/) and "
            "pass their folder as --splits"
        )
    if compression not in ("raw", "c23", "c40"):
        raise ValueError(f"FF++ compression must be 'raw', 'c23' or 'c40', got {compression!r}")
    records: list[VideoRecord] = []
    for split, path in files.items():
        pairs = json.loads(path.read_text())
        for pair in pairs:
            if len(pair) != 2 or not all(isinstance(v, str) and v.isdigit() for v in pair):
                raise ValueError(f"{path}: expected pairs of video numbers like ['071', '054'], got {pair!r}")
            for real in pair:
                video = inside_root(root, f"original_sequences/youtube/{compression}/videos/{real}.mp4", str(path))
                records.append(_record("ffpp", split, 0, "real", real, "", video))
            for target, source in (pair, pair[::-1]):
                for method in methods:
                    name = f"{target}_{source}"
                    video = inside_root(
                        root, f"manipulated_sequences/{method}/{compression}/videos/{name}.mp4", str(path)
                    )
                    records.append(_record("ffpp", split, 1, method, f"{method}/{name}", target, video))
    return records


def index_dfd(root: str | Path, compression: Compression = "c23") -> list[VideoRecord]:
    """DeepFakeDetection (Google/Jigsaw, distributed inside FF++): ``original_sequences/actors`` (real) and
    ``manipulated_sequences/DeepFakeDetection`` (fake). Used for testing only: every video is ``test``."""
    root = Path(root)
    _require_dir(root, "DFD root (the FF++ download)")
    records = []
    for label, folder, method in (
        (0, "original_sequences/actors", "real"),
        (1, "manipulated_sequences/DeepFakeDetection", "DeepFakeDetection"),
    ):
        videos = root / folder / compression / "videos"
        for path in sorted(p for p in videos.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            records.append(_record("dfd", "test", label, method, f"{method}/{path.stem}", "", path))
    if not records:
        raise FileNotFoundError(
            f"no DFD videos under {str(root)!r} (original_sequences/actors/{compression}/videos, "
            f"manipulated_sequences/DeepFakeDetection/{compression}/videos)"
        )
    return records


def index_celebdf(root: str | Path, version: Literal["v1", "v2"] = "v2") -> list[VideoRecord]:
    """Celeb-DF: ``Celeb-real/``, ``YouTube-real/``, ``Celeb-synthesis/`` and ``List_of_testing_videos.txt``.

    The list's first column is **1 for real, 0 for fake** (the reverse of ours); its videos are ``test``, every
    other video is ``train`` — a test video can never land in train. Fake ``idX_idY_NNNN`` was made from the real
    ``Celeb-real/idX_NNNN``.
    """
    root = Path(root)
    _require_dir(root, f"Celeb-DF {version} root")
    listing = root / "List_of_testing_videos.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"Celeb-DF test list {str(listing)!r} is missing; it ships with the dataset")
    test: dict[str, int] = {}
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        flag, relative = line.split(maxsplit=1)
        if flag not in ("0", "1"):
            raise ValueError(f"{listing}:{number}: label {flag!r} is not 1 (real) or 0 (fake)")
        inside_root(root, relative.strip(), str(listing))
        test[Path(relative.strip()).with_suffix("").as_posix()] = 1 - int(flag)  # their 1 = real → our 0
    dataset = f"celebdf_{version}"
    on_disk = {
        p.relative_to(root).with_suffix("").as_posix(): p
        for folder in ("Celeb-real", "YouTube-real", "Celeb-synthesis")
        for p in sorted((root / folder).glob("*"))
        if p.suffix.lower() in VIDEO_SUFFIXES
    }
    records = []
    for video_id in sorted(on_disk.keys() | test.keys()):
        label = 1 if video_id.startswith("Celeb-synthesis/") else 0
        if video_id in test and test[video_id] != label:
            raise ValueError(
                f"{listing}: {video_id!r} is listed as {'fake' if test[video_id] else 'real'} but "
                "lives in a folder of the other class"
            )
        original = ""
        if label:
            parts = Path(video_id).name.split("_")
            if len(parts) == 3:
                original = f"Celeb-real/{parts[0]}_{parts[2]}"
        path = on_disk.get(video_id, root / f"{video_id}.mp4")
        records.append(
            _record(
                dataset,
                "test" if video_id in test else "train",
                label,
                "Celeb-synthesis" if label else "real",
                video_id,
                original,
                path,
            )
        )
    return records


def index_dfdc(root: str | Path) -> list[VideoRecord]:
    """DFDC: training parts ``dfdc_train_part_N/metadata.json`` (``label`` REAL/FAKE, ``original`` for fakes) →
    ``train``; the test set's ``labels.csv`` (``filename,label``, 0 real / 1 fake) → ``test``. Either may be absent.
    """
    root = Path(root)
    _require_dir(root, "DFDC root")
    records = []
    for metadata in sorted(root.glob("**/metadata.json")):
        entries = json.loads(metadata.read_text())
        for filename, info in sorted(entries.items()):
            label = {"REAL": 0, "FAKE": 1}.get(str(info.get("label", "")).upper())
            if label is None:
                raise ValueError(f"{metadata}: {filename!r} has label {info.get('label')!r}, expected REAL or FAKE")
            path = inside_root(metadata.parent, filename, str(metadata))
            original = Path(info.get("original") or "").stem if label else ""
            records.append(
                _record("dfdc", "train", label, "dfdc" if label else "real", Path(filename).stem, original, path)
            )
    for labels in sorted(root.glob("**/labels.csv")):
        with labels.open(newline="") as f:
            for row in csv.DictReader(f):
                label = int(row["label"])
                path = inside_root(labels.parent, row["filename"], str(labels))
                records.append(
                    _record("dfdc", "test", label, "dfdc" if label else "real", Path(row["filename"]).stem, "", path)
                )
    if not records:
        raise FileNotFoundError(f"no DFDC metadata.json or labels.csv under {str(root)!r}")
    return records


def index_dfdcp(root: str | Path) -> list[VideoRecord]:
    """DFDC preview: ``dataset.json`` maps each video path to its ``label`` (real/fake) and ``set`` (train/test)."""
    root = Path(root)
    listing = root / "dataset.json"
    if not listing.is_file():
        raise FileNotFoundError(f"DFDCP list {str(listing)!r} is missing; it ships with the preview dataset")
    records = []
    for relative, info in sorted(json.loads(listing.read_text()).items()):
        label = {"real": 0, "fake": 1}.get(str(info.get("label", "")).lower())
        split = str(info.get("set", "")).lower()
        if label is None or split not in ("train", "test"):
            raise ValueError(
                f"{listing}: {relative!r} has label {info.get('label')!r} and set {info.get('set')!r}; "
                "expected real/fake and train/test"
            )
        path = inside_root(root, relative, str(listing))
        records.append(
            _record(
                "dfdcp", split, label, "dfdcp" if label else "real", Path(relative).with_suffix("").as_posix(), "", path
            )
        )
    return records


def index_folder(root: str | Path, split: str = "test", dataset: str | None = None) -> list[VideoRecord]:
    """Any tree with ``real/`` and ``fake/`` sub-folders of videos or images (searched recursively). Each video,
    and each image, is one record; ids are paths relative to the class folder."""
    root = Path(root)
    _require_dir(root, "folder dataset root")
    name = dataset or root.name
    records = []
    for label, folder in ((0, "real"), (1, "fake")):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES):
            records.append(
                _record(name, split, label, folder, path.relative_to(base).with_suffix("").as_posix(), "", path)
            )
    if not records:
        raise FileNotFoundError(f"no videos or images under {str(root)!r}/real or /fake")
    return records


def index_dataset(name: DatasetName, root: str | Path, **options: Any) -> list[VideoRecord]:
    """Dispatch on the dataset name used by ``preprocess --dataset``."""
    if name == "ffpp":
        return index_ffpp(root, **options)
    if name == "dfd":
        return index_dfd(root, **options)
    if name in ("celebdf-v1", "celebdf-v2"):
        return index_celebdf(root, version="v1" if name == "celebdf-v1" else "v2", **options)
    if name == "dfdc":
        return index_dfdc(root)
    if name == "dfdcp":
        return index_dfdcp(root)
    if name == "folder":
        return index_folder(root, **options)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(get_args(DatasetName))}")
