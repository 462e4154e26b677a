"""Injection, training, merging and unloading on tiny timm ViTs: the adapter's contract with its users."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from masm_lightning.adapters import (
    MASMConfig,
    MASMLinear,
    apply_constraints,
    constraint_metrics,
    inject_adapters,
    iter_adapters,
    merge_adapters,
    unload_adapters,
)
from tests.helpers import TINY_VIT, TINY_VIT_KWARGS

CONFIGS = {
    "default": MASMConfig(),
    "effort": MASMConfig.effort(),
    "unfused": MASMConfig(split_fused=False),
    "per_subspace_ranks": MASMConfig(num_subspaces=3, subspace_rank=(1, 2, 3)),
    "semantic_rank_below_tail": MASMConfig(num_subspaces=2, subspace_rank=2, semantic_rank=8),
    "one_block_mlp_only": MASMConfig(targets=("mlp.fc1", "mlp.fc2"), blocks=(1,)),
}


def _train(model: nn.Module, images: torch.Tensor, steps: int = 3) -> None:
    """A few AdamW steps (weight decay on), each followed by the constraint step, that move every factor away from
    its initial value."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        loss = model(images).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        apply_constraints(model, optimizer)
    model.eval()


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_wrapped_model_equals_original_at_injection(make_vit, images, config):
    original, wrapped = make_vit(), make_vit()
    inject_adapters(wrapped, config)
    with torch.no_grad():
        expected, got = original(images), wrapped(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_only_artifact_factors_change_under_adamw(make_vit, images, config):
    model = make_vit()
    inject_adapters(model, config)
    factors = {id(p) for _, a in iter_adapters(model) for sub in a.subspaces for p in sub.factors()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == factors, "exactly the U, s, V factors must be trainable"

    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, images)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    factor_keys = {k for k in before if k.rsplit(".", 1)[-1] in ("U", "s", "V")}
    assert changed == factor_keys


def test_backward_never_materialises_a_dense_weight_gradient(make_vit, images):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    model(images).sum().backward()
    for _, adapter in iter_adapters(model):
        assert adapter.semantic_weight.grad is None
        assert all(sub.U.grad is not None and sub.V.grad is not None for sub in adapter.subspaces)


def test_fused_qkv_gets_one_svd_per_projection(make_vit):
    model = make_vit()
    weight = model.blocks[0].attn.qkv.weight.detach().clone()  # (3D, D)
    inject_adapters(model, MASMConfig(num_subspaces=2, subspace_rank=3))
    qkv = model.blocks[0].attn.qkv
    dim = weight.shape[1]
    assert qkv.num_blocks == 3 and len(qkv.subspaces) == 6
    for block in range(3):
        rows = weight[block * dim : (block + 1) * dim]
        subs = qkv.block_subspaces(block)
        assert [sub.U.shape for sub in subs] == [(dim, 3), (dim, 3)]
        # Each projection's own trailing singular values, not those of the stacked 3D×D matrix.
        torch.testing.assert_close(torch.cat([sub.s0 for sub in subs]), torch.linalg.svdvals(rows)[-6:])
        # Its factors live in its own rows: the semantic part plus its subspaces rebuild exactly that projection.
        rebuilt = qkv.semantic_block(block) + sum((s.U0 * s.s0) @ s.V0.mT for s in subs)
        torch.testing.assert_close(rebuilt, rows, rtol=1e-5, atol=1e-6)
    fused_tail = torch.linalg.svdvals(weight)[-6:]
    assert not torch.allclose(torch.cat([sub.s0 for sub in qkv.block_subspaces(0)]), fused_tail)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_merged_model_loads_strictly_into_fresh_timm_model(make_vit, images, config):
    model = make_vit()
    inject_adapters(model, config)
    _train(model, images)
    with torch.no_grad():
        trained = model(images)
    merged = merge_adapters(model)
    assert not list(iter_adapters(merged))

    fresh = timm.create_model(TINY_VIT, pretrained=False, **TINY_VIT_KWARGS).eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), trained, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_unload_restores_the_original_weights(make_vit, images, config):
    original, model = make_vit(), make_vit()
    inject_adapters(model, config)
    _train(model, images)
    unload_adapters(model)
    restored, expected = model.state_dict(), original.state_dict()
    assert restored.keys() == expected.keys()
    for key, value in expected.items():
        relative = (restored[key] - value).norm() / value.norm().clamp_min(1e-12)
        assert relative < 1e-6, f"{key}: relative error {relative:.2e}"


