"""What a run leaves for people: ``results.md`` and ROC plots after ``test``, and where everything is after ``fit``.

The detector computes and logs metrics; this callback turns them into files in the run folder (:func:`log_dir`)
and into W&B images (:func:`log_image`). The CLI adds it to every ``fit``, ``validate`` and ``test``; from Python,
pass ``RunReport()`` in the trainer's callbacks.

A ``test`` of a checkpoint that sits in a fit's run folder (``<run>/checkpoints/*.ckpt``) also copies that run's
training figures (the selective mask's ``layer_masks.png``) beside its ROC plot, so one folder shows both how the
model was trained and how it tests.

It also keeps the record of frames that could not be read (the batches' ``unreadable`` indices, see
:func:`~masm_lightning.data.datamodule.collate_frames`): per stage and set, a warning with the count and the first
paths at the end of each epoch, and a status line per test set in ``results.md``. The run goes on without them.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from typing_extensions import override

from ...evaluation.loaders import named_loaders
from ...evaluation.metrics import auc_by_type
from ...evaluation.results import results_markdown
from ...io import atomic_path, write_atomic
from ..optim import trainable_parameters
from ..run_folder import log_dir, log_image, training_run_folder

__all__ = ["RunReport"]

TRAINING_FIGURES = ("layer_masks.png",)  # written by fit-time callbacks into the run folder


def copy_training_figures(ckpt_path: str | Path | None, folder: str | Path) -> list[Path]:
    """Copy the training run's figures (:data:`TRAINING_FIGURES`) of the checkpoint into ``folder``; the copies."""
    run, folder = training_run_folder(ckpt_path), Path(folder)
    if run is None or run.resolve() == folder.resolve():
        return []
    copies = []
    for name in TRAINING_FIGURES:
        if (run / name).is_file():
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(run / name, tmp)
            copies.append(folder / name)
    return copies


UNREADABLE_EXAMPLES = 3  # paths named in the warning


