"""Trainable parameters of MASM and Effort on the supported backbone families (the table in docs/backbones.md).

    python benchmarks/backbone_params.py

Counts come from the module structure alone (``select_targets`` + shapes, backbones built on the meta device, no
SVD), so even ViT-L/14 costs nothing: per wrapped matrix (or fused q/k/v block) m×n, a subspace of rank d trains
d·(m + n + 1) numbers (U, s, V). The script checks this count against a real injection on the small CNNs.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from torch import nn

from masm_lightning.adapters import MASMConfig, family_targets, inject_adapters, select_targets
from masm_lightning.adapters.svd import fused_parts

# (family preset, timm name, artifact rank d per subspace as in configs/backbones/; K = 4 throughout)
BACKBONES = [
    ("vit", "vit_large_patch14_clip_quickgelu_224", 4),
    ("vit", "vit_base_patch16_clip_quickgelu_224", 4),
    ("vit", "vit_small_patch14_dinov2", 4),
    ("convnext", "convnext_tiny", 4),
    ("efficientnet", "tf_efficientnet_b4", 4),
    ("legacy_xception", "legacy_xception", 4),
    ("xception", "xception41", 4),
    ("resnet", "resnet50", 4),
    ("mobilenetv2", "mobilenetv2_100", 2),
    ("efficientnet", "tf_efficientnet_lite0", 2),
]
CHECKED = {"mobilenetv2_100", "tf_efficientnet_lite0"}  # counted by injection as well


def count(model: nn.Module, config: MASMConfig) -> tuple[int, int, int]:
    """(wrapped layers, of which Conv2d, trainable adapter parameters) for ``config`` on ``model``."""
    names = select_targets(model, config)
    modules = dict(model.named_modules())
    total, convs = 0, 0
    for name in names:
        layer = modules[name]
        m, n = (
            (layer.out_features, layer.in_features)
            if isinstance(layer, nn.Linear)
            else (layer.out_channels, layer.in_channels)
        )
        convs += isinstance(layer, nn.Conv2d)
        parts = fused_parts(name) if config.split_fused else 1
        total += parts * sum(d * (m // parts + n + 1) for d in config.ranks)
    return len(names), convs, total


def main() -> None:
    rows = []
    for family, name, rank in BACKBONES:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        backbone = sum(p.numel() for p in model.parameters())
        masm = MASMConfig(num_subspaces=4, subspace_rank=rank, targets=family_targets(family))
        # Effort: one rank-1 direction per matrix; on a ViT only the attention projections, on a CNN the same
        # pointwise layers as MASM (a CNN has no attention).
        effort = (
            MASMConfig.effort()
            if family == "vit"
            else MASMConfig(num_subspaces=1, subspace_rank=1, targets=family_targets(family))
        )
        layers, convs, masm_n = count(model, masm)
        _, _, effort_n = count(model, effort)
        if name in CHECKED:
            real = timm.create_model(name, pretrained=False, num_classes=0)
            inject_adapters(real, masm)
            injected = sum(p.numel() for p in real.parameters() if p.requires_grad)
            assert injected == masm_n, f"{name}: counted {masm_n}, injection trains {injected}"
        head = 2 * model.num_features + 2
        rows.append((name, family, backbone, layers, convs, rank, masm_n, effort_n, head))

    print(
        "| backbone | preset | backbone params | wrapped layers (Conv2d) | d | MASM trainable | % of backbone "
        "| Effort trainable | head |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, family, backbone, layers, convs, rank, masm_n, effort_n, head in rows:
        print(
            f"| {name} | {family} | {backbone / 1e6:.1f}M | {layers} ({convs}) | {rank} | {masm_n:,} | "
            f"{100 * masm_n / backbone:.2f} | {effort_n:,} | {head:,} |"
        )
    summary = " ".join(f"{name}={masm_n}" for name, *_, masm_n, _, _ in rows)
    print(f"backbone params: {summary}")


if __name__ == "__main__":
    main()
