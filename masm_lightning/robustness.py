"""Robustness sweep: test sets re-scored under the DeeperForensics-1.0 perturbations at 5 severity levels.

Perturbations and per-level parameters (level 1 → 5, mildest → harshest), from DeeperForensics-1.0
(Jiang et al., CVPR 2020), ``perturbation/add_distortion_to_video.py`` ``get_distortion_parameter``:

=========  ======================  ==================================  ===============================
type       what                    parameter                           levels 1–5
=========  ======================  ==================================  ===============================
``CS``     colour saturation       chroma (Cb, Cr) scale around grey   0.4, 0.3, 0.2, 0.1, 0.0
``CC``     colour contrast         pixel values × factor               0.85, 0.725, 0.6, 0.475, 0.35
``BW``     block-wise distortion   grey 8-px blocks per 256 px side    16, 32, 48, 64, 80
``GNC``    Gaussian noise          variance on normalised YCbCr        0.001, 0.002, 0.005, 0.01, 0.05
``GB``     Gaussian blur           kernel side (σ = side / 6)          7, 9, 13, 17, 21
``PX``     pixelation              down- then up-scaling factor        2, 3, 4, 5, 6
``JPEG``   JPEG compression        JPEG quality                        90, 70, 50, 30, 10
=========  ======================  ==================================  ===============================

Notes on faithfulness: DeeperForensics perturbs whole videos before face extraction; we perturb the face crops
the model sees (the test images, before resizing and normalisation). Its ``JPEG`` entry is in fact pixelation
(``PX`` here, same factors); its compression type is H.264 video compression (CRF 30–40), which has no
single-image equivalent, so ``JPEG`` uses real JPEG encoding at the qualities above (our choice, spanning the
range deepfake robustness studies report). Its block-wise rule, ``min(h, w) // 256 × param`` blocks of 8 px, puts
no block on images under 256 px; we keep the density it gives a 256-px frame at any size: ``param ×
max(1, min(h, w) // 256)`` blocks of side ``max(1, round(8 · min(h, w) / 256))``. Its noise is added in YCbCr
scaled to studio range, i.e. with a standard deviation of ``√var · 255² / 219`` grey levels on Y and
``√var · 255² / 224`` on Cb and Cr — reproduced here. Random draws (block positions, noise) are seeded from the
image content, so a sweep gives the same numbers in any order, with any number of workers.
"""

from __future__ import annotations

import copy
import csv
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader
from typing_extensions import override

from .data.datamodule import named_loaders
from .metrics import DetectionMetrics

__all__ = ["LEVELS", "PerturbedTransform", "RobustnessSweep", "perturb"]

LEVELS: dict[str, tuple[float, ...]] = {
    "CS": (0.4, 0.3, 0.2, 0.1, 0.0),
    "CC": (0.85, 0.725, 0.6, 0.475, 0.35),
    "BW": (16, 32, 48, 64, 80),
    "GNC": (0.001, 0.002, 0.005, 0.01, 0.05),
    "GB": (7, 9, 13, 17, 21),
    "PX": (2, 3, 4, 5, 6),
    "JPEG": (90, 70, 50, 30, 10),
}
NAMES = {"CS": "colour saturation", "CC": "colour contrast", "BW": "block-wise", "GNC": "Gaussian noise",
         "GB": "Gaussian blur", "PX": "pixelation", "JPEG": "JPEG compression"}


def _saturation(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    ycrcb = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb)  # float: chroma centred on 0.5
    ycrcb[..., 1:] = 0.5 + (ycrcb[..., 1:] - 0.5) * factor
    return _to_uint8(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB) * 255)


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) * factor)


