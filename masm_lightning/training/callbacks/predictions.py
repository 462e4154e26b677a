"""Per-video predictions of the ``predict`` subcommand, written as ``predictions.csv`` in the log directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from ...evaluation.loaders import named_loaders
from ...evaluation.metrics import DetectionMetrics
from ...io import write_csv
from ..run_folder import log_dir

__all__ = ["VideoPredictionWriter"]

FIELDS = ("set", "dataset", "video_id", "label", "score", "decision", "frames")


class VideoPredictionWriter(Callback):
    """Aggregates ``predict_step`` outputs (``prob``, ``label``, ``video``, ``index``) into one record per video —
    the same fields ``detect`` writes: video key, score (mean frame fake probability), decision at the model's
    threshold, frames — and writes ``<log_dir>/predictions.csv`` (``python -m masm_lightning predict`` adds it).

    Video keys come from each predict dataset's ``videos`` (sorted ``(dataset, label, video_id)``, indexed by the
    batch's ``video``); under DDP the outputs are gathered and the sampler's padding counted once, as in testing.

    Args:
        filename: the CSV's name in the log directory.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        self.filename = filename
        self.metrics: list[DetectionMetrics] = []

    @override
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.metrics = []

    @override
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        while len(self.metrics) <= dataloader_idx:
            self.metrics.append(DetectionMetrics(pl_module.hparams["threshold"]).to(pl_module.device))
        self.metrics[dataloader_idx].update(outputs["prob"], outputs["label"], outputs["video"], outputs["index"])

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank: a collective under DDP
        threshold = pl_module.hparams["threshold"]
        records: list[dict[str, Any]] = []
        # Trainer.datamodule is set by Lightning's data connector, outside Trainer's annotations.
        loaders = named_loaders(trainer.predict_dataloaders, trainer.datamodule)  # type: ignore[attr-defined]
        for (name, loader), metric in zip(loaders, self.metrics):
            metric.compute()  # gathers every rank's outputs
            probs, _ = metric.curves["video"]
            dataset = loader.dataset
            if not hasattr(dataset, "videos"):
                raise TypeError(
                    f"prediction set {name!r}: its dataset ({type(dataset).__name__}) has no `videos` "
                    "(the video keys the per-video scores are written under)"
                )
            videos = dataset.videos
            for key, prob, frames in zip(metric.video_keys.tolist(), probs.tolist(), metric.video_frames.tolist()):
                dataset, label, video_id = videos[key]
                records.append(
                    {
                        "set": name,
                        "dataset": dataset,
                        "video_id": video_id,
                        "label": label,
                        "score": round(prob, 6),
                        "decision": "fake" if prob >= threshold else "real",
                        "frames": frames,
                    }
                )
        self._write(records, folder / self.filename)

    @rank_zero_only
    def _write(self, records: list[dict[str, Any]], path: Path) -> None:
        write_csv(path, records, FIELDS)
        rank_zero_info(f"per-video predictions ({len(records)} videos): {path}")
