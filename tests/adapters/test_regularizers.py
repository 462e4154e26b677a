"""The decoupled constraint step: identity where nothing is violated, drift bounded by λ at any gradient scale,
learning never stopped, violations contracted, masked subspaces untouched, float32 whatever the autocast; and the
metrics equal their dense definitions."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from masm_lightning.adapters import (
    MASMConfig,
    MASMLinear,
    SubspaceConstraints,
    apply_constraints,
    constraint_metrics,
    inject_adapters,
)


def _first_subspace(model):
    return model.blocks[0].attn.proj.subspaces[0]


def _factors(model):
    return [p for p in model.parameters() if p.requires_grad]


def _with_grads(model):
    """Zero gradients on every factor: the state right after an optimizer step that moved nothing."""
    for p in _factors(model):
        p.grad = torch.zeros_like(p)
    return model


def _power_law_adapter(size: int = 64, seed: int = 0) -> MASMLinear:
    gen = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(size, size, generator=gen))
    right, _ = torch.linalg.qr(torch.randn(size, size, generator=gen))
    linear = nn.Linear(size, size, bias=False)
    with torch.no_grad():
        linear.weight.copy_((left * torch.arange(1, size + 1.0) ** -1.0) @ right.mT)
    return MASMLinear(linear, [4, 4, 4, 4])


@contextmanager
def _one_thread() -> Iterator[None]:
    """64×64 thin matmuls: extra threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_along_a_fixed_direction(
    adapter: MASMLinear,
    norm: float,
    constraints: SubspaceConstraints | None,
    steps: int = 300,
    lr: float = 2e-4,
    weight_decay: float = 0.0,
) -> dict[str, float]:
    """Adam on a linear task whose gradient is ``norm`` times a fixed unit direction over all factors."""
    adapter = copy.deepcopy(adapter)
    params = [p for sub in adapter.subspaces for p in sub.factors()]
    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen) for p in params]
    total = torch.cat([d.reshape(-1) for d in direction]).norm()
    direction = [d / total for d in direction]
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        (norm * sum((d * p).sum() for d, p in zip(direction, params))).backward()
        optimizer.step()
        if constraints is not None:
            apply_constraints([adapter], optimizer, constraints)
    with torch.no_grad():
        progress = sum(((p0 - p) * d).sum() for p0, p, d in zip(start, params, direction))
    metrics = constraint_metrics([adapter])
    return {
        "progress": float(progress),
        "drift": float(metrics["spectral_drift"]),
        "orth": float(metrics["orth_error"]),
    }


def test_the_step_is_the_identity_at_injection(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    _with_grads(model)
    before = [p.detach().clone() for p in _factors(model)]
    apply_constraints(model, 1e-2, SubspaceConstraints(orthogonality=10.0, spectral=1.0, semantic=1.0))
    for p, p0 in zip(_factors(model), before):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-5)
    metrics = constraint_metrics(model, semantic=True)
    assert metrics["spectral_drift"].item() == 0.0
    assert metrics["orth_error"].item() < 1e-5 and metrics["semantic_overlap"].item() < 1e-5


# Six 300-step Adam runs (several seconds): the tests that read them are marked slow.
@pytest.fixture(scope="module")
def scaling_runs() -> dict[tuple[float, str], dict[str, float]]:
    """Unconstrained and constrained runs at a tiny and a large task-gradient norm (64×64 power-law matrix)."""
    adapter = _power_law_adapter()
    constraints = {
        "none": None,
        "recipe": SubspaceConstraints(),
        "strong": SubspaceConstraints(orthogonality=40.0, spectral=4.0),
    }
    with _one_thread():
        return {
            (norm, name): _train_along_a_fixed_direction(adapter, norm, c)
            for norm in (1e-4, 1.0)
            for name, c in constraints.items()
        }