class RunReport(Callback):
    """Writes ``results.md`` and ``roc_<set>.png`` at the end of ``test`` (read from the module's
    ``test_results`` and ``test_metrics``), prints where the checkpoints, logs and plots of a ``fit`` are, and
    records unreadable frames (count and examples per set, in the log and ``results.md``).

    Attributes:
        unreadable: after each epoch, (stage, set name) → number of frames that could not be read (all ranks).
    """

    def __init__(self) -> None:
        self.unreadable: dict[tuple[str, str], int] = {}
        self._seen: dict[tuple[str, str], list[Path]] = defaultdict(list)

    @staticmethod
    def _loaders(trainer: Trainer, stage: str) -> list[tuple[str, Any]]:
        """The stage's (set name, loader) pairs: the test sets by name; training and validation as one set."""
        if stage == "test":
            # Trainer.datamodule is set by Lightning's data connector, outside Trainer's annotations.
            return named_loaders(trainer.test_dataloaders, trainer.datamodule)  # type: ignore[attr-defined]
        loaders = trainer.train_dataloader if stage == "train" else trainer.val_dataloaders
        return [(stage, loader) for loader in (loaders if isinstance(loaders, (list, tuple)) else [loaders])]

    def _count(self, trainer: Trainer, stage: str, batch: Any, dataloader_idx: int) -> None:
        failed = batch.get("unreadable") if isinstance(batch, dict) else None
        if failed is None or not len(failed):
            return
        named = self._loaders(trainer, stage)
        name, loader = named[dataloader_idx] if dataloader_idx < len(named) else (stage, None)
        records = getattr(getattr(loader, "dataset", None), "records", None)
        self._seen[(stage, name)] += [
            Path(records[i].path) if records is not None else Path(f"<item {i}>") for i in failed.tolist()
        ]

    def _close(self, trainer: Trainer, stage: str) -> None:
        """Sum the stage's counts over ranks (a collective: every rank calls it, for the same set names), warn
        and keep them in :attr:`unreadable`."""
        for name in dict.fromkeys(n for n, _ in self._loaders(trainer, stage)):
            paths = self._seen.pop((stage, name), [])
            count = torch.tensor(float(len(paths)), device=trainer.strategy.root_device)
            total = int(trainer.strategy.reduce(count, reduce_op="sum").item())
            if total:
                self.unreadable[(stage, name)] = total
                examples = ", ".join(str(p) for p in paths[:UNREADABLE_EXAMPLES]) or "read on another process"
                rank_zero_warn(
                    f"{stage} set {name!r}: {total} frame(s) could not be read and were left out "
                    f"(e.g. {examples}); the run went on without them"
                )

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._count(trainer, "train", batch, 0)

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._count(trainer, "val", batch, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._count(trainer, "test", batch, dataloader_idx)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(trainer, "train")

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:  # the sanity batches are read again by the first real validation
            self._seen.pop(("val", "val"), None)
        else:
            self._close(trainer, "val")

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(trainer, "test")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank: a collective under DDP
        results: dict[str, dict[str, float]] = getattr(pl_module, "test_results", {})
        if results:
            self._write_test_report(trainer, pl_module, results, folder)

    @rank_zero_only
    def _write_test_report(
        self, trainer: Trainer, pl_module: LightningModule, results: dict[str, dict[str, float]], folder: Path
    ) -> None:
        from ...evaluation.plots import roc_figure  # matplotlib only when a test actually ends

        metrics = getattr(pl_module, "test_metrics", {})
        for name in results:
            if name in metrics:
                path = roc_figure(metrics[name].curves, title=name, path=folder / f"roc_{name.replace('/', '_')}.png")
                rank_zero_info(f"ROC curves for test set {name!r}: {path}")
                log_image(trainer, f"test/{name}/roc", path)
        threshold = float(pl_module.hparams.get("threshold", 0.5))
        unreadable = {name: count for (stage, name), count in self.unreadable.items() if stage == "test"}
        table = results_markdown(
            results,
            threshold,
            str(trainer.ckpt_path or ""),
            trainable=trainable_parameters(pl_module),
            unreadable=unreadable,
            by_type=self._by_type(trainer, pl_module, results),
        )
        path = write_atomic(folder / "results.md", table)
        rank_zero_info(f"test results table: {path}")
        for copied in copy_training_figures(trainer.ckpt_path, folder):
            rank_zero_info(f"{copied.name} of the training run {training_run_folder(trainer.ckpt_path)}: {copied}")

    def _by_type(
        self, trainer: Trainer, pl_module: LightningModule, results: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, tuple[float, int, bool]]]:
        """Per test set and forgery type: (video AUC against all reals, fake videos, held out of training), from
        the synchronised video scores and the test dataset's per-video types."""
        metrics = getattr(pl_module, "test_metrics", {})
        vocabulary = tuple(getattr(pl_module, "forgery_types", ()))
        trained = getattr(getattr(trainer, "datamodule", None), "trained_forgery_types", None)
        out: dict[str, dict[str, tuple[float, int, bool]]] = {}
        for name, loader in self._loaders(trainer, "test"):
            video_types = getattr(getattr(loader, "dataset", None), "video_types", None)
            if name not in results or name not in metrics or video_types is None or "video" not in metrics[name].curves:
                continue
            probs, labels = metrics[name].curves["video"]
            types = torch.tensor(video_types, device=labels.device)[metrics[name].video_keys.long()]
            out[name] = {
                (vocabulary[t] if t < len(vocabulary) else f"type_{t}"): (
                    auc,
                    count,
                    trained is not None and vocabulary[t] not in trained if t < len(vocabulary) else False,
                )
                for t, (auc, count) in auc_by_type(probs, labels, types).items()
            }
        return out

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank: a collective under DDP
        self._print_run_files(trainer, folder)

    @rank_zero_only
    def _print_run_files(self, trainer: Trainer, folder: Path) -> None:
        lines = [f"run folder: {folder}"]
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            path = callback.best_model_path  # the monitor-less one keeps its latest save there
            if path:
                what = f"best {callback.monitor}" if callback.monitor else "last state (resume from it)"
                lines.append(f"  checkpoint ({what}): {path}")
        for pattern in ("metrics.csv", "*.png", "*.jsonl", "config.yaml"):
            lines += [f"  {file.name}: {file}" for file in sorted(Path(folder).glob(pattern))]
        rank_zero_info("\n".join(lines))
