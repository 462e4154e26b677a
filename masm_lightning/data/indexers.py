"""Official dataset layouts → one list of video records (the rows face extraction works through).

Every indexer reads a dataset tree exactly as it is downloaded, takes splits from the dataset's own lists (never a
random split), and returns one :class:`VideoRecord` per listed video. A video that a list names but the disk lacks
is kept with ``status="missing"`` so it shows up in the manifest instead of vanishing. Names read from list files
must stay inside the dataset root: anything that resolves outside it is rejected. Folders are listed with
:func:`~masm_lightning.io.walk_files` (symlinked sub-folders followed, loops cut). A wrong root, a missing list or
a list that does not parse raises a :mod:`~masm_lightning.errors` user error naming the file (and line).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from ..errors import InputNotFoundError, InvalidInputError
from ..io import walk_files

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
    "read_json",
]

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
FFPP_OTHER_METHODS = ("FaceShifter",)  # released later than the paper's four; not in its protocol
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
    """``root / relative``, refusing names that escape the root (``..``, absolute paths outside it). The check is
    on the names, not on resolved links: a sub-folder symlinked to another disk (common for large datasets) is
    fine.

    Raises:
        InvalidInputError: the name leaves the root (the message names ``source``, the name and the root).
    """
    path = Path(os.path.normpath(Path(root).absolute() / relative))
    if not path.is_relative_to(Path(os.path.normpath(Path(root).absolute()))):
        raise InvalidInputError(f"{source} names {relative!r}, which resolves outside the dataset root {str(root)!r}")
    return path


def read_json(path: Path, what: str) -> Any:
    """The parsed content of a dataset's JSON list.

    Raises:
        InvalidInputError: the file is not valid JSON (the message names the file, line and column).
    """
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(
            f"{path}:{error.lineno}:{error.colno}: {what} is not valid JSON ({error.msg})"
        ) from error
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path}: {what} is not a UTF-8 text file ({error.reason})") from error


def _record(
    dataset: str, split: str, label: int, method: str, video_id: str, original_id: str, path: Path
) -> VideoRecord:
    return VideoRecord(
        dataset, split, label, method, video_id, original_id, path, "listed" if path.is_file() else "missing"
    )


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputNotFoundError(f"{what} {str(path)!r} is not a directory")


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
        raise InputNotFoundError(
            f"FF++ split lists not found: {absent}. They are not part of the video download: take "
            "train.json, val.json and test.json from the FaceForensics GitHub repository (dataset/splits/) and "
            "pass their folder as --splits"
        )
    if compression not in ("raw", "c23", "c40"):
        raise InvalidInputError(f"FF++ compression must be 'raw', 'c23' or 'c40', got {compression!r}")
    _check_ffpp_methods(root, methods)
    records: list[VideoRecord] = []
    for split, path in files.items():
        pairs = read_json(path, "FF++ split list")
        for number, pair in enumerate(pairs if isinstance(pairs, list) else [pairs], start=1):
            numbers = isinstance(pair, list) and all(isinstance(v, str) and v.isdigit() for v in pair)
            if not numbers or len(pair) != 2:
                raise InvalidInputError(
                    f"{path}: pair {number}: expected pairs of video numbers like ['071', '054'], got {pair!r}"
                )
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


def _check_ffpp_methods(root: Path, methods: Sequence[str]) -> None:
    """A method that is neither an FF++ manipulation nor a folder of ``manipulated_sequences`` is a typo (every
    one of its videos would be "missing"): refused, naming the valid names."""
    present = root / "manipulated_sequences"
    folders = sorted(p.name for p in present.iterdir() if p.is_dir()) if present.is_dir() else []
    valid = sorted({*FFPP_METHODS, *FFPP_OTHER_METHODS, *folders} - {"DeepFakeDetection"})
    for method in methods:
        if method not in valid:
            close = [v for v in valid if v.lower() == str(method).lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidInputError(
                f"FF++ method {method!r} is not one of {', '.join(valid)}{hint}: --methods takes those names"
            )


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
        raise InputNotFoundError(
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
        raise InputNotFoundError(f"Celeb-DF test list {str(listing)!r} is missing; it ships with the dataset")
    test: dict[str, int] = {}
    for number, line in enumerate(listing.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise InvalidInputError(
                f"{listing}:{number}: expected '<1 real | 0 fake> <video path>', got {line.strip()!r}"
            )
        flag, relative = fields
        if flag not in ("0", "1"):
            raise InvalidInputError(f"{listing}:{number}: label {flag!r} is not 1 (real) or 0 (fake)")
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
            raise InvalidInputError(
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
    listed = walk_files(root, (".json", ".csv"))
    for metadata in (p for p in listed if p.name == "metadata.json"):
        entries = read_json(metadata, "DFDC metadata")
        if not isinstance(entries, dict):
            raise InvalidInputError(
                f"{metadata}: expected an object of video name → {{label, original}}, got {type(entries).__name__}"
            )
        for filename, info in sorted(entries.items()):
            if not isinstance(info, dict):
                raise InvalidInputError(f"{metadata}: {filename!r} maps to {info!r}, expected {{label, original}}")
            label = {"REAL": 0, "FAKE": 1}.get(str(info.get("label", "")).upper())
            if label is None:
                raise InvalidInputError(
                    f"{metadata}: {filename!r} has label {info.get('label')!r}, expected REAL or FAKE"
                )
            path = inside_root(metadata.parent, filename, str(metadata))
            original = Path(info.get("original") or "").stem if label else ""
            records.append(
                _record("dfdc", "train", label, "dfdc" if label else "real", Path(filename).stem, original, path)
            )
    for labels in (p for p in listed if p.name == "labels.csv"):
        with labels.open(newline="") as f:
            reader = csv.DictReader(f)
            if not {"filename", "label"} <= set(reader.fieldnames or ()):
                raise InvalidInputError(
                    f"{labels}:1: expected the header 'filename,label', got {','.join(reader.fieldnames or ())!r}"
                )
            for row in reader:
                if row["label"] not in ("0", "1") or not row["filename"]:
                    raise InvalidInputError(
                        f"{labels}:{reader.line_num}: expected '<video file>,<0 real | 1 fake>', got "
                        f"{row['filename']!r},{row['label']!r}"
                    )
                label = int(row["label"])
                path = inside_root(labels.parent, row["filename"], f"{labels}:{reader.line_num}")
                records.append(
                    _record("dfdc", "test", label, "dfdc" if label else "real", Path(row["filename"]).stem, "", path)
                )
    if not records:
        raise InputNotFoundError(f"no DFDC metadata.json or labels.csv under {str(root)!r}")
    return records


def index_dfdcp(root: str | Path) -> list[VideoRecord]:
    """DFDC preview: ``dataset.json`` maps each video path to its ``label`` (real/fake) and ``set`` (train/test)."""
    root = Path(root)
    _require_dir(root, "DFDCP root")
    listing = root / "dataset.json"
    if not listing.is_file():
        raise InputNotFoundError(f"DFDCP list {str(listing)!r} is missing; it ships with the preview dataset")
    records = []
    entries = read_json(listing, "DFDCP list")
    if not isinstance(entries, dict):
        raise InvalidInputError(f"{listing}: expected an object of video path → {{label, set}}")
    for relative, info in sorted(entries.items()):
        if not isinstance(info, dict):
            raise InvalidInputError(f"{listing}: {relative!r} maps to {info!r}, expected {{label, set}}")
        label = {"real": 0, "fake": 1}.get(str(info.get("label", "")).lower())
        split = str(info.get("set", "")).lower()
        if label is None or split not in ("train", "test"):
            raise InvalidInputError(
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
    """Any tree with ``real/`` and ``fake/`` sub-folders of videos or images (searched recursively, symlinked
    sub-folders followed). Each video, and each image, is one record; ids are paths relative to the class folder."""
    root = Path(root)
    _require_dir(root, "folder dataset root")
    name = dataset or root.name
    records = []
    for label, folder in ((0, "real"), (1, "fake")):
        base = root / folder
        if not base.is_dir():
            continue
        for path in walk_files(base, VIDEO_SUFFIXES + IMAGE_SUFFIXES):
            records.append(
                _record(name, split, label, folder, path.relative_to(base).with_suffix("").as_posix(), "", path)
            )
    if not records:
        raise InputNotFoundError(f"no videos or images under {str(root)!r}/real or /fake")
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
    raise InvalidInputError(f"unknown dataset {name!r}; choose one of {', '.join(get_args(DatasetName))}")