@pytest.mark.slow
@pytest.mark.parametrize("norm", [1e-4, 1.0])
@pytest.mark.parametrize(("name", "lambda_spec"), [("recipe", 1.0), ("strong", 4.0)])
def test_spectral_drift_is_bounded_by_one_over_lambda_at_any_gradient_scale(scaling_runs, norm, name, lambda_spec):
    unconstrained = scaling_runs[(norm, "none")]["drift"]
    drift = scaling_runs[(norm, name)]["drift"]
    assert unconstrained > 2.0, "the experiment must push s far enough to test the bound"
    assert drift <= 1.0 / lambda_spec * 1.01  # κ = 1 for a steady gradient under Adam
    assert drift == pytest.approx(scaling_runs[(1.0, name)]["drift"], rel=0.01), "must not depend on the scale"


@pytest.mark.slow
@pytest.mark.parametrize("norm", [1e-4, 1.0])
def test_orthogonality_error_is_bounded_by_the_documented_function_of_lambda(scaling_runs, norm):
    def bound(lam: float, rank: int = 16) -> float:  # ‖UᵀU − I‖_F ≤ δ(2 + δ), δ = κ·√T/λ_o with κ = 1
        delta = math.sqrt(rank) / lam
        return delta * (2 + delta)

    free, recipe, strong = (scaling_runs[(norm, name)]["orth"] for name in ("none", "recipe", "strong"))
    assert free > 1.0 > bound(10.0)
    assert recipe <= bound(10.0)
    assert strong <= bound(40.0)
    assert strong < recipe / 2


@pytest.mark.slow
@pytest.mark.parametrize("norm", [1e-4, 1.0])
def test_learning_progresses_at_any_gradient_scale(scaling_runs, norm):
    free = scaling_runs[(norm, "none")]["progress"]
    assert free > 0
    assert scaling_runs[(norm, "recipe")]["progress"] >= 0.5 * free


@pytest.mark.slow
def test_coupled_weight_decay_stalls_a_small_task_gradient(scaling_runs):
    """Why the factors get no coupled decay by default: Adam normalises it together with the task gradient."""
    with _one_thread():
        coupled = _train_along_a_fixed_direction(_power_law_adapter(), 1e-4, None, weight_decay=5e-4)
    assert coupled["progress"] < 0.5 * scaling_runs[(1e-4, "none")]["progress"]


