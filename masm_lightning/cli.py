"""Command line: ``python -m masm_lightning {fit,validate,test,predict} --config …`` (LightningCLI)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .data.datamodule import FaceForgeryDataModule
from .model import MASMDetector

__all__ = ["main"]


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests drive it in-process)."""
    return LightningCLI(
        MASMDetector,
        FaceForgeryDataModule,
        subclass_mode_data=True,  # `data: class_path:` picks FaceForgeryDataModule or DemoDataModule
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the model takes its optimizer as an OptimizerCallable
    )
