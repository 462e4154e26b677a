"""Pointwise-convolution adapters on random-init timm CNNs: the contract that tests/adapters/test_inject.py checks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import timm
import torch
from timm.layers import StdConv2d
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from masm_lightning.adapters import (
    TARGET_PRESETS,
    MASMConfig,
    MASMConv2d,
    MASMLinear,
    apply_constraints,
    constraint_metrics,
    family_targets,
    inject_adapters,
    iter_adapters,
    merge_adapters,
    select_targets,
    unload_adapters,
)


def _small_resnet() -> nn.Module:
    """A ResNet-50 with one bottleneck per stage: the same layer names and shapes as resnet50, 4x faster."""
    return ResNet(block=Bottleneck, layers=(1, 1, 1, 1), num_classes=0)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]  # a fresh random-init model (same architecture every call)
    targets: tuple[str, ...]
    kinds: frozenset[type] = field(default_factory=lambda: frozenset({MASMConv2d}))
    blocks: tuple[int, ...] | None = None

    def config(self) -> MASMConfig:
        return MASMConfig(num_subspaces=2, subspace_rank=2, targets=self.targets, blocks=self.blocks)


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


CASES = {
    "mobilenetv2": Case(_timm("mobilenetv2_100"), family_targets("mobilenetv2")),
    "efficientnet_lite0": Case(_timm("efficientnet_lite0"), family_targets("efficientnet")),
    # The stride-2 1x1 shortcut convolutions too, so a strided pointwise conv is covered on a real model.
    "resnet_bottleneck": Case(_small_resnet, (*family_targets("resnet"), "downsample.0")),
    "convnext_conv_mlp": Case(_timm("convnext_atto"), family_targets("convnext")),  # 1x1 Conv2d MLP
    "convnext_linear_mlp": Case(
        _timm("convnext_atto", conv_mlp=False), family_targets("convnext"), frozenset({MASMLinear})
    ),
}
# The DeepfakeBench backbones (17-25M parameters): the Xceptions' entry and exit flows only (with their stride-2 1x1
# shortcuts), as the 728-channel middle flow repeats the same layer and costs most of the SVD time;
# test_preset_targets_resolve_on_the_large_backbones covers the full presets.
SLOW_CASES = {
    "tf_efficientnet_b4": Case(_timm("tf_efficientnet_b4"), family_targets("efficientnet")),
    "legacy_xception": Case(
        _timm("legacy_xception"),
        ("block1.*pointwise", "block1.skip", "block12.*pointwise", "block12.skip", "conv4.pointwise"),
    ),
    "xception41": Case(_timm("xception41"), (*family_targets("xception"), "shortcut.conv"), blocks=(0, 1, 11)),
}
ALL_CASES = {**CASES, **{k: pytest.param(v, marks=pytest.mark.slow) for k, v in SLOW_CASES.items()}}
CONFIG = dict(num_subspaces=2, subspace_rank=2)  # for the tests below that build their own configuration


@pytest.fixture(scope="module")
def built() -> Callable[[Case], nn.Module]:
    """One random-init model per case (seed 0), deep-copied by each test: SVDs dominate, not construction."""
    cache: dict[str, nn.Module] = {}

    def get(case: Case) -> nn.Module:
        key = f"{case.build}"
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = case.build().eval()
        return copy.deepcopy(cache[key])

    return get


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


def _train(model: nn.Module, images: torch.Tensor, steps: int = 3) -> None:
    """AdamW steps that move every factor. The model stays in eval mode: a frozen backbone's BatchNorm keeps its
    statistics (MASMDetector's default), so only the adapters change."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        loss = model(images).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        apply_constraints(model, optimizer)


@pytest.mark.parametrize("case", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_cnn_injection_is_exact_and_wraps_the_expected_kinds(built, images, case):
    original, wrapped = built(case), built(case)
    names = inject_adapters(wrapped, case.config())
    adapters = dict(iter_adapters(wrapped))
    assert list(adapters) == names and names
    assert {type(a) for a in adapters.values()} == case.kinds
    with torch.no_grad():
        assert _relative(wrapped(images), original(images)) < 1e-5


@pytest.mark.parametrize("case", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_cnn_backward_forms_no_dense_weight_gradient(built, images, case):
    model = built(case)
    inject_adapters(model, case.config())
    model(images).sum().backward()
    factors = {id(p) for _, a in iter_adapters(model) for sub in a.subspaces for p in sub.factors()}
    for name, p in model.named_parameters():
        if id(p) in factors:
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, f"{name} is frozen and must get no gradient"


@pytest.mark.parametrize("case", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_cnn_merged_model_equals_trained_and_loads_strictly_into_fresh_model(built, images, case):
    model = built(case)
    inject_adapters(model, case.config())
    _train(model, images)
    with torch.no_grad():
        trained = model(images)
    merged = merge_adapters(model)
    assert not list(iter_adapters(merged))
    fresh = case.build().eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        assert _relative(fresh(images), trained) < 1e-4
        assert _relative(merged(images), trained) < 1e-4


@pytest.mark.parametrize("case", ALL_CASES.values(), ids=ALL_CASES.keys())
def test_cnn_unload_restores_the_original_model(built, images, case):
    original, model = built(case), built(case)
    names = inject_adapters(model, case.config())
    _train(model, images)
    unload_adapters(model)
    restored, expected = model.state_dict(), original.state_dict()
    assert restored.keys() == expected.keys()
    for key, value in expected.items():
        assert restored[key].shape == value.shape
        if value.is_floating_point():
            assert _relative(restored[key].float(), value.float()) < 1e-6, key
    modules, before = dict(model.named_modules()), dict(original.named_modules())
    for name in names:
        assert type(modules[name]) is type(before[name])
        if isinstance(before[name], nn.Conv2d):
            assert (modules[name].stride, modules[name].padding) == (before[name].stride, before[name].padding)


def test_constraints_hold_at_injection_and_train_conv_factors(built, images):
    model = built(CASES["efficientnet_lite0"])
    inject_adapters(model, MASMConfig(**CONFIG, targets=family_targets("efficientnet")))
    at_injection = constraint_metrics(model, semantic=True)
    assert float(at_injection["orth_error"]) < 1e-4 and float(at_injection["spectral_drift"]) < 1e-6
    _train(model, images)
    trained = constraint_metrics(model)
    assert float(trained["spectral_drift"]) > 0, "the conv factors moved"
    model(images).square().mean().backward()
    _, adapter = next(iter_adapters(model))
    conv = adapter.subspaces[0]
    # U lives in the output channels, V in the input channels of the 1x1 convolution.
    assert conv.U.shape == (adapter.out_channels, 2) and conv.V.shape == (adapter.in_channels, 2)
    assert conv.U.grad is not None and adapter.semantic_block(0).shape == (adapter.out_channels, adapter.in_channels)


# Single layers: every Conv2d setting a pointwise convolution can have.
CONV_SETTINGS = {
    "plain": (dict(), {}),
    "stride_2": (dict(stride=2), {}),
    "asymmetric_stride": (dict(stride=(2, 1)), {}),
    "dilation_ignored_at_1x1": (dict(dilation=2), {}),
    "no_bias": (dict(bias=False), {}),
    "fused_qkv": (dict(), {"num_blocks": 3}),
    "float64": (dict(dtype=torch.float64), {}),
    "padding_valid": (dict(padding="valid"), {}),
}


@pytest.mark.parametrize(("conv_kwargs", "adapter_kwargs"), CONV_SETTINGS.values(), ids=CONV_SETTINGS.keys())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_conv_adapter_matches_its_conv_and_merges_back(conv_kwargs, adapter_kwargs, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 24, 1, **conv_kwargs).eval()
    dtype = conv.weight.dtype
    x = torch.randn(2, 12, 7, 9, dtype=dtype)  # odd sizes: a stride-2 1x1 conv reads rows/columns 0, 2, 4, …
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    adapter = MASMConv2d(copy.deepcopy(conv), ranks=(2, 1), name="conv", **adapter_kwargs)
    tol = 1e-5  # the SVD runs in float32 whatever the layer's dtype (svd.py): float64 layers split to float32 round-off
    with torch.no_grad():
        expected = conv(x)
        assert _relative(adapter(x), expected) < tol
        for sub in adapter.subspaces:
            sub.U.add_(0.1)
        moved = adapter(x)
        merged, unloaded = adapter.merge(), adapter.unload()
        for layer in (merged, unloaded):
            assert type(layer) is nn.Conv2d and layer.weight.dtype == dtype
            assert (layer.stride, layer.dilation, layer.bias is None) == (conv.stride, conv.dilation, conv.bias is None)
        assert _relative(merged(x), moved) < tol
        assert _relative(unloaded(x), expected) < tol and _relative(moved, expected) > 1e-3


# How many layers each family preset selects on the full-size timm models, from the architectures.
PRESET_COUNTS = {
    ("efficientnet_b4", "efficientnet"): 62,  # 32 blocks: 2 depthwise-separable (conv_pw) + 30 inverted residual (x2)
    ("tf_efficientnet_b4", "efficientnet"): 62,
    ("legacy_xception", "legacy_xception"): 34,  # 12 blocks with 2 or 3 separable convs each + conv3, conv4
    ("xception41", "xception"): 39,  # 13 blocks x 3 separable convs
    ("resnet50", "resnet"): 32,  # 16 bottlenecks x (conv1, conv3)
    ("mobilenetv2_100", "mobilenetv2"): 33,  # 1 depthwise-separable + 16 inverted residual (x2)
}


@pytest.mark.parametrize(("name", "family"), PRESET_COUNTS, ids=[n for n, _ in PRESET_COUNTS])
def test_family_presets_select_pointwise_layers_on_the_full_models(name, family):
    """select_targets validates like inject_adapters without the SVDs, so the large backbones stay fast."""
    model = timm.create_model(name, pretrained=False, num_classes=0)
    names = select_targets(model, MASMConfig(**CONFIG, targets=family_targets(family)))
    modules = dict(model.named_modules())
    assert len(names) == PRESET_COUNTS[name, family]
    assert all(modules[n].kernel_size == (1, 1) and modules[n].groups == 1 for n in names)
    assert not any(p.requires_grad is False for p in model.parameters())  # the model was not touched


CONV_ERRORS = {
    "depthwise": ("conv_dw", r"matches 'blocks\.0\.0\.conv_dw', a Conv2d that cannot be wrapped: its kernel is 3x3"),
    "stem": ("conv_stem", r"matches 'conv_stem', a Conv2d that cannot be wrapped: its kernel is 3x3, not 1x1"),
}


@pytest.mark.parametrize(("target", "message"), CONV_ERRORS.values(), ids=CONV_ERRORS.keys())
def test_spatial_convs_are_refused_with_the_wrappable_candidates(target, message):
    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match=message) as error:
        inject_adapters(model, MASMConfig(**CONFIG, targets=(target,)))
    text = str(error.value)
    assert "only nn.Linear and pointwise nn.Conv2d (1x1 kernel, groups=1, no padding, any stride)" in text
    assert "'blocks.*.*.conv_pw', 'blocks.*.*.conv_pwl', 'conv_head'" in text


def test_unglobbed_resnet_conv1_hits_the_stem_and_says_so():
    with pytest.raises(ValueError, match=r"matches 'conv1', a Conv2d that cannot be wrapped: its kernel is 7x7"):
        inject_adapters(_small_resnet(), MASMConfig(**CONFIG, targets=("conv1",)))


class _Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer


LAYER_ERRORS = {
    "grouped": (nn.Conv2d(8, 8, 1, groups=2), r"it is grouped \(groups=2; depthwise when groups == in_channels\)"),
    "padded": (nn.Conv2d(8, 8, 1, padding=1), r"it pads its input \(padding=\(1, 1\)\)"),
    "weight_standardised": (StdConv2d(8, 8, 1), r"its class StdConv2d overrides nn\.Conv2d\.forward"),
    "conv1d": (nn.Conv1d(8, 8, 1), r"matches 'layer', of type Conv1d"),
}


@pytest.mark.parametrize(("layer", "message"), LAYER_ERRORS.values(), ids=LAYER_ERRORS.keys())
def test_non_pointwise_layers_are_refused(layer, message):
    model = _Holder(layer)
    with pytest.raises(ValueError, match=message):
        inject_adapters(model, MASMConfig(num_subspaces=1, subspace_rank=1, targets=("layer",)))
    assert model.layer is layer  # nothing was wrapped


def test_every_preset_names_a_family_and_unknown_families_are_listed():
    assert set(TARGET_PRESETS) >= {
        "vit",
        "efficientnet",
        "mobilenetv2",
        "xception",
        "legacy_xception",
        "resnet",
        "convnext",
    }
    with pytest.raises(ValueError, match=r"no target preset for backbone family 'vgg'; known: \['convnext'"):
        family_targets("vgg")
