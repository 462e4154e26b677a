"""Frame datasets and the LightningDataModules that serve them."""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from typing_extensions import override

from ..errors import InvalidInputError
from .batch import UNREADABLE_KEY, has_images
from .forgery_types import forgery_type_id, forgery_type_name
from .manifest import FrameRecord
from .settings import ExtractionSettings
from .sources import DataSource, load_source, prepare_source
from .synthetic import DEMO_TYPES, check_demo_types, generate_demo_dataset
from .transforms import (
    Preset,
    crop_face_mask,
    eval_transform,
    sample_generators,
    seed_transform,
    self_blend,
    train_transform,
)

__all__ = [
    "UNREADABLE_KEY",
    "DemoDataModule",
    "FaceForgeryDataModule",
    "FrameDataset",
    "SampleDraw",
    "VideoFrameSampler",
    "collate_frames",
    "has_images",
    "spread_frames",
]

FrameDraw = Literal["uniform", "random"]
Balance = Literal["none", "sampler", "loss"]
SelfBlend = Literal["off", "add", "only"]


def spread_positions(total: int, count: int | None) -> list[int]:
    """``count`` positions among ``total`` ordered frames, evenly spread from the first to the last (all of them
    when ``count`` is None or not smaller)."""
    if count is None or total <= count:
        return list(range(total))
    return np.linspace(0, total - 1, count).round().astype(int).tolist()


def spread_frames(records: Sequence[FrameRecord], per_video: int | None) -> list[FrameRecord]:
    """Keep ``per_video`` frames of every video, spread uniformly over its extracted frames (not the first K)."""
    videos: dict[tuple[str, int, str], list[FrameRecord]] = defaultdict(list)
    for record in records:
        videos[record.video_key].append(record)
    kept = []
    for frames in videos.values():
        frames.sort(key=lambda r: r.frame_index)
        kept += [frames[i] for i in spread_positions(len(frames), per_video)]
    return kept


class SampleDraw(int):
    """A dataset index that also says which draw it is: the run's ``seed``, the ``epoch`` and the ``draw`` (position
    in the epoch's draw, before the split by rank). :class:`VideoFrameSampler` yields these; :class:`FrameDataset`
    seeds the sample's augmentation and self-blend from them
    (:func:`~masm_lightning.data.transforms.sample_generators`). It is an ``int``, so it indexes lists and compares
    like the plain index; a plain ``int`` reads as epoch 0, draw ``index`` of the dataset's own seed."""

    seed: int
    epoch: int
    draw: int

    def __new__(cls, index: int, seed: int, epoch: int, draw: int) -> SampleDraw:
        key = super().__new__(cls, index)
        key.seed, key.epoch, key.draw = seed, epoch, draw
        return key

    def __reduce__(self) -> tuple[type[SampleDraw], tuple[int, int, int, int]]:
        # To the loader's worker processes, attributes included.
        return SampleDraw, (int(self), self.seed, self.epoch, self.draw)

    def __repr__(self) -> str:
        return f"SampleDraw({int(self)}, seed={self.seed}, epoch={self.epoch}, draw={self.draw})"


