"""Command line: ``python -m masm_lightning {fit,validate,test,predict} --config …`` (LightningCLI)."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from .data.datamodule import FaceForgeryDataModule
from .model import MASMDetector

__all__ = ["MASMCLI", "main"]


class MASMCLI(LightningCLI):
    """LightningCLI whose configuration errors end like parse errors: a message and a non-zero exit.

    The data module's resize/normalisation is linked from the model's backbone (``model.data_config``), so the
    two cannot disagree.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.data_config", "data.init_args.input_config", apply_on="instantiate")

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # a value our classes reject in __init__/__post_init__
            self.parser.error(str(error))


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests drive it in-process).

    ``preprocess`` (face extraction) is a plain jsonargparse command; the rest are LightningCLI subcommands.
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["preprocess"]:
        from .data.preprocess import main as preprocess

        preprocess(argv[1:])
        return None
    return MASMCLI(
        MASMDetector,
        FaceForgeryDataModule,
        subclass_mode_data=True,  # `data: class_path:` picks FaceForgeryDataModule or DemoDataModule
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the model takes its optimizer as an OptimizerCallable
    )
