"""The backbone: checking its name, building it (timm pretrained, a local weights file, or a seeded random init),
its input settings, the fingerprint of its frozen weights, its head, and its BatchNorm statistics."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ..errors import InputNotFoundError, InvalidInputError
from .weights import create_from_foreign_checkpoint, resolve_weights_path

__all__ = [
    "STAT_NORMS",
    "check_backbone_name",
    "create_backbone",
    "create_head",
    "data_config",
    "freeze_norm_statistics",
    "norm_statistic_keys",
    "weights_fingerprint",
]

# Layers with running statistics (timm's BatchNormAct2d subclasses BatchNorm2d; SyncBatchNorm under DDP).
STAT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def check_backbone_name(name: str) -> None:
    """Refuse a ``model.backbone`` that timm does not know (``hf-hub:`` names are resolved by timm later).

    Raises:
        InvalidInputError: naming the value and the closest timm names.
    """
    source, model_name = timm.models.parse_model_name(name)
    if source is not None:  # hf-hub / local-dir: timm reads the model's config from there
        return
    architecture, _ = timm.models.split_model_name_tag(model_name)
    if timm.is_model(architecture):
        return
    close = difflib.get_close_matches(architecture, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InvalidInputError(
        f"model.backbone {name!r} is not a timm model{hint} (`timm.list_models('*clip*')` lists the names)"
    )


def weights_fingerprint(module: nn.Module, samples: int = 64) -> str:
    """A device-independent hash of a module's weights: names, shapes, dtypes and evenly spaced exact values.

    Reading sampled elements (not sums) keeps it identical on CPU and GPU, and cheap for a ViT-L.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        picks = torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).long().to(flat.device)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[picks].double().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_config(name: str, kwargs: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """Input size, mean, std and interpolation the backbone expects; the data module follows it."""
    cfg = timm.models.get_pretrained_cfg(name)
    size = kwargs.get("img_size", image_size or (cfg.input_size[-1] if cfg else 224))
    return {
        "image_size": size if isinstance(size, int) else size[-1],
        "mean": tuple(cfg.mean) if cfg else timm.data.OPENAI_CLIP_MEAN,
        "std": tuple(cfg.std) if cfg else timm.data.OPENAI_CLIP_STD,
        "interpolation": cfg.interpolation if cfg else "bicubic",
    }


def create_backbone(
    name: str, backbone_kwargs: dict[str, Any], pretrained: bool | None, checkpoint_path: str | None, seed: int
) -> nn.Module:
    """The timm backbone without its classifier (``num_classes=0``): weights from ``checkpoint_path`` (a local file,
    timm or another library's layout), timm's pretrained weights, or a random init drawn from ``seed``."""
    kwargs = {**backbone_kwargs, "num_classes": 0}
    path = checkpoint_path
    if path is not None:
        path = resolve_weights_path(path)  # `package://<module>/<file>`: weights a pip package installed
        if not Path(path).is_file():
            raise InputNotFoundError(f"model.checkpoint_path {path!r} is not a file")
        foreign = create_from_foreign_checkpoint(name, path, **kwargs)
        if foreign is not None:  # torchvision MobileNetV2 / lukemelas EfficientNet keys, mapped in weights.py
            return foreign
        # timm reads the file with weights_only=True, converts OpenAI/open_clip `visual.*` keys through the
        # model's checkpoint filter, and drops the file's projection head (its num_classes differs from ours).
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    if pretrained is None:
        rank_zero_warn(
            f"MASMDetector: backbone {name!r} starts from random weights (neither "
            "model.pretrained nor model.checkpoint_path is set): fine for tests and demos, useless "
            "for real detection; set model.pretrained: false to say so and silence this"
        )
    if pretrained:
        return timm.create_model(name, pretrained=True, **kwargs)
    # Drawn on the CPU from a forked RNG: the same weights whichever device trains (Lightning may make the
    # GPU the default device here), and the training RNG streams are left untouched.
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())), torch.device("cpu"):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, **kwargs)


def create_head(backbone: nn.Module, name: str) -> nn.Linear:
    """The binary (real, fake) head on the backbone's pre-logits."""
    num_features = getattr(backbone, "num_features", None)  # timm's pre-logits width
    if not isinstance(num_features, int):
        raise InvalidInputError(
            f"model.backbone {name!r} has no integer num_features (got "
            f"{num_features!r}): MASMDetector needs a timm model"
        )
    return nn.Linear(num_features, 2)


def freeze_norm_statistics(backbone: nn.Module) -> None:
    """Every BatchNorm layer in eval mode: the pretrained running mean/var normalise each batch and stay as they are."""
    for module in backbone.modules():
        if isinstance(module, STAT_NORMS):
            module.eval()


def norm_statistic_keys(backbone: nn.Module, prefix: str = "backbone.") -> Iterator[str]:
    """The state-dict keys of the backbone's BatchNorm statistics (running mean/var, batch counts)."""
    for name, module in backbone.named_modules():
        if isinstance(module, STAT_NORMS):
            for buffer, _ in module.named_buffers(recurse=False):
                yield f"{prefix}{name}.{buffer}"
