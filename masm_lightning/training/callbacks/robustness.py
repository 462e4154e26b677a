"""Robustness sweep: after ``test``, every test set re-scored under the DeeperForensics-1.0 perturbations
(:mod:`masm_lightning.evaluation.perturbations`) at 5 severity levels."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from ...data.batch import has_images
from ...evaluation.loaders import named_loaders
from ...evaluation.metrics import DetectionMetrics
from ...evaluation.perturbations import LEVELS, NAMES, PerturbedTransform, perturb
from ...io import write_csv
from ..run_folder import log_dir, log_image

__all__ = ["RobustnessSweep"]


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

    def __init__(
        self, types: Sequence[str] | None = None, levels: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0
    ) -> None:
        self.types = list(types or LEVELS)
        for kind in self.types:
            for level in levels:
                perturb(np.zeros((8, 8, 3), np.uint8), kind, level)  # a bad type or level fails at configuration
        self.levels = sorted({0, *levels})
        self.seed = seed

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank: a collective under DDP
        rows: list[dict[str, Any]] = []
        training = pl_module.training
        pl_module.eval()
        # Trainer.datamodule is set by Lightning's data connector, outside Trainer's annotations.
        for name, loader in named_loaders(trainer.test_dataloaders, trainer.datamodule):  # type: ignore[attr-defined]
            dataset = loader.dataset
            if not hasattr(dataset, "transform"):
                raise TypeError(
                    f"test set {name!r}: its dataset ({type(dataset).__name__}) has no "
                    "`transform` attribute to perturb the images through"
                )
            clean = self._score(pl_module, loader, dataset.transform)
            rows.append({"dataset": name, "type": "none", "level": 0, "parameter": "", **clean})
            for kind in self.types:
                for level in self.levels[1:]:
                    transform = PerturbedTransform(kind, level, dataset.transform, self.seed)
                    rows.append(
                        {
                            "dataset": name,
                            "type": kind,
                            "level": level,
                            "parameter": LEVELS[kind][level - 1],
                            **self._score(pl_module, loader, transform),
                        }
                    )
                rank_zero_info(
                    f"robustness {name} {kind}: video AUC {clean['video_auc']:.3f} clean, "
                    + ", ".join(f"{r['video_auc']:.3f}" for r in rows[-len(self.levels) + 1 :])
                )
        pl_module.train(training)
        if rows:  # every test set may have been skipped (no usable videos)
            self._write(trainer, rows, folder)

    @staticmethod
    def _score(model: LightningModule, loader: DataLoader, transform: Callable[..., Any]) -> dict[str, float]:
        dataset = copy.copy(loader.dataset)  # shares the records; only the transform differs
        assert hasattr(dataset, "transform"), "on_test_end checks every test set has one"
        dataset.transform = transform
        # A fresh loader: persistent workers of the clean one would keep the old transform.
        perturbed = DataLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
        metric = DetectionMetrics(model.hparams["threshold"]).to(model.device)
        # nn.Module.__getattr__ types every attribute as Tensor | Module; the detector's is a method.
        fake_probability = cast(Callable[[Tensor], Tensor], model.fake_probability)
        with torch.inference_mode():
            for batch in perturbed:
                if not has_images(batch):
                    continue
                batch = {k: v.to(model.device) for k, v in batch.items()}
                metric.update(fake_probability(batch["image"]), batch["label"], batch["video"], batch["index"])
        values = metric.compute()  # synchronised across processes under DDP
        return {
            "frame_auc": float(values["frame_auc"]),
            "video_auc": float(values["video_auc"]),
            "num_frames": int(values["num_frames"]),
            "num_videos": int(values["num_videos"]),
        }

    @rank_zero_only
    def _write(self, trainer: Trainer, rows: list[dict[str, Any]], folder: Path) -> None:
        from ...evaluation.plots import robustness_figure  # matplotlib only when a sweep ends

        table = write_csv(folder / "robustness.csv", rows, list(rows[0]))
        figure = robustness_figure(rows, {k: NAMES[k] for k in self.types}, folder / "robustness.png")
        rank_zero_info(f"robustness sweep: {table} and {figure}")
        log_image(trainer, "test/robustness", figure)
