"""The regularisers: zero where the formula says, positive when violated, differentiable, and equal to their
dense definitions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from masm_lightning.adapters import MASMConfig, inject_adapters, orthogonality_loss, spectral_consistency_loss


def _first_subspace(model):
    return model.blocks[0].attn.proj.subspaces[0]


def _scale_u(model):  # U_0 no longer orthonormal
    with torch.no_grad():
        _first_subspace(model).U.mul_(1.5)


def _align_subspaces(model):  # subspace 1 copies subspace 0's directions: redundant, not complementary
    with torch.no_grad():
        subs = model.blocks[0].attn.proj.subspaces
        subs[1].U.copy_(subs[0].U)
        subs[1].V.copy_(subs[0].V)


def _rotate_into_semantics(model):  # an artifact direction moved onto the top semantic direction
    with torch.no_grad():
        adapter = model.blocks[0].attn.proj
        u, _, vh = torch.linalg.svd(adapter.semantic_weight)
        adapter.subspaces[0].U[:, 0] = u[:, 0]
        adapter.subspaces[0].V[:, 0] = vh[0]


def _inflate_s(model):  # singular values above the semantic floor
    with torch.no_grad():
        sub = _first_subspace(model)
        sub.s.add_(10 * model.blocks[0].attn.proj.semantic_floor[0])


ORTHOGONALITY: Callable = orthogonality_loss
WITH_SEMANTICS: Callable = lambda m: orthogonality_loss(m, semantic_weight=1.0)
SPECTRAL: Callable = spectral_consistency_loss

CASES = {
    "orth/not_orthonormal": (ORTHOGONALITY, _scale_u),
    "orth/redundant_subspaces": (ORTHOGONALITY, _align_subspaces),
    "orth_semantic/overlaps_semantics": (WITH_SEMANTICS, _rotate_into_semantics),
    "spectral/energy_and_cap": (SPECTRAL, _inflate_s),
    "spectral/energy_from_directions": (SPECTRAL, _scale_u),
}


@pytest.mark.parametrize(("loss_fn", "violate"), CASES.values(), ids=CASES.keys())
def test_zero_at_injection_positive_when_violated_with_gradients(make_vit, loss_fn, violate):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    assert loss_fn(model).item() == pytest.approx(0.0, abs=1e-8)
    violate(model)
    loss = loss_fn(model)
    assert loss.item() > 1e-5
    loss.backward()
    grads = [p.grad for p in _first_subspace(model).factors() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_semantic_overlap_needs_the_semantic_weight(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    _rotate_into_semantics(model)
    # The top semantic singular vectors are unit vectors orthogonal to the other artifact directions, so the
    # plain term cannot see the overlap; only the semantic term does.
    assert orthogonality_loss(model).item() == pytest.approx(0.0, abs=1e-8)
    assert orthogonality_loss(model, semantic_weight=1.0).item() > 1e-3


def test_factorised_formulas_equal_their_dense_definitions(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig(targets=("attn.proj",), blocks=(0,)))
    adapter = model.blocks[0].attn.proj
    torch.manual_seed(3)
    with torch.no_grad():
        for sub in adapter.subspaces:
            sub.U.add_(0.05 * torch.randn_like(sub.U))
            sub.V.add_(0.05 * torch.randn_like(sub.V))
            sub.s.mul_(1.3)
    u = torch.cat([s.U for s in adapter.subspaces], 1)
    v = torch.cat([s.V for s in adapter.subspaces], 1)
    s = torch.cat([x.s for x in adapter.subspaces])
    s0 = torch.cat([x.s0 for x in adapter.subspaces])
    eye = torch.eye(u.shape[1])
    w_eff = adapter.semantic_weight + (u * s) @ v.mT
    energy0 = adapter.energy[0]
    floor = adapter.semantic_floor[0]

    orth = (u.mT @ u - eye).square().sum() + (v.mT @ v - eye).square().sum()
    torch.testing.assert_close(orthogonality_loss(model), orth, rtol=1e-4, atol=1e-7)

    energy = ((w_eff.square().sum() - energy0) / energy0).square()
    drift = (s - s0).square().sum() / floor**2
    cap = torch.relu(s - floor).square().sum() / floor**2
    torch.testing.assert_close(spectral_consistency_loss(model), energy + drift + cap, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        spectral_consistency_loss(model, energy_weight=1.0, drift_weight=0.0, cap_weight=0.0), energy,
        rtol=1e-3, atol=1e-9,
    )
    sem = adapter.semantic_weight
    overlap = ((sem.mT @ u).square().sum() + (sem @ v).square().sum()) / sem.square().sum()
    torch.testing.assert_close(orthogonality_loss(model, semantic_weight=1.0), orth + overlap, rtol=1e-4, atol=1e-6)


def test_losses_are_means_over_decomposed_matrices(make_vit):
    """A deeper model with the same per-matrix violation gives the same loss: λ does not scale with depth."""
    losses = []
    for depth in (1, 3):
        model = make_vit(depth=depth)
        inject_adapters(model, MASMConfig())
        with torch.no_grad():
            for _name, module in model.named_modules():
                if hasattr(module, "subspaces"):
                    for sub in module.subspaces:
                        sub.U.mul_(1.1)
        losses.append(orthogonality_loss(model).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