class FrameDataset(Dataset):
    """Face crops with their label, forgery type, video key index and sample index.

    Each item is ``{"image", "label", "forgery_type", "video", "index"}``; ``forgery_type`` is the sample's index
    in :data:`~masm_lightning.data.forgery_types.FORGERY_TYPES` (from the manifest's ``method``; ``real`` for
    reals); ``video`` indexes ``self.videos``, the sorted unique (dataset, label, video id) keys, which is what the
    video-level metrics group by (``self.video_types``: each video's forgery type). Items flagged in
    ``self_blended`` are real crops turned into pseudo-fakes (label 1, type ``sbi``, video id ``sbi/<id>``) on the
    fly. With
    ``class_weights`` (real, fake), items also carry their class's loss ``weight``: the model's weighted mean of
    the per-item losses is then cross-entropy with those class weights.

    A crop that cannot be read (deleted, truncated, not an image) does not stop the run: its item is
    ``{"unreadable": index}``, which :func:`collate_frames` leaves out of the batch and lists under the batch's
    ``unreadable`` key; :class:`~masm_lightning.training.callbacks.RunReport` counts them in the log and ``results.md``.
    Dropping (rather than a placeholder image with a flag) keeps every consumer of a batch — the model's steps,
    the metrics, the robustness sweep — unaware of failures, and a lost frame changes nothing but the count.

    Randomness (the transform's augmentation, the self-blend) is drawn per sample from generators seeded by
    (seed, epoch, draw, index) (:class:`SampleDraw`, yielded by :class:`VideoFrameSampler`); a plain ``int`` index
    uses ``seed`` (the data module passes the run's), epoch 0 and draw ``index``. Same seed, same images, whatever
    the number of workers.
    """

    def __init__(
        self,
        records: Sequence[FrameRecord],
        transform: Callable[..., dict[str, Any]],
        self_blended: Sequence[bool] | None = None,
        class_weights: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        self.seed = seed
        self.blended = list(self_blended) if self_blended is not None else [False] * len(records)
        self.records = [
            r._replace(label=1, method="self_blend", video_id=f"sbi/{r.video_id}") if b else r
            for r, b in zip(records, self.blended)
        ]
        self.transform = transform
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        self.videos = sorted({r.video_key for r in self.records})
        index = {key: i for i, key in enumerate(self.videos)}
        self.video_index = [index[r.video_key] for r in self.records]
        self.types = [forgery_type_id(r.method, r.label, r.dataset) for r in self.records]
        self.video_types = [0] * len(self.videos)
        for video, kind in zip(self.video_index, self.types):
            self.video_types[video] = kind

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        key = i if isinstance(i, SampleDraw) else SampleDraw(i, self.seed, 0, i)
        augment_rng, blend_rng = sample_generators(key.seed, key.epoch, key.draw, int(key))
        i = int(key)
        record = self.records[i]
        image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
        if image is None:  # missing, truncated or not an image: recorded by the batch, counted by the report
            return {UNREADABLE_KEY: i}
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if self.blended[i]:
            image = self_blend(image, crop_face_mask(*image.shape[:2]), blend_rng)
        seed_transform(self.transform, augment_rng)
        item = {
            "image": self.transform(image=image)["image"],
            "label": record.label,
            "forgery_type": self.types[i],
            "video": self.video_index[i],
            "index": i,
        }
        if self.class_weights is not None:
            item["weight"] = self.class_weights[record.label]
        return item

    def video_groups(self) -> list[list[int]]:
        """Item indices of each video, in frame order (the order of ``self.videos``)."""
        groups: list[list[int]] = [[] for _ in self.videos]
        for i, video in enumerate(self.video_index):
            groups[video].append(i)
        for group in groups:
            group.sort(key=lambda i: self.records[i].frame_index)
        return groups


def collate_frames(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of the readable items; the dataset indices of unreadable ones (see
    :class:`FrameDataset`) go under ``batch["unreadable"]``, a key present only when some were. A batch with no
    readable item holds that key alone."""
    kept = [item for item in items if UNREADABLE_KEY not in item]
    failed = [int(item[UNREADABLE_KEY]) for item in items if UNREADABLE_KEY in item]
    batch: dict[str, Any] = default_collate(kept) if kept else {}
    if failed:
        batch[UNREADABLE_KEY] = torch.tensor(failed, dtype=torch.long)
    return batch


class VideoFrameSampler(DistributedSampler):
    """Training sampler: ``frames_per_video`` frames of every video per epoch, optionally class-balanced, split
    across DDP ranks.

    ``draw="uniform"`` takes the same frames every epoch, spread evenly over the video's extracted frames (the
    reference recipe); ``"random"`` re-draws them every epoch, one at random in each of ``frames_per_video``
    equal segments, so training sees every extracted frame over the epochs while each epoch still covers the
    whole video. ``balance=True`` draws the epoch's samples with replacement, with probability ∝ 1 / (frames of
    the sample's class), so real and fake are seen equally often (FF++ has 4 fakes per real).

    Every draw comes from a generator seeded by (seed, epoch): identical on every rank (each keeps every
    ``num_replicas``-th sample) and across resumed runs. It yields :class:`SampleDraw` indices (ints that carry
    seed, epoch and position), from which :class:`FrameDataset` seeds each sample's augmentation. Being a
    ``DistributedSampler``, Lightning keeps it under DDP instead of wrapping it, and calls :meth:`set_epoch` every
    epoch.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        labels: Sequence[int],
        frames_per_video: int | None,
        draw: FrameDraw = "uniform",
        balance: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if draw not in ("uniform", "random"):
            raise ValueError(f"frame draw {draw!r} is not 'uniform' or 'random'")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.groups = [list(g) for g in groups if len(g)]
        self.labels = list(labels)  # per item
        self.frames_per_video = frames_per_video
        self.draw, self.balance, self.shuffle = draw, balance, shuffle
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, False
        self.total = sum(len(g) if frames_per_video is None else min(len(g), frames_per_video) for g in self.groups)
        self.num_samples = math.ceil(self.total / num_replicas)

    def _frames(self, group: list[int], rng: np.random.Generator) -> list[int]:
        count = len(group) if self.frames_per_video is None else min(len(group), self.frames_per_video)
        if count == len(group):
            return group
        picks: list[int] | np.ndarray
        if self.draw == "uniform":
            picks = spread_positions(len(group), count)
        else:
            # Integer segment bounds: segments never share a frame (count <= len(group): none is empty).
            edges = np.linspace(0, len(group), count + 1).round().astype(int)
            picks = edges[:-1] + rng.integers(0, np.diff(edges))
        return [group[i] for i in picks]

    def epoch_indices(self) -> list[int]:
        """This epoch's samples across all ranks, before the split by rank."""
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = [i for g in self.groups for i in self._frames(g, rng)]
        if self.balance:
            counts = Counter(self.labels[i] for i in chosen)
            weights = np.array([1.0 / counts[self.labels[i]] for i in chosen])
            chosen = [chosen[i] for i in rng.choice(len(chosen), size=len(chosen), p=weights / weights.sum())]
        elif self.shuffle:
            chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        return chosen

    def __iter__(self) -> Iterator[int]:
        chosen = [SampleDraw(i, self.seed, self.epoch, draw) for draw, i in enumerate(self.epoch_indices())]
        padded = chosen + chosen[: self.num_samples * self.num_replicas - len(chosen)]
        return iter(padded[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class FaceForgeryDataModule(LightningDataModule):
    """Train on one dataset, select models on its validation split, test across datasets.

    ``prepare_data`` extracts the faces of every source that needs it (official trees, video folders) into
    ``cache_dir/<name>/`` unless a completed extraction with the same settings and video selection is there;
    ``setup`` reads the frame records. Splits come from the datasets' own lists (see :mod:`.indexers`).

    Resize, mean, std and interpolation follow the backbone's pretrained configuration: the CLI links
    ``model.data_config`` into ``input_config``; used from Python, the trainer's model provides it.

    Args:
        train: the training dataset; its ``train`` split trains, its ``val`` split selects models.
        test: the test datasets, logged as ``test/<name>/…``; each contributes its ``test`` rows (every row when
            none is marked ``test``, e.g. a DFDC training part used for testing).
        cache_dir: where extracted faces are kept (one sub-folder per source).
        extraction: frame count, crop kind/size/margin, detector settings of the extraction.
        extract_workers: videos extracted at once (threads) by the extraction.
        extract_device: MTCNN device (default: cuda when available).
        train_frames: frames per training video and epoch; None = all extracted frames.
        eval_frames: frames per validation/test video, spread evenly over its extracted frames; None = all.
        frame_draw: training frames the same each epoch (``uniform``, the reference recipe) or re-drawn at random
            each epoch (``random``); see :class:`VideoFrameSampler`.
        balance: ``none`` (the reference recipe: FF++ trains 1 real : 4 fakes), ``sampler`` (classes drawn
            equally often) or ``loss`` (cross-entropy class weights ``n / (2 n_c)``, carried by the batches).
        self_blend: self-blended pseudo-fakes made from real training frames (SBI): ``off``; ``add`` (every real
            frame also yields a pseudo-fake); ``only`` (train on real videos and their pseudo-fakes alone).
        augmentation: training preset (``effort``, ``light``, ``none``); evaluation is deterministic.
        input_config: image_size, mean, std, interpolation of the backbone (linked by the CLI).
        batch_size: per-process batch size.
        num_workers: data-loading worker processes (persistent; memory pinned when a GPU is used).
        seed: seed of frame draws and splits; default the ``seed_everything`` seed.

    Its ``state_dict`` (saved in every checkpoint) records how the training faces were cropped (``face_crop``),
    so ``detect`` and ``export`` crop new faces the same way, and which forgery types the training split holds
    (``trained_forgery_types``), so a later ``test`` reports the types training never saw as held out.
    """

    def __init__(
        self,
        train: DataSource | None = None,
        test: list[DataSource] | None = None,
        cache_dir: str = "outputs/faces",
        extraction: ExtractionSettings = ExtractionSettings(),  # noqa: B008 - frozen dataclass
        extract_workers: int = 2,
        extract_device: str | None = None,
        train_frames: int | None = 8,
        eval_frames: int | None = 32,
        frame_draw: FrameDraw = "uniform",
        balance: Balance = "none",
        self_blend: SelfBlend = "off",
        augmentation: Preset = "effort",
        input_config: dict[str, Any] | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("frame_draw", frame_draw, FrameDraw),
            ("balance", balance, Balance),
            ("self_blend", self_blend, SelfBlend),
            ("augmentation", augmentation, Preset),
        ):
            if value not in get_args(allowed):
                raise InvalidInputError(f"data.{name}={value!r} is not one of {list(get_args(allowed))}")
        for name, count, unset in (
            ("train_frames", train_frames, " (or null for all frames)"),
            ("eval_frames", eval_frames, " (or null for all frames)"),
            ("batch_size", batch_size, ""),
            ("extract_workers", extract_workers, ""),
        ):
            if count is not None and count < 1:
                raise InvalidInputError(f"data.{name} must be >= 1{unset}, got {count}")
        if num_workers < 0:
            raise InvalidInputError(f"data.num_workers must be >= 0 (0: load in the main process), got {num_workers}")
        self.train_source = train
        self.test_sources = list(test or [])
        self._check_names()
        self.cache_dir = Path(cache_dir)
        self.extraction = extraction
        self.save_hyperparameters(ignore=["train", "test", "extraction"])
        self.test_names: list[str] = []
        self.datasets: dict[str, FrameDataset] = {}
        # Names of the forgery types of the training split: set by setup("fit"), or restored from a checkpoint.
        self.trained_forgery_types: list[str] | None = None

    def _check_names(self) -> None:
        """Two sources may share a name (and cache folder) only if they are the same selection of videos."""
        seen: dict[str, DataSource] = {}
        for source in [self.train_source, *self.test_sources]:
            if source is None:
                continue
            other = seen.setdefault(source.display_name, source)
            same = (
                other.selection() == source.selection()
                if other.needs_extraction and source.needs_extraction
                else asdict(other) == asdict(source)
            )
            if not same:
                raise InvalidInputError(
                    f"two data sources are named {source.display_name!r} but read different data; "
                    "give them distinct `name`s"
                )
        names = [s.display_name for s in self.test_sources]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"data.test lists a test set twice: {names}")

    @property
    def seed(self) -> int:
        """The frame-draw seed: ``data.seed``, else the run's ``seed_everything`` seed, else 0."""
        return self.hparams["seed"] if self.hparams["seed"] is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def face_crop(self) -> dict[str, Any] | None:
        """The crop settings the training faces were made with (saved in checkpoints for inference): ours when we
        extract, those recorded beside a preprocess manifest, else unknown (None)."""
        source = self.train_source
        if source is None:
            return None
        if source.needs_extraction:
            return asdict(self.extraction)
        if source.dataset == "deepfakebench":  # its preprocessing: 5-point alignment, scale 1.3, 256 px
            return asdict(ExtractionSettings(crop="aligned", size=256, scale=1.3))
        if source.dataset == "manifest":
            recorded = Path(source.require("manifest")).parent / "settings.json"
            try:  # written by `preprocess`; other tools' settings files do not fit
                return asdict(ExtractionSettings(**json.loads(recorded.read_text())["settings"]))
            except (OSError, KeyError, TypeError, ValueError):
                return None
        return None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"face_crop": self.face_crop, "trained_forgery_types": self.trained_forgery_types}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The face-crop record describes this module's settings: nothing to restore. The training split's types
        # are what a test of the checkpoint compares its test types with (absent from older checkpoints).
        if self.trained_forgery_types is None:
            self.trained_forgery_types = state_dict.get("trained_forgery_types")

    @override
    def prepare_data(self) -> None:
        done: set[str] = set()
        for source in [self.train_source, *self.test_sources]:
            if source is not None and source.display_name not in done:
                prepare_source(
                    source,
                    self.cache_dir,
                    self.extraction,
                    self.hparams["extract_workers"],
                    self.hparams["extract_device"],
                )
                done.add(source.display_name)

    def resolved_input_config(self) -> dict[str, Any]:
        """The backbone's input configuration (size, mean, std, interpolation) this module resizes and normalises
        with: ``data.input_config`` (linked by the CLI) or the trainer's model's ``data_config``; they must agree."""
        linked = self.hparams["input_config"]
        model = self.trainer.lightning_module if self.trainer is not None else None
        own = getattr(model, "data_config", None)
        if linked is not None and own is not None and {k: own[k] for k in linked} != dict(linked):
            raise InvalidInputError(
                f"data.input_config {dict(linked)!r} disagrees with the model's data_config {own!r}; "
                "leave data.input_config unset (the CLI links it from the model)"
            )
        config = linked or own
        if config is None:
            raise InvalidInputError(
                "no input configuration: set data.input_config {image_size, mean, std[, "
                "interpolation]} or use a model with a data_config"
            )
        missing = {"image_size", "mean", "std"} - config.keys()
        if missing:
            raise InvalidInputError(f"data.input_config lacks {sorted(missing)}")
        return {"interpolation": "bicubic", **config}

    def _load(self, source: DataSource) -> list[FrameRecord]:
        return load_source(source, self.cache_dir)

    @override
    def setup(self, stage: str) -> None:
        config = self.resolved_input_config()
        size, mean, std, interpolation = (config[k] for k in ("image_size", "mean", "std", "interpolation"))
        eval_tf = eval_transform(size, mean, std, interpolation)
        self.datasets = {}
        if stage in ("fit", "validate"):
            if self.train_source is None:
                raise InvalidInputError(f"`{stage}` needs data.train (the training dataset and its validation split)")
            records = self._load(self.train_source)
            by_split: dict[str, list[FrameRecord]] = defaultdict(list)
            for record in records:
                by_split[record.split].append(record)
            if stage == "fit":
                self.datasets["train"] = self._train_dataset(by_split["train"], config, self.train_source.display_name)
            val = FrameDataset(spread_frames(by_split["val"], self.hparams["eval_frames"]), eval_tf)
            if len(val):
                self.datasets["val"] = val
            else:
                rank_zero_warn(
                    f"data source {self.train_source.display_name!r} has no usable 'val' videos: "
                    "validation is skipped (and checkpoint callbacks monitoring val/* save nothing "
                    "but `last`)"
                )
        if stage in ("test", "predict"):
            if not self.test_sources:
                raise InvalidInputError(f"`{stage}` needs data.test (a list of test datasets)")
            self.test_names = []
            for source in self.test_sources:
                rows = self._load(source)
                chosen = [r for r in rows if r.split == "test"] or rows
                dataset = FrameDataset(spread_frames(chosen, self.hparams["eval_frames"]), eval_tf)
                if not len(dataset):
                    rank_zero_warn(f"test set {source.display_name!r} has no usable videos: skipped")
                    continue
                self.test_names.append(source.display_name)
                self.datasets[f"test/{source.display_name}"] = dataset

    def _train_dataset(self, records: list[FrameRecord], config: dict[str, Any], name: str) -> FrameDataset:
        if not records:
            raise InvalidInputError(f"data source {name!r} has no usable 'train' videos to fit on")
        mode = self.hparams["self_blend"]
        if mode == "only":
            records = [r for r in records if r.label == 0]
        reals = [r for r in records if r.label == 0] if mode != "off" else []
        if mode != "off" and not reals:
            raise InvalidInputError(f"data.self_blend={mode!r} needs real training videos; {name!r} has none")
        transform = train_transform(
            config["image_size"], config["mean"], config["std"], self.hparams["augmentation"], config["interpolation"]
        )
        dataset = FrameDataset(records + reals, transform, [False] * len(records) + [True] * len(reals), seed=self.seed)
        self.trained_forgery_types = [forgery_type_name(t) for t in sorted(set(dataset.types))]
        if self.hparams["balance"] == "loss":
            counts = Counter(dataset.records[i].label for i in self._sampler(dataset).epoch_indices())
            total = sum(counts.values())
            dataset.class_weights = tuple(total / (2 * max(counts[c], 1)) for c in (0, 1))
        videos = Counter(label for _, label, _ in dataset.videos)
        hp = self.hparams
        rank_zero_info(
            f"training on {videos[0]} real and {videos[1]} fake videos "
            f"({len(dataset)} frames; {hp['train_frames']} per video and epoch, "
            f"{hp['frame_draw']} draw, balance {hp['balance']}, self-blend {mode})"
        )
        return dataset

    def _sampler(self, dataset: FrameDataset) -> VideoFrameSampler:
        trainer = self.trainer
        # Rank 0's seed on every rank: processes started by srun/torchrun may each have drawn their own.
        seed = trainer.strategy.broadcast(self.seed, src=0) if trainer else self.seed
        return VideoFrameSampler(
            dataset.video_groups(),
            [r.label for r in dataset.records],
            self.hparams["train_frames"],
            self.hparams["frame_draw"],
            self.hparams["balance"] == "sampler",
            seed=seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )

    def _loader(self, dataset: FrameDataset, sampler: VideoFrameSampler | None = None) -> DataLoader:
        workers = self.hparams["num_workers"]
        return DataLoader(
            dataset,
            batch_size=self.hparams["batch_size"],
            sampler=sampler,
            shuffle=False,
            drop_last=False,
            collate_fn=collate_frames,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    @override
    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        return self._loader(dataset, self._sampler(dataset))

    @override
    def val_dataloader(self) -> DataLoader | list:
        val = self.datasets.get("val")
        return self._loader(val) if val is not None else []

    @override
    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.datasets[f"test/{name}"]) for name in self.test_names]

    @override
    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()


