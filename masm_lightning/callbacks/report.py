"""What a run leaves for people: ``results.md`` and ROC plots after ``test``, and where everything is after ``fit``.

The detector computes and logs metrics; this callback turns them into files in the run folder (:func:`log_dir`)
and into W&B images (:func:`log_image`). The CLI adds it to every ``fit``, ``validate`` and ``test``; from Python,
pass ``RunReport()`` in the trainer's callbacks.

A ``test`` of a checkpoint that sits in a fit's run folder (``<run>/checkpoints/*.ckpt``) also copies that run's
training figures (the selective mask's ``layer_masks.png``) beside its ROC plot, so one folder shows both how the
model was trained and how it tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from ..evaluation.results import results_markdown
from ..io import atomic_path, write_atomic
from .run_folder import log_dir, log_image

__all__ = ["RunReport"]

TRAINING_FIGURES = ("layer_masks.png",)  # written by fit-time callbacks into the run folder


def training_run_folder(ckpt_path: str | Path | None) -> Path | None:
    """The fit run folder a checkpoint was saved in (``<run>/checkpoints/<name>.ckpt``), or None."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" and path.is_file() else None


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


def trainable_parameters(module: LightningModule) -> int:
    """How many parameters training updates (adapters' factors and head for MASM; everything for full FT)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class RunReport(Callback):
    """Writes ``results.md`` and ``roc_<set>.png`` at the end of ``test`` (read from the module's
    ``test_results`` and ``test_metrics``), and prints where the checkpoints, logs and plots of a ``fit`` are."""

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
        from ..evaluation.plots import roc_figure  # matplotlib only when a test actually ends

        metrics = getattr(pl_module, "test_metrics", {})
        for name in results:
            if name in metrics:
                path = roc_figure(metrics[name].curves, title=name, path=folder / f"roc_{name.replace('/', '_')}.png")
                rank_zero_info(f"ROC curves for test set {name!r}: {path}")
                log_image(trainer, f"test/{name}/roc", path)
        threshold = float(pl_module.hparams.get("threshold", 0.5))
        table = results_markdown(
            results, threshold, str(trainer.ckpt_path or ""), trainable=trainable_parameters(pl_module)
        )
        path = write_atomic(folder / "results.md", table)
        rank_zero_info(f"test results table: {path}")
        for copied in copy_training_figures(trainer.ckpt_path, folder):
            rank_zero_info(f"{copied.name} of the training run {training_run_folder(trainer.ckpt_path)}: {copied}")

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
