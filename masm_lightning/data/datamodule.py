"""Frame datasets and the LightningDataModules that serve them."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from .manifest import FrameRecord, read_manifest
from .synthetic import generate_demo_dataset
from .transforms import Preset, eval_transform, train_transform

__all__ = ["DemoDataModule", "FaceForgeryDataModule", "FrameDataset", "spread_frames"]


def spread_frames(records: Sequence[FrameRecord], per_video: int | None) -> list[FrameRecord]:
    """Keep ``per_video`` frames of every video, spread uniformly over its extracted frames (not the first K)."""
    videos: dict[tuple[str, int, str], list[FrameRecord]] = defaultdict(list)
    for record in records:
        videos[record.video_key].append(record)
    kept = []
    for frames in videos.values():
        frames.sort(key=lambda r: r.frame_index)
        if per_video is not None and len(frames) > per_video:
            picks = np.linspace(0, len(frames) - 1, per_video).round().astype(int)
            frames = [frames[i] for i in picks]
        kept += frames
    return kept


class FrameDataset(Dataset):
    """Face crops with their label, video key index and sample index.

    Each item is ``{"image", "label", "video", "index"}``; ``video`` indexes ``self.videos``, the sorted unique
    (dataset, label, video id) keys, which is what the video-level metrics group by.
    """

    def __init__(self, records: Sequence[FrameRecord], transform: Callable[..., dict[str, Any]]) -> None:
        self.records = list(records)
        self.transform = transform
        self.videos = sorted({r.video_key for r in self.records})
        index = {key: i for i, key in enumerate(self.videos)}
        self.video_index = [index[r.video_key] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot read frame {str(record.path)!r} (video {record.video_key})")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return {"image": self.transform(image=image)["image"], "label": record.label,
                "video": self.video_index[i], "index": i}


class FaceForgeryDataModule(LightningDataModule):
    """Training, validation and named test sets read from frame manifests.

    Image size, mean and std come from the model (``MASMDetector.data_config``) when left unset, so data and
    backbone cannot disagree; set explicitly, they must match it.

    Args:
        manifest: frame manifest with ``train`` and ``val`` rows (and ``test`` rows, used when ``test_manifests``
            is not given).
        test_manifests: test-set name → manifest; each contributes its ``test`` rows (all rows if none is marked
            ``test``), logged as ``test/<name>/…``.
        train_frames: frames per training video (spread uniformly); None = all.
        eval_frames: frames per validation/test video; None = all.
        batch_size: per-process batch size.
        num_workers: data-loading worker processes.
        augmentation: training preset (``none``, ``light``, ``effort``).
        image_size, mean, std: override the model's input configuration.
    """

    def __init__(
        self,
        manifest: str | None = None,
        test_manifests: dict[str, str] | None = None,
        train_frames: int | None = 8,
        eval_frames: int | None = 32,
        batch_size: int = 32,
        num_workers: int = 4,
        augmentation: Preset = "effort",
        image_size: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.manifest = manifest
        self.test_manifests = test_manifests
        self.test_names: list[str] = []
        self.datasets: dict[str, FrameDataset] = {}

    def _input_config(self) -> tuple[int, Sequence[float], Sequence[float]]:
        model_config = getattr(self.trainer.lightning_module, "data_config", None) if self.trainer else None
        chosen = {"image_size": self.hparams.image_size, "mean": self.hparams.mean, "std": self.hparams.std}
        if model_config is None:
            missing = [k for k, v in chosen.items() if v is None]
            if missing:
                raise ValueError(f"set {missing} on the data module: the model does not provide a data_config")
            return chosen["image_size"], chosen["mean"], chosen["std"]
        for key, value in chosen.items():
            if value is not None and tuple(np.atleast_1d(value)) != tuple(np.atleast_1d(model_config[key])):
                raise ValueError(f"data.{key}={value!r} disagrees with the backbone's {model_config[key]!r}; "
                                 f"remove data.{key} to use the backbone's value")
        return model_config["image_size"], model_config["mean"], model_config["std"]

    @override
    def setup(self, stage: str) -> None:
        size, mean, std = self._input_config()
        train_tf = train_transform(size, mean, std, self.hparams.augmentation)
        eval_tf = eval_transform(size, mean, std)
        records = read_manifest(self.manifest) if self.manifest else []
        by_split: dict[str, list[FrameRecord]] = defaultdict(list)
        for record in records:
            by_split[record.split].append(record)
        self.datasets = {}
        if stage == "fit":
            self.datasets["train"] = FrameDataset(spread_frames(by_split["train"], self.hparams.train_frames), train_tf)
            if not self.datasets["train"].records:
                raise ValueError(f"manifest {self.manifest!r} has no 'train' rows to fit on")
        if stage in ("fit", "validate"):
            self.datasets["val"] = FrameDataset(spread_frames(by_split["val"], self.hparams.eval_frames), eval_tf)
            if not self.datasets["val"].records:
                warnings.warn(f"manifest {self.manifest!r} has no 'val' rows: validation is skipped", stacklevel=2)
        if stage in ("test", "predict"):
            sources = {name: read_manifest(path) for name, path in (self.test_manifests or {}).items()}
            if not sources and by_split["test"]:
                sources = {by_split["test"][0].dataset: by_split["test"]}
            if not sources:
                raise ValueError("no test data: set data.test_manifests or give the manifest 'test' rows")
            self.test_names = list(sources)
            for name, rows in sources.items():
                chosen = [r for r in rows if r.split == "test"] or rows
                self.datasets[f"test/{name}"] = FrameDataset(spread_frames(chosen, self.hparams.eval_frames), eval_tf)

    def _loader(self, dataset: FrameDataset, train: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=train, drop_last=False,
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], train=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        val = self.datasets.get("val")
        return self._loader(val, train=False) if val is not None and len(val) else []

    @override
    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[f"test/{name}"], train=False) for name in self.test_names]

    @override
    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()


class DemoDataModule(FaceForgeryDataModule):
    """The generated demo dataset (procedural faces vs their self-blended fakes), made on first use.

    Args:
        root: where the frames and manifest are written (reused when made with the same settings).
        videos: videos per split, half real and half fake.
        frames_per_video: frames generated per video.
        size: generated frame side in pixels.
        seed: generation seed.
        **kwargs: the :class:`FaceForgeryDataModule` options (batch size, workers, augmentation, …).
    """

    def __init__(
        self,
        root: str = "outputs/demo_data",
        videos: dict[str, int] | None = None,
        frames_per_video: int = 6,
        size: int = 64,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(manifest=str(Path(root) / "manifest.csv"), **kwargs)
        self.generation = {"root": root, "videos": videos, "frames_per_video": frames_per_video, "size": size,
                           "seed": seed}

    @override
    def prepare_data(self) -> None:
        generate_demo_dataset(**self.generation)
