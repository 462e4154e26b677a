"""The checkpoint policy of every ``fit``: ``best.ckpt`` (lean) and ``last.ckpt`` (full) in the run's folder."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ["BestCheckpoint", "run_checkpoints"]


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` of the best validation score that saves nothing when the run has no validation batches
    (an empty or switched-off validation split, which the data module reports): with no score there is nothing to
    select on, and Lightning's would save at every epoch end with a warning that the monitored key is missing."""

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if sum(trainer.num_val_batches) == 0:  # validation set up with no batches, or never set up
            return
        super().on_train_epoch_end(trainer, pl_module)


def run_checkpoints(monitor: str, mode: str) -> list[ModelCheckpoint]:
    """The checkpoint policy of every ``fit``, both files in the run's versioned folder
    (``<default_root_dir>/<logger name>/version_N/checkpoints``), so a second run never overwrites the first.

    - ``best.ckpt``: the best ``monitor`` value on the validation split, **lean**: the trained tensors, the
      hyper-parameters, the base's identity and fingerprint and the data module's state (face-crop settings):
      what ``test``, ``detect`` and ``export`` need, without optimizer, scheduler, loop or callback state.
    - ``last.ckpt``: the full training state after the last completed epoch, or after the run's last step when it
      stops mid-epoch (``max_steps``), for resuming. Written at the end of every training epoch
      (``save_on_train_epoch_end``), not at validation: the file never lags when validation runs less than once an
      epoch (``check_val_every_n_epoch``) or is skipped.
    """
    best = BestCheckpoint(
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_weights_only=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return [best, last]
