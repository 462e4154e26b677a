"""What to decompose and how: the one configuration object of the adapter library."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

__all__ = ["TARGET_PRESETS", "MASMConfig", "Routing", "family_targets"]

# How training assigns samples to subspaces (see MASMConfig.routing).
Routing = Literal["type", "none"]

ATTENTION_TARGETS = ("attn.qkv", "attn.proj")
ALL_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

# `targets` for the common timm families: the layers that are linear maps over features or channels (nn.Linear,
# pointwise 1x1 nn.Conv2d) inside the repeated blocks. Stems, spatial/depthwise convolutions, squeeze-excitation
# gates, heads and stride-2 shortcuts are left frozen; add them by name if you want them (docs/backbones.md).
TARGET_PRESETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # ViT / CLIP ViT (timm VisionTransformer): the paper's setting.
        "vit": ALL_TARGETS,
        # MobileNetV2/V3, MnasNet, EfficientNet B0-B8, -Lite, tf_ ports (timm EfficientNet): the inverted
        # residual's expansion (conv_pw) and projection (conv_pwl); MobileNetV2's first block (depthwise-separable)
        # has conv_pw only.
        "efficientnet": ("conv_pw", "conv_pwl"),
        "mobilenetv2": ("conv_pw", "conv_pwl"),
        # timm's xception41/65/71 (aligned Xception): the pointwise half of every separable convolution.
        "xception": ("conv_pw",),
        # legacy_xception (Cadene's, the DeepfakeBench Xception): its SeparableConv2d.pointwise.
        "legacy_xception": ("pointwise",),
        # ResNet-50/101/152 and ResNeXt bottlenecks: the 1x1 reduce (conv1) and expand (conv3), not the 7x7 stem conv1.
        "resnet": ("layer*.conv1", "layer*.conv3"),
        # ConvNeXt: the MLP of each block (nn.Linear, or 1x1 nn.Conv2d in the conv_mlp variants such as convnext_atto).
        "convnext": ("mlp.fc1", "mlp.fc2"),
    }
)


def family_targets(family: str) -> tuple[str, ...]:
    """The :data:`TARGET_PRESETS` entry for a backbone family (``"efficientnet"``, ``"resnet"``, …).

    Raises:
        ValueError: for an unknown family, listing the known ones.
    """
    if family not in TARGET_PRESETS:
        raise ValueError(f"no target preset for backbone family {family!r}; known: {sorted(TARGET_PRESETS)}")
    return TARGET_PRESETS[family]


@dataclass
class MASMConfig:
    """Where MASM adapters go and how each wrapped weight is split.

    For every wrapped ``nn.Linear`` or pointwise ``nn.Conv2d`` (its C_out×C_in matrix), or every q/k/v third of a
    fused ``qkv``, the SVD ``W = U diag(S) Vᵀ`` is split into the top ``semantic_rank`` triplets (frozen) and
    ``num_subspaces`` disjoint blocks of trailing triplets (the trainable artifact subspaces). Triplets between the
    two, if any, stay frozen with the semantic part.

    Effort (Yan et al., 2024) is the configuration ``MASMConfig.effort()``: one subspace of rank 1 on the attention
    projections, i.e. ``num_subspaces=1, subspace_rank=1, targets=("attn.qkv", "attn.proj")``, which leaves
    ``semantic_rank = n - 1`` for every q, k, v and output matrix.
    """

    # K: number of artifact subspaces per decomposed matrix.
    num_subspaces: int = 4
    # d: rank of each artifact subspace; one int for all, or one per subspace (subspace 0 sits nearest the
    # semantic part, subspace K-1 holds the smallest singular values).
    subspace_rank: int | tuple[int, ...] = 4
    # r: frozen top singular triplets; None keeps everything except the K·d trailing triplets.
    semantic_rank: int | None = None
    # Module-name suffixes (or globs such as `layer*.conv1`) to wrap; each must match at least one nn.Linear or
    # pointwise (1x1, groups 1, unpadded) nn.Conv2d of the model. Presets per family: TARGET_PRESETS.
    targets: tuple[str, ...] = ALL_TARGETS
    # Transformer block indices to wrap (the first integer in a module's dotted name); None wraps every block.
    blocks: tuple[int, ...] | None = None
    # Decompose each part of a fused projection (q, k, v of `qkv`; k, v of `kv`) separately, as Effort does.
    split_fused: bool = True
    # Training only (inference always sums all K): `type` lets a fake of forgery type t train only its assigned
    # subspace (round-robin over the fake types; reals and unknown fakes train all K), so the K subspaces model
    # different artifacts; `none` trains all K on every sample, which makes K subspaces of rank d train exactly
    # like one of rank K·d (docs/method.md, "Artifact subspaces").
    routing: Routing = "type"

    def __post_init__(self) -> None:
        if isinstance(self.num_subspaces, bool) or not isinstance(self.num_subspaces, int) or self.num_subspaces < 1:
            raise ValueError(f"MASMConfig.num_subspaces must be an int >= 1, got {self.num_subspaces!r}")
        ranks = (self.subspace_rank,) if isinstance(self.subspace_rank, int) else tuple(self.subspace_rank)
        if not ranks or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in ranks):
            raise ValueError(
                f"MASMConfig.subspace_rank must be an int >= 1 or a list of them, got {self.subspace_rank!r}"
            )
        if len(ranks) not in (1, self.num_subspaces):
            raise ValueError(
                f"MASMConfig.subspace_rank lists {len(ranks)} ranks {list(ranks)} but num_subspaces is "
                f"{self.num_subspaces}: give one rank, or exactly one per subspace"
            )
        self.subspace_rank = ranks[0] if len(ranks) == 1 else ranks
        if self.semantic_rank is not None and (
            isinstance(self.semantic_rank, bool) or not isinstance(self.semantic_rank, int) or self.semantic_rank < 1
        ):
            raise ValueError(f"MASMConfig.semantic_rank must be an int >= 1 or None, got {self.semantic_rank!r}")
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or any(not isinstance(t, str) or not t.strip(".") for t in self.targets):
            raise ValueError(
                f"MASMConfig.targets must be a non-empty list of module-name suffixes such as {list(ALL_TARGETS)}, "
                f"got {self.targets!r}"
            )
        if self.routing not in get_args(Routing):
            raise ValueError(f"MASMConfig.routing must be one of {list(get_args(Routing))}, got {self.routing!r}")
        if self.blocks is not None:
            self.blocks = tuple(self.blocks)
            if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in self.blocks):
                raise ValueError(f"MASMConfig.blocks must be non-negative block indices or None, got {self.blocks!r}")
            if len(set(self.blocks)) != len(self.blocks):
                raise ValueError(f"MASMConfig.blocks lists a block twice: {list(self.blocks)}")

    @property
    def ranks(self) -> tuple[int, ...]:
        """The rank of every subspace, ``K`` entries."""
        if isinstance(self.subspace_rank, int):
            return (self.subspace_rank,) * self.num_subspaces
        return tuple(self.subspace_rank)

    @property
    def artifact_rank(self) -> int:
        """Total trainable rank per decomposed matrix, ``sum(d_k)``."""
        return sum(self.ranks)

    @classmethod
    def effort(cls, blocks: Sequence[int] | None = None) -> MASMConfig:
        """The Effort baseline: one rank-1 artifact direction per q, k, v and attention-output matrix."""
        return cls(
            num_subspaces=1,
            subspace_rank=1,
            targets=ATTENTION_TARGETS,
            blocks=None if blocks is None else tuple(blocks),
        )
