"""Command line: ``python -m masm_lightning {fit,validate,test,predict} --config …`` (LightningCLI)."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from .data.datamodule import FaceForgeryDataModule
from .model import MASMDetector

__all__ = ["MASMCLI", "main"]


class MASMCLI(LightningCLI):
    """LightningCLI whose configuration errors end like parse errors: a message and a non-zero exit.

    The data module's resize/normalisation is linked from the model's backbone (``model.data_config``), so the
    two cannot disagree.

    ``predict`` always writes per-video records (:class:`~masm_lightning.callbacks.VideoPredictionWriter`);
    ``robustness=True`` (``test --robustness``) adds a :class:`~masm_lightning.robustness.RobustnessSweep`.
    """

    def __init__(self, *args: Any, robustness: bool = False, **kwargs: Any) -> None:
        self.robustness = robustness  # set first: LightningCLI runs the subcommand inside __init__
        super().__init__(*args, **kwargs)

    def _add_callback(self, kind: type[Callback]) -> None:
        if not any(isinstance(c, kind) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(kind())

    def before_test(self) -> None:
        if self.robustness:
            from .robustness import RobustnessSweep

            self._add_callback(RobustnessSweep)

    def before_predict(self) -> None:
        from .callbacks import VideoPredictionWriter

        self._add_callback(VideoPredictionWriter)

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

    ``preprocess`` (face extraction), ``detect`` (score videos and images) and ``export`` (plain timm weights)
    are plain commands; the rest are LightningCLI subcommands, ``test`` with an extra ``--robustness`` flag.
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["preprocess"]:
        from .data.preprocess import main as preprocess

        preprocess(argv[1:])
        return None
    if argv[:1] == ["detect"]:
        from .inference import main as detect

        detect(argv[1:])
        return None
    if argv[:1] == ["export"]:
        from .export import main as export

        export(argv[1:])
        return None
    robustness = argv[:1] == ["test"] and "--robustness" in argv
    if robustness:  # a flag of ours, not LightningCLI's: take it out of what LightningCLI parses
        argv = [a for a in argv if a != "--robustness"]
        if args is None:
            sys.argv[1:] = argv
        else:
            args = argv
    return MASMCLI(
        MASMDetector,
        FaceForgeryDataModule,
        robustness=robustness,
        subclass_mode_data=True,  # `data: class_path:` picks FaceForgeryDataModule or DemoDataModule
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the model takes its optimizer as an OptimizerCallable
    )
