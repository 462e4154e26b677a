"""A frozen CNN backbone's BatchNorm keeps its pretrained statistics in training (MASMDetector.freeze_norm_stats)."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader

from masm_lightning import MASMConfig
from masm_lightning.training.module import MASMDetector

CNN = dict(backbone="mobilenetv2_050")
ADAPTERS = MASMConfig(num_subspaces=1, subspace_rank=2, targets=("conv_pw", "conv_pwl"))


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    # Far from the N(0, 1) statistics of a fresh BatchNorm, so any update shows.
    return [
        {
            "image": 3 + 2 * torch.randn(4, 3, 32, 32, generator=g),
            "label": torch.tensor([0, 1, 0, 1]),
            "video": torch.arange(4),
            "index": torch.arange(4),
        }
        for _ in range(n)
    ]


def _statistics(model: MASMDetector) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def _fit_two_steps(model: MASMDetector) -> None:
    """Two training steps with a validation run between them (whose mode switching must not unfreeze anything)."""
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():  # Lightning's advice on worker counts and small datasets is not ours to fix
        warnings.simplefilter("ignore")
        trainer.fit(model, DataLoader(_batches(), batch_size=None), DataLoader(_batches(1), batch_size=None))


def _detector(**overrides: object) -> MASMDetector:
    model = MASMDetector(**{**CNN, "adapters": ADAPTERS, **overrides})
    with pytest.warns(UserWarning, match="starts from random weights"):
        model.configure_model()
    return model


SETTINGS = {
    "masm_default": (dict(), False),
    "linear_probe_default": (dict(adapters=None), False),
    "masm_stats_on": (dict(freeze_norm_stats=False), True),
    "linear_probe_stats_on": (dict(adapters=None, freeze_norm_stats=False), True),
    "full_finetuning": (dict(adapters=None, freeze_backbone=False), True),  # trains BatchNorm like any layer
}


@pytest.mark.parametrize(("overrides", "updated"), SETTINGS.values(), ids=SETTINGS.keys())
def test_batchnorm_statistics_follow_freeze_norm_stats(overrides, updated):
    model = _detector(**overrides)
    before = _statistics(model)
    assert before
    _fit_two_steps(model)
    after = _statistics(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if updated:
        assert len(changed) == len(before)
    else:
        assert changed == []
        norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and not any(m.training for m in norms) and model.head.training is model.training


def test_updated_statistics_are_saved_and_frozen_ones_are_not():
    frozen, updating = _detector(), _detector(freeze_norm_stats=False)
    assert not any("running_" in k for k in frozen.state_dict())
    saved = updating.state_dict()
    assert any(k.endswith("running_mean") for k in saved) and any(k.endswith(".U") for k in saved)
