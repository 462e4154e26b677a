"""What several test modules share: the test-only tiny config, tiny-model settings, and callbacks the tests plug
into real CLI runs (imported by class path from subprocesses)."""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path
from unittest import mock

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "tests" / "conf" / "tiny.yaml")
TINY_VIT = "vit_base_patch16_clip_quickgelu_224"
TINY_VIT_KWARGS = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=0)


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    """CLI arguments of the tiny config with every output (runs, demo data) inside ``tmp_path``."""
    return [
        "--config",
        TINY_CONFIG,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.init_args.root",
        str(tmp_path / "demo_data"),
        *extra,
    ]


def run_masm(*argv: str) -> object:
    """Run the installed ``masm`` console script in this process, as the shell would run it, and return its exit
    code (``None`` or ``0``: success). The script file itself is executed: what it calls and what it passes to
    ``sys.exit`` are the installed command's own, without paying a fresh interpreter's imports."""
    script = Path(sys.executable).with_name("masm")
    assert script.is_file(), f"`make install` puts the masm command beside {sys.executable}"
    with mock.patch.object(sys, "argv", [str(script), *argv]):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as done:
            return done.code
    raise AssertionError("the masm script returned without calling sys.exit")


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
        torch.save(
            {
                "state": state,
                "metrics": metrics,
                "world_size": trainer.world_size,
                "masks": masks,
                "samples": self.samples,
            },
            self.folder / f"rank{trainer.global_rank}.pt",
        )


class KillAtStep(Callback):
    """Kills its own process with SIGKILL once ``step`` optimizer steps are done: a preempted job, no clean-up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: dict, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
