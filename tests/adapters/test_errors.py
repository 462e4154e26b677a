"""Every configuration mistake fails early with a message naming the bad value and what would be valid."""

from __future__ import annotations

import pytest
import torch

from masm_lightning.adapters import (
    MASMConfig,
    SubspaceConstraints,
    apply_constraints,
    constraint_metrics,
    inject_adapters,
)

CONFIG_ERRORS = {
    "no_subspaces": (dict(num_subspaces=0), r"num_subspaces must be an int >= 1, got 0"),
    "zero_rank": (dict(subspace_rank=0), r"subspace_rank must be an int >= 1 or a list of them, got 0"),
    "rank_list_length": (
        dict(num_subspaces=3, subspace_rank=[1, 2]),
        r"subspace_rank lists 2 ranks \[1, 2\] but num_subspaces is 3",
    ),
    "semantic_rank_zero": (dict(semantic_rank=0), r"semantic_rank must be an int >= 1 or None, got 0"),
    "no_targets": (dict(targets=()), r"targets must be a non-empty list of module-name suffixes"),
    "negative_block": (dict(blocks=[-1]), r"blocks must be non-negative block indices or None, got \(-1,\)"),
    "duplicate_block": (dict(blocks=[1, 1]), r"blocks lists a block twice: \[1, 1\]"),
}


@pytest.mark.parametrize(("kwargs", "message"), CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MASMConfig(**kwargs)


def test_config_normalises_lists_from_yaml():
    config = MASMConfig(num_subspaces=2, subspace_rank=[3, 1], targets=["attn.qkv"], blocks=[0])
    assert config.ranks == (3, 1) and config.artifact_rank == 4
    assert config.targets == ("attn.qkv",) and config.blocks == (0,)
    assert MASMConfig(num_subspaces=3, subspace_rank=[2]).ranks == (2, 2, 2)


# The tiny ViT has embed_dim 32: every q/k/v/proj block is 32x32, fc1 is 128x32, fc2 32x128.
INJECT_ERRORS = {
    "tail_leaves_no_semantics": (
        MASMConfig(num_subspaces=4, subspace_rank=8),
        r"blocks\.0\.attn\.qkv \(each of its 3 fused blocks\): 4 artifact subspaces of ranks \[8, 8, 8, 8\] need 32 "
        r"singular triplets, but this 32x32 matrix has 32, which leaves no semantic part",
    ),
    "semantic_rank_overlaps_tail": (
        MASMConfig(targets=("mlp.fc1",), semantic_rank=20),
        r"blocks\.0\.mlp\.fc1: semantic_rank=20 plus 16 artifact triplets exceeds the 32 singular values of this "
        r"128x32 matrix; use semantic_rank <= 16 or null",
    ),
    "target_matches_nothing": (
        MASMConfig(targets=("attn.q_proj",)),
        r"targets entry 'attn\.q_proj' matches no module of VisionTransformer; its wrappable layers "
        r"\(nn\.Linear and pointwise nn\.Conv2d \(1x1 kernel, groups=1, no padding, any stride\)\) are "
        r"\['blocks\.\*\.attn\.proj', 'blocks\.\*\.attn\.qkv', 'blocks\.\*\.mlp\.fc1', 'blocks\.\*\.mlp\.fc2'\]",
    ),
    "target_not_linear": (
        MASMConfig(targets=("attn",)),
        r"targets entry 'attn' matches 'blocks\.0\.attn', of type Attention; only nn\.Linear and pointwise nn\.Conv2d",
    ),
    "missing_block": (
        MASMConfig(blocks=(0, 5)),
        r"blocks asks for blocks \[5\], which hold no target layer; the targets exist in blocks \[0, 1\]",
    ),
}


@pytest.mark.parametrize(("config", "message"), INJECT_ERRORS.values(), ids=INJECT_ERRORS.keys())
def test_injection_errors_leave_the_model_untouched(make_vit, images, config, message):
    model = make_vit()
    before = model(images)
    with pytest.raises(ValueError, match=message):
        inject_adapters(model, config)
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(images), before, rtol=0, atol=0)


def test_injecting_twice_is_refused(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    with pytest.raises(
        ValueError,
        match=r"already holds 8 MASM adapters \(first: 'blocks\.0\.attn\.qkv'\); call "
        r"merge_adapters or unload_adapters",
    ):
        inject_adapters(model, MASMConfig())


@pytest.mark.parametrize(
    "constraint_fn",
    [lambda m: apply_constraints(m, 1e-3), constraint_metrics],
    ids=["apply_constraints", "constraint_metrics"],
)
def test_constraints_refuse_a_model_without_adapters(make_vit, constraint_fn):
    with pytest.raises(ValueError, match="no MASM adapters found in VisionTransformer; call inject_adapters first"):
        constraint_fn(make_vit())


BAD_CONSTRAINTS = {
    "negative_orthogonality": ({"orthogonality": -1.0}, r"orthogonality must be a finite number >= 0, got -1.0"),
    "infinite_spectral": ({"spectral": float("inf")}, r"spectral must be a finite number >= 0, got inf"),
    "nan_semantic": ({"semantic": float("nan")}, r"semantic must be a finite number >= 0, got nan"),
    "zero_cap": ({"cap": 0.0}, r"cap must be > 0 \(math.inf for no cap\), got 0.0"),
}


@pytest.mark.parametrize(("kwargs", "message"), BAD_CONSTRAINTS.values(), ids=BAD_CONSTRAINTS.keys())
def test_bad_constraint_strengths_are_named(kwargs, message):
    with pytest.raises(ValueError, match="SubspaceConstraints." + message):
        SubspaceConstraints(**kwargs)