def test_orthogonality_violations_contract_by_one_minus_beta_per_step(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    with torch.no_grad():
        subs = model.blocks[0].attn.proj.subspaces
        subs[0].U.mul_(1.5)  # not orthonormal
        subs[1].V.copy_(0.8 * subs[0].V + 0.6 * subs[1].V)  # unit columns, but overlapping subspaces
    _with_grads(model)
    lam, lr = 10.0, 1e-2
    errors = []
    for _ in range(20):
        errors.append(constraint_metrics(model)["orth_error"].item())
        apply_constraints(model, lr, SubspaceConstraints(orthogonality=lam, spectral=0.0))
    c = lam * lr * math.sqrt(model.blocks[0].attn.proj.out_features)
    beta = c / (1 + c)
    assert errors[0] > 0.5
    assert errors[-1] < errors[0] * (1 - beta) ** 10  # at least half the predicted contraction over 19 steps
    assert all(b < a for a, b in itertools.pairwise(errors))


def test_values_are_clamped_to_the_cap_and_pulled_toward_s0(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    adapter, sub = model.blocks[0].attn.proj, _first_subspace(model)
    floor = float(adapter.semantic_floor[0])
    with torch.no_grad():
        sub.s.add_(10 * floor)
    _with_grads(model)
    apply_constraints(model, 1e-3, SubspaceConstraints(orthogonality=0.0, spectral=0.0, cap=2.0))
    assert sub.s.max().item() == pytest.approx(2.0 * floor)
    with torch.no_grad():
        sub.s.copy_(sub.s0 + 0.5 * floor)
    lr, lam = 1e-3, 1.0
    apply_constraints(model, lr, SubspaceConstraints(orthogonality=0.0, spectral=lam, cap=math.inf))
    torch.testing.assert_close(sub.s - sub.s0, torch.full_like(sub.s, 0.5 * floor / (1 + lam * lr / floor)))


@pytest.mark.parametrize("target", ["attn.proj", "mlp.fc1"], ids=["square", "long_left_side"])
def test_the_semantic_term_pulls_artifact_directions_out_of_the_frozen_basis(make_vit, target):
    model = make_vit()
    inject_adapters(model, MASMConfig(targets=(target,)))
    adapter = model.get_submodule(f"blocks.0.{target}")
    with torch.no_grad():
        u, _, vh = torch.linalg.svd(adapter.semantic_weight)
        first = adapter.subspaces[0]  # a unit direction 80% onto the top semantic one
        first.U[:, 0] = 0.8 * u[:, 0] + 0.6 * first.U0[:, 0]
        first.V[:, 0] = 0.8 * vh[0] + 0.6 * first.V0[:, 0]
    _with_grads(model)
    before = constraint_metrics(model, semantic=True)["semantic_overlap"].item()
    assert before > 0.75
    off = _with_grads(copy.deepcopy(model))  # deepcopy drops .grad
    apply_constraints(off, 1e-2, SubspaceConstraints(semantic=0.0))
    assert constraint_metrics(off, semantic=True)["semantic_overlap"].item() > 0.9 * before
    for _ in range(30):
        apply_constraints(model, 1e-2, SubspaceConstraints(semantic=10.0))
    assert constraint_metrics(model, semantic=True)["semantic_overlap"].item() < 0.1 * before


def test_a_subspace_the_optimizer_skipped_stays_bit_identical(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    with torch.no_grad():
        for p in _factors(model):
            p.mul_(1.2)  # everything violates both constraints
    _with_grads(model)
    masked = _first_subspace(model)
    for p in masked.factors():
        p.grad = None  # what the layer mask does
    before = [p.detach().clone() for p in masked.factors()]
    other = model.blocks[0].attn.proj.subspaces[1].U.detach().clone()
    apply_constraints(model, 1e-2)
    for p, p0 in zip(masked.factors(), before):
        assert torch.equal(p, p0)
    assert not torch.equal(model.blocks[0].attn.proj.subspaces[1].U, other)


def test_the_step_runs_in_float32_under_bf16_autocast(make_vit):
    model = make_vit()
    inject_adapters(model, MASMConfig())
    with torch.no_grad():
        for p in _factors(model):
            p.add_(0.01 * torch.randn_like(p))
    _with_grads(model)
    under = _with_grads(copy.deepcopy(model))  # deepcopy drops .grad
    apply_constraints(model, 1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        apply_constraints(under, 1e-2)
        metrics_under = constraint_metrics(under)
    for p, q in zip(_factors(model), _factors(under)):
        assert q.dtype == torch.float32
        assert torch.equal(p, q)
    assert metrics_under["orth_error"].dtype == torch.float32
    assert metrics_under["orth_error"].item() == pytest.approx(constraint_metrics(model)["orth_error"].item())


def test_metrics_equal_their_dense_definitions(make_vit):
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
    floor = adapter.semantic_floor[0]
    u_sem, _, vh_sem = torch.linalg.svd(adapter.semantic_weight)
    rank = u.shape[0] - u.shape[1]
    overlap = max((u_sem[:, :rank].mT @ u).norm(), (vh_sem[:rank] @ v).norm())
    metrics = constraint_metrics(model, semantic=True)
    torch.testing.assert_close(metrics["orth_error"], max((u.mT @ u - eye).norm(), (v.mT @ v - eye).norm()))
    torch.testing.assert_close(metrics["spectral_drift"], (s - s0).abs().max() / floor)
    torch.testing.assert_close(metrics["spectral_peak"], s.max() / floor)
    torch.testing.assert_close(metrics["semantic_overlap"], overlap, rtol=1e-4, atol=1e-5)


def test_metrics_are_maxima_over_matrices_so_depth_does_not_dilute_them(make_vit):
    values = []
    for depth in (1, 3):
        model = make_vit(depth=depth)
        inject_adapters(model, MASMConfig())
        with torch.no_grad():
            _first_subspace(model).U.mul_(1.1)  # one violated matrix among 4 or 12 blocks' worth
        values.append(constraint_metrics(model)["orth_error"].item())
    assert values[0] == pytest.approx(values[1], rel=1e-5)
