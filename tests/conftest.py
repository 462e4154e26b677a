"""Shared fixtures: tiny random-init timm ViTs, and a guarantee that nothing reaches the network."""

from __future__ import annotations

import os

# Set before timm / wandb / albumentations are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from tests.helpers import TINY_VIT, TINY_VIT_KWARGS, tiny_args


@pytest.fixture
def make_vit() -> Callable[..., nn.Module]:
    """Build a tiny CLIP-style timm ViT (random init, eval mode); same seed gives the same weights."""

    def build(seed: int = 0, **overrides: object) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(TINY_VIT, pretrained=False, **{**TINY_VIT_KWARGS, **overrides}).eval()

    return build


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint from a one-epoch fit of the tiny config, shared by the inference, export and report tests."""
    from masm_lightning.cli import main

    folder = tmp_path_factory.mktemp("tiny_fit")
    cli = main(["fit", *tiny_args(folder, "--trainer.max_epochs", "1")])
    return Path(cli.trainer.checkpoint_callback.best_model_path)
