"""Callbacks the tests plug into real CLI runs (imported by class path from subprocesses)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SaveRankState(Callback):
    """At the end of fit, each rank writes every parameter and buffer, its logged metrics and the training samples
    it saw per epoch to ``folder/rank<N>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

        self.samples: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int) -> None:
        self.samples.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}  # frozen parts too
        state = {k: v.detach().cpu().clone() for k, v in tensors.items()}
        metrics = {k: v.detach().cpu().clone() for k, v in trainer.callback_metrics.items()}
        masks = [c.state_dict() for c in trainer.callbacks if type(c).__name__ == "SelectiveLayerMask"]
        torch.save({"state": state, "metrics": metrics, "world_size": trainer.world_size, "masks": masks,
                    "samples": self.samples},
                   self.folder / f"rank{trainer.global_rank}.pt")