def _blocks(image: np.ndarray, per_256: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(1, round(8 * min(h, w) / 256))
    out = image.copy()
    for _ in range(int(per_256) * max(1, min(h, w) // 256)):
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out[y : y + side, x : x + side] = 128
    return out


def _noise(image: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    ycrcb = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2YCrCb)
    sigma = np.sqrt(variance) * 255**2 / np.array([219, 224, 224], np.float32)  # studio-range scaling, see above
    ycrcb += rng.standard_normal(ycrcb.shape).astype(np.float32) * sigma
    return _to_uint8(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB))


def _blur(image: np.ndarray, side: float, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(image, (int(side), int(side)), side / 6)


def _pixelate(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // int(factor)), max(1, h // int(factor))), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"JPEG encoding at quality {quality} failed for an image of shape {image.shape}")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


_FUNCTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "CS": _saturation, "CC": _contrast, "BW": _blocks, "GNC": _noise, "GB": _blur, "PX": _pixelate, "JPEG": _jpeg}


def perturb(image: np.ndarray, kind: str, level: int, seed: int = 0) -> np.ndarray:
    """One DeeperForensics perturbation of an RGB uint8 image (H×W×3); level 0 returns the image unchanged.

    Args:
        image: the image, RGB uint8.
        kind: ``CS``, ``CC``, ``BW``, ``GNC``, ``GB``, ``PX`` or ``JPEG`` (see the module docstring).
        level: severity, 0 (none) to 5.
        seed: mixed with the image content to seed the random perturbations (``BW``, ``GNC``).
    """
    if kind not in LEVELS:
        raise ValueError(f"perturbation {kind!r} is not one of {sorted(LEVELS)}")
    if not 0 <= level <= len(LEVELS[kind]):
        raise ValueError(f"perturbation level must be in [0, {len(LEVELS[kind])}], got {level}")
    if level == 0:
        return image
    rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
    return _FUNCTIONS[kind](image, LEVELS[kind][level - 1], rng)


class PerturbedTransform:
    """``transform(image=…)`` that perturbs the RGB uint8 image first, then runs the dataset's own transform
    (resize, normalisation): picklable, so it works in loader worker processes."""

    def __init__(self, kind: str, level: int, transform: Callable[..., dict[str, Any]], seed: int = 0) -> None:
        perturb(np.zeros((8, 8, 3), np.uint8), kind, level)  # validate now, not in a worker
        self.kind, self.level, self.transform, self.seed = kind, level, transform, seed

    def __call__(self, image: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        return self.transform(image=perturb(image, self.kind, self.level, self.seed), **kwargs)


class RobustnessSweep(Callback):
    """After ``test``, score every test set again under each perturbation and level; write ``robustness.csv``
    (dataset, type, level, parameter, frame/video AUC) and ``robustness.png`` (AUC vs level per type; also logged
    to W&B) in the log directory.

    The perturbation wraps each test dataset's ``transform`` (its callable ``transform(image=rgb_uint8)``, which
    resizes and normalises), so it acts on the stored crops exactly as the clean test reads them; loaders are
    rebuilt with the test loaders' batch size, workers and sampler (a ``DistributedSampler`` under DDP; metrics
    are synchronised like the clean test's). Level 0 is the clean score. ``python -m masm_lightning test …
    --robustness`` adds this callback.

    Args:
        types: perturbation types (default all seven).
        levels: severity levels (default 1–5); 0 (clean) is always included.
        seed: seed of the random perturbations.
    """

    def __init__(self, types: Sequence[str] | None = None, levels: Sequence[int] = (1, 2, 3, 4, 5),
                 seed: int = 0) -> None:
        self.types = list(types or LEVELS)
        for kind in self.types:
            for level in levels:
                perturb(np.zeros((8, 8, 3), np.uint8), kind, level)  # a bad type or level fails at configuration
        self.levels = sorted({0, *levels})
        self.seed = seed

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # every rank: a collective under DDP
        rows: list[dict[str, Any]] = []
        training = pl_module.training
        pl_module.eval()
        for name, loader in named_loaders(trainer.test_dataloaders, trainer.datamodule):
            if not hasattr(loader.dataset, "transform"):
                raise TypeError(f"test set {name!r}: its dataset ({type(loader.dataset).__name__}) has no "
                                "`transform` attribute to perturb the images through")
            clean = self._score(pl_module, loader, loader.dataset.transform)
            rows.append({"dataset": name, "type": "none", "level": 0, "parameter": "", **clean})
            for kind in self.types:
                for level in self.levels[1:]:
                    transform = PerturbedTransform(kind, level, loader.dataset.transform, self.seed)
                    rows.append({"dataset": name, "type": kind, "level": level,
                                 "parameter": LEVELS[kind][level - 1], **self._score(pl_module, loader, transform)})
                rank_zero_info(f"robustness {name} {kind}: video AUC {clean['video_auc']:.3f} clean, "
                               + ", ".join(f"{r['video_auc']:.3f}" for r in rows[-len(self.levels) + 1:]))
        pl_module.train(training)
        if rows:  # every test set may have been skipped (no usable videos)
            self._write(trainer, rows, folder)

    @staticmethod
    def _score(model: LightningModule, loader: DataLoader, transform: Callable[..., Any]) -> dict[str, float]:
        dataset = copy.copy(loader.dataset)  # shares the records; only the transform differs
        dataset.transform = transform
        # A fresh loader: persistent workers of the clean one would keep the old transform.
        perturbed = DataLoader(dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                               num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                               pin_memory=loader.pin_memory)
        metric = DetectionMetrics(model.hparams.threshold).to(model.device)
        with torch.inference_mode():
            for batch in perturbed:
                batch = {k: v.to(model.device) for k, v in batch.items()}
                metric.update(model.fake_probability(batch["image"]), batch["label"], batch["video"], batch["index"])
        values = metric.compute()  # synchronised across processes under DDP
        return {"frame_auc": float(values["frame_auc"]), "video_auc": float(values["video_auc"]),
                "num_frames": int(values["num_frames"]), "num_videos": int(values["num_videos"])}

    @rank_zero_only
    def _write(self, trainer: Trainer, rows: list[dict[str, Any]], folder: Path) -> None:
        from .plots import robustness_figure  # matplotlib only when a sweep ends

        folder.mkdir(parents=True, exist_ok=True)
        table = folder / "robustness.csv"
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        figure = robustness_figure(rows, {k: NAMES[k] for k in self.types}, folder / "robustness.png")
        rank_zero_info(f"robustness sweep: {table} and {figure}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="test/robustness", images=[str(figure)])