def test_effort_configuration_trains_one_direction_per_attention_matrix(make_vit):
    model = make_vit()
    names = inject_adapters(model, MASMConfig.effort())
    dim, depth = TINY_VIT_KWARGS["embed_dim"], TINY_VIT_KWARGS["depth"]
    assert names == [f"blocks.{i}.attn.{leaf}" for i in range(depth) for leaf in ("qkv", "proj")]
    assert isinstance(model.blocks[0].mlp.fc1, nn.Linear)
    for _, adapter in iter_adapters(model):
        # q, k, v (three blocks of the fused qkv) and proj: each has exactly one rank-1 subspace.
        assert [(sub.block, sub.rank) for sub in adapter.subspaces] == [(b, 1) for b in range(adapter.num_blocks)]
        assert adapter.semantic_floor.numel() == adapter.num_blocks
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == depth * 4 * (dim + 1 + dim)


def test_state_dict_holds_factors_and_reinjection_rebuilds_the_rest(make_vit, images):
    source, target = make_vit(seed=0), make_vit(seed=0)
    inject_adapters(source, MASMConfig())
    _train(source, images)
    state = source.state_dict()
    assert not any(k.endswith(("U0", "s0", "V0", "energy", "semantic_floor")) for k in state)
    # Same base weights, injected again (possibly elsewhere): the trained factors load strictly and reproduce
    # the outputs, and unload still returns the base weights.
    inject_adapters(target, MASMConfig())
    target.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images))
    torch.testing.assert_close(
        unload_adapters(target).state_dict(), make_vit(seed=0).state_dict(), rtol=1e-5, atol=1e-6
    )


def test_fitting_strength_matches_the_dense_definition(make_vit, images):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    sub = model.blocks[0].mlp.fc1.subspaces[1]
    assert sub.fitting_strength().item() == pytest.approx(0.0, abs=1e-3)
    _train(model, images)
    delta = (sub.U * sub.s) @ sub.V.mT - (sub.U0 * sub.s0) @ sub.V0.mT
    expected = delta.norm() / ((sub.U0 * sub.s0) @ sub.V0.mT).norm()
    assert expected > 0.01
    assert sub.fitting_strength().item() == pytest.approx(expected.item(), rel=1e-3)


def test_adapters_run_under_bf16_autocast(make_vit, images):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    seen = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    out.float().sum().backward()
    assert seen == [torch.bfloat16]
    assert all(sub.U.grad is not None for _, a in iter_adapters(model) for sub in a.subspaces)


def test_returned_names_are_the_wrapped_modules(make_vit):
    model = make_vit()
    names = inject_adapters(model, MASMConfig(targets=("attn.qkv",)))
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert [n for n, m in model.named_modules() if isinstance(m, MASMLinear)] == names


def test_unbatched_input_works_like_nn_linear(make_vit):
    model = make_vit()
    linear = model.blocks[0].mlp.fc1
    x = torch.randn(linear.in_features)
    expected = linear(x)
    inject_adapters(model, MASMConfig(targets=("mlp.fc1",)))
    torch.testing.assert_close(model.blocks[0].mlp.fc1(x), expected, rtol=1e-5, atol=1e-5)


def test_semantic_floor_is_the_smallest_frozen_singular_value(make_vit):
    model = make_vit()
    weight = model.blocks[0].attn.proj.weight.detach().clone()
    inject_adapters(model, MASMConfig(num_subspaces=2, subspace_rank=2, semantic_rank=8, targets=("attn.proj",)))
    values = torch.linalg.svdvals(weight)  # 32 values: top 8 semantic, 20 frozen in between, 4 trainable
    torch.testing.assert_close(model.blocks[0].attn.proj.semantic_floor[0], values[-5])
    assert constraint_metrics(model)["spectral_drift"].item() == 0.0
