"""The run's folder and its images: where every callback writes, and how figures reach the loggers.

One definition of "the run folder" for everything that writes files during fit/test/predict (results tables, ROC
plots, the mask trace and heatmap, predictions, the robustness sweep): the first logger's versioned folder, the one
its checkpoints go to (``<default_root_dir>/<name>/version_N`` for the CSV logger, ``<save_dir>/<project>/<run id>``
for W&B), else ``default_root_dir``; and the one way back from a checkpoint to the fit run folder it was saved in
(:func:`training_run_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from typing_extensions import override

__all__ = ["RunFolderConfig", "log_dir", "log_image", "training_run_folder"]


def log_dir(trainer: Trainer) -> Path:
    """The run folder. Call it on every rank: under DDP it is a collective (a broadcast from rank 0).

    Lightning's ``trainer.log_dir`` is versioned for the CSV and TensorBoard loggers only; for any other logger
    (W&B) it is the logger's ``save_dir``, which every run shares. The folder is then built as Lightning's
    ``ModelCheckpoint`` builds the checkpoints' parent, so a run's files sit beside its checkpoints.
    """
    folder = trainer.log_dir  # a collective: every rank calls it
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None or isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(folder or trainer.default_root_dir)
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    path = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    return Path(trainer.strategy.broadcast(path))


class RunFolderConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml``, written into the run folder (:func:`log_dir`) — for W&B runs too, whose
    ``trainer.log_dir`` is the folder every run shares."""

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.already_saved:
            folder = log_dir(trainer)  # every rank: a collective
            if trainer.is_global_zero:
                folder.mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config,
                    str(folder / self.config_filename),
                    skip_none=False,
                    overwrite=self.overwrite,
                    multifile=self.multifile,
                )
            self.save_to_log_dir = False  # written above; Lightning's setup keeps its bookkeeping
        super().setup(trainer, pl_module, stage)


def log_image(trainer: Trainer, key: str, path: str | Path) -> None:
    """Send a saved figure to the loggers that show images (W&B); the file itself is already in the run folder."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)])


def training_run_folder(ckpt_path: str | Path | None) -> Path | None:
    """The fit run folder a checkpoint file was saved in (``<run>/checkpoints/<name>.ckpt``), or None (no path, not
    a file, or not in a ``checkpoints`` folder)."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" and path.is_file() else None
