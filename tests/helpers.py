"""Callbacks the tests plug into real CLI runs (imported by class path from subprocesses)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SaveRankState(Callback):
    """At the end of fit, each rank writes its trained tensors and logged metrics to ``folder/rank<N>.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        metrics = {k: v.detach().cpu().clone() for k, v in trainer.callback_metrics.items()}
        torch.save({"state": state, "metrics": metrics, "world_size": trainer.world_size},
                   self.folder / f"rank{trainer.global_rank}.pt")
