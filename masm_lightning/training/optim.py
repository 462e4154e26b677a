"""The optimizer: MASM's default Adam, and the optimizer (and scheduler) built over the trainable parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from ..performance import fast_adam_options

__all__ = ["MASMAdam", "build_optimizers", "trainable_parameters"]


class MASMAdam(torch.optim.Adam):
    """MASM's default optimizer: Adam, lr 2e-4, no weight decay. Coupled decay on the factors is normalised by
    Adam with the task gradient, so it stalls small task gradients and erases tail values; the decoupled
    constraint step (:func:`~masm_lightning.adapters.apply_constraints`) bounds the factors instead.

    A class (not a function) so that the command line can change one setting of the default,
    ``--model.optimizer.init_args.lr 1e-3``, as LightningCLI's optimizer convention has it; ``class_path:
    torch.optim.AdamW`` etc. replace it. torch's fused kernel where it exists
    (:func:`~masm_lightning.performance.fast_adam_options`; ``fused``/``foreach`` given explicitly win).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        params = list(params)  # read twice: a generator would be empty the second time
        fast = fast_adam_options(params) if fused is None and foreach is None else {"fused": fused, "foreach": foreach}
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, **fast)


def build_optimizers(
    parameters: Iterable[nn.Parameter], optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None
) -> Any:
    """``configure_optimizers``' return value: the optimizer over every trainable parameter, built once (the mask
    callback never edits its groups), with the scheduler when there is one (stepped per epoch)."""
    params = [p for p in parameters if p.requires_grad]
    built = optimizer(params)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": lr_scheduler(built)}


def trainable_parameters(module: nn.Module) -> int:
    """How many parameters training updates (the adapters' factors and the head for MASM; everything for full
    fine-tuning)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