class DemoDataModule(FaceForgeryDataModule):
    """The generated demo dataset (procedural faces vs fakes of several forgery types,
    :mod:`~masm_lightning.data.synthetic`), made on first use; it trains on the ``train`` split, validates on
    ``val`` and tests on ``test`` (test set name ``demo``), which alone holds the ``held_out`` type.

    Args:
        root: where the frames and manifest are written (reused when made with the same settings).
        videos: videos per split, half real and half fake.
        frames_per_video: frames generated per video.
        size: generated frame side in pixels.
        generation_seed: seed of the generated images, fixed so every run (and every ``seed_everything`` seed)
            sees the same dataset; the frame draws follow ``seed`` / ``seed_everything`` as for any data module.
        forgery_types: the generated fake types (``demo_blend``, ``demo_upsample``, ``demo_colour``, ``demo_grid``).
        held_out: one of them kept out of train and val, in the test split only; null holds none out.
        **kwargs: the :class:`FaceForgeryDataModule` options (batch size, workers, augmentation, seed, …).
    """

    def __init__(
        self,
        root: str = "outputs/demo_data",
        videos: dict[str, int] | None = None,
        frames_per_video: int = 6,
        size: int = 64,
        generation_seed: int = 0,
        forgery_types: list[str] | None = None,
        held_out: str | None = "demo_grid",
        **kwargs: Any,
    ) -> None:
        manifest = DataSource("manifest", manifest=str(Path(root) / "manifest.csv"), name="demo")
        super().__init__(train=manifest, test=[manifest], **kwargs)
        self.generation: dict[str, Any] = {
            "root": root,
            "videos": videos,
            "frames_per_video": frames_per_video,
            "size": size,
            "seed": generation_seed,
            "forgery_types": list(forgery_types or DEMO_TYPES),
            "held_out": held_out,
        }
        try:  # the same checks as the generation's, at configuration time
            check_demo_types(self.generation["forgery_types"], held_out)
        except ValueError as error:
            raise InvalidInputError(f"data.{error}") from error

    @property
    @override
    def face_crop(self) -> dict[str, Any] | None:
        """The generated frames are square face crops of side ``size`` with the face filling them about as a box
        crop at scale 1.3 does: new faces are cropped that way."""
        return asdict(ExtractionSettings(frames=self.generation["frames_per_video"], size=self.generation["size"]))

    @override
    def prepare_data(self) -> None:
        generate_demo_dataset(**self.generation)
