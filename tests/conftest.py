"""Shared fixtures: tiny random-init timm ViTs, and a guarantee that nothing reaches the network."""

from __future__ import annotations

import os

# Set before timm / wandb / albumentations are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TINY_VIT = "vit_base_patch16_clip_quickgelu_224"
TINY_VIT_KWARGS = dict(depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=0)


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
    """A checkpoint from a one-epoch fit of configs/tiny.yaml, shared by the inference, export and report tests."""
    from masm_lightning.cli import main
    from tests.test_cli import tiny_args

    folder = tmp_path_factory.mktemp("tiny_fit")
    cli = main(["fit", *tiny_args(folder, "--trainer.max_epochs", "1")])
    return Path(cli.trainer.checkpoint_callback.best_model_path)
