"""MASM's two constraints, as a decoupled step after the optimizer's, and the metrics that watch them.

The constraints do not add to the loss. Added to the loss, their gradient competes with the task gradient inside
Adam's per-coordinate normalisation, so whichever is larger sets the direction: with a small task gradient (the q/k
range of a pretrained ViT) the regulariser wins and learning stops, with a large one it is ignored. Decoupling them
the way AdamW decouples weight decay makes both scale-free: the optimizer moves the factors by the task gradient
alone, then :func:`apply_constraints` applies the proximal step of each penalty. The step's strength is λ times the
optimizer's learning rate η measured in the factor's own scale ℓ, so the deviation it allows does not depend on
the task-gradient norm, on η, or on the matrix size; per decomposed matrix (``U = [U_1 … U_K]`` m×T, ``s`` T,
``V`` n×T; ``0`` marks values at injection; ``σ_r`` the semantic floor, the smallest frozen singular value)::

    orthogonality (λ_o, ℓ_U = 1/√m, ℓ_V = 1/√n):   β = c/(1 + c),  c = λ_o·η/ℓ
        U ← (1 − β)·U + β·polar(U),    polar(U) = U (UᵀU)^(-1/2)          (likewise V)
    spectral consistency (λ_s, ℓ_s = σ_r):          c = λ_s·η/σ_r
        s ← s0 + (s − s0)/(1 + c),   then   s ← clamp(s, 0, cap·σ_r)
    semantic orthogonality (λ_f, Effort's ‖[U_r U]ᵀ[U_r U] − I‖; off by default):   β = c/(1 + c), c = λ_f·η/ℓ
        U ← U − β·P_f U,   P_f the projector on the frozen (semantic) basis of U's side   (likewise V)

Each line is the exact proximal operator of its penalty at step η (``λ/(2ℓ)·dist(U, Stiefel)²`` with the polar
factor held, ``λ_s/(2σ_r)·‖s − s0‖²``, ``λ_f/(2ℓ)·‖P_f U‖²``) followed by the projection onto the cap. Why this
bounds the drift by λ whatever the gradient scale: Adam moves every coordinate by at most ≈κ·η per step (κ = 1 for a
steady gradient, ≤ (1 − β₁)/√(1 − β₂) ≈ 3.2 in the worst case), i.e. by κ·η/ℓ in units of the factor's scale, while
the proximal step removes the fraction c/(1 + c) of the deviation. Hence, from any start at injection:

- spectrum: ``d = |s − s0|/σ_r`` follows ``d ← (d + κη/σ_r)/(1 + λ_s·η/σ_r)``, so **|s − s0|/σ_r ≤ κ/λ_s**;
- orthogonality: ``δ = ‖U − polar(U)‖_F`` grows by at most ``‖ΔU‖_F ≤ κη√(mT)`` per step and the pull multiplies
  it by ``1 − β`` (``polar`` is unchanged), so ``δ ≤ κ√T/λ_o`` and **‖UᵀU − I‖_F ≤ δ(2 + δ)** (likewise V).

Neither depends on the task-gradient norm, η or the matrix size; the task direction keeps moving at Adam's speed,
only the deviation is bounded (measured in ``benchmarks/regularizer_scaling.py``, ``docs/method.md``).

The cap keeps artifact values at the order of the semantic floor (``cap·σ_r``, default 2): a cap at σ_r itself
leaves a flat tail (s0 ≈ σ_r) no room to grow (0.05% measured) and pins the subspaces. Effort's Frobenius-energy
term is not kept: with U, V orthonormal and orthogonal to the semantic part, ``‖W_eff‖²_F − ‖W‖²_F = ‖s‖² − ‖s0‖²``,
which the spectral step already bounds; as a loss its gradient was 1e-13 to 1e-10 (it did nothing).

Everything runs under ``no_grad`` in float32 outside autocast (a bf16 Gram reads 2.9e-6 where float32 reads 2.7e-11),
per decomposed matrix: no mean over matrices, so λ means the same on a 1-layer and a 144-matrix model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .inject import iter_adapters
from .layer import ArtifactSubspace, MASMAdapter

__all__ = ["SubspaceConstraints", "apply_constraints", "constraint_metrics"]


@dataclass(frozen=True)
class SubspaceConstraints:
    """Strengths of the decoupled constraint step (formulas in the module docstring).

    Attributes:
        orthogonality: λ_o; ``‖UᵀU − I‖_F ≤ δ(2 + δ)`` with ``δ = κ·√T/λ_o`` (T the matrix's total rank, κ ≈ 1).
            0 switches the step off.
        spectral: λ_s; each artifact value stays within ``κ·σ_r/λ_s`` of its initial value. 0 switches the pull off
            (the cap still applies).
        semantic: λ_f, Effort's frozen-basis term: pull the artifact directions out of the span of the frozen
            semantic basis. 0 (default) leaves it off; on a side longer than the rank (``mlp.fc1``'s U, ``fc2``'s V)
            the frozen basis is computed once and cached on the adapter (one m×r float32 buffer).
        cap: artifact values are clamped to ``[0, cap·σ_r]``; ``math.inf`` switches the cap off.
    """

    orthogonality: float = 10.0
    spectral: float = 1.0
    semantic: float = 0.0
    cap: float = 2.0

    def __post_init__(self) -> None:
        for name in ("orthogonality", "spectral", "semantic"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
                raise ValueError(f"SubspaceConstraints.{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.cap, bool) or not isinstance(self.cap, (int, float)) or not self.cap > 0:
            raise ValueError(f"SubspaceConstraints.cap must be > 0 (math.inf for no cap), got {self.cap!r}")

    @property
    def active(self) -> bool:
        """Whether the step changes anything at all."""
        return bool(self.orthogonality or self.spectral or self.semantic or math.isfinite(self.cap))


def _adapters(adapters: nn.Module | Iterable[MASMAdapter]) -> list[MASMAdapter]:
    found = [a for _, a in iter_adapters(adapters)] if isinstance(adapters, nn.Module) else list(adapters)
    if not found:
        raise ValueError(f"no MASM adapters found in {type(adapters).__name__}; call inject_adapters first")
    return found


def _blocks(adapters: list[MASMAdapter]) -> Iterator[tuple[MASMAdapter, int, list[ArtifactSubspace]]]:
    for adapter in adapters:
        for block in range(adapter.num_blocks):
            yield adapter, block, adapter.block_subspaces(block)


@contextlib.contextmanager
def _small_work(device_type: str) -> Iterator[None]:
    """Autocast off and, on a CPU, one intra-op thread: the constraint work is ~1,000 ops on m×T factors and T×T
    Grams, too small to split across threads, where the thread hand-off dominates (a 3072×16 Gram: 64 µs on one
    thread, 3.2 ms on two on the shared 2-core machine under load). The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    single = device_type == "cpu" and threads > 1
    if single:
        torch.set_num_threads(1)
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        if single:
            torch.set_num_threads(threads)


def _learning_rates(optimizer: torch.optim.Optimizer | float) -> Mapping[int, float] | float:
    """Parameter id → learning rate of its group (a LightningOptimizer wrapper is unwrapped)."""
    if isinstance(optimizer, (int, float)):
        return float(optimizer)
    optimizer = getattr(optimizer, "optimizer", optimizer)
    return {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}


def _full_rank(adapter: MASMAdapter, block: int) -> int:
    """``min(m_b, n)`` of one row block: the rank of the whole spectrum (``MASMLinear`` and ``MASMConv2d`` alike)."""
    rows, cols = adapter.semantic_block(block).shape
    return min(rows, cols)


def _fraction(strength: float, lr: float, scale: float) -> float:
    """``c/(1 + c)`` with ``c = λ·η/ℓ``: the share of the deviation one proximal step removes."""
    c = strength * lr / scale
    return c / (1 + c)


def _inverse_sqrt(grams: Tensor) -> Tensor:
    """``G^(-1/2)`` for a batch of symmetric positive definite T×T matrices, in float64 (one batched eigh)."""
    values, vectors = torch.linalg.eigh(grams.double())
    return (vectors * values.clamp_min(1e-8).rsqrt()[..., None, :]) @ vectors.mT


def _frozen_basis(adapter: MASMAdapter, block: int, side: str) -> Tensor:
    """Orthonormal basis of the frozen semantic directions on one side of a block (left: m×r, right: n×r)."""
    name = f"_frozen_basis_{side}{block}"
    cached = getattr(adapter, name, None)
    if cached is None:
        w_sem = adapter.semantic_block(block).detach().float()
        u, _, vh = torch.linalg.svd(w_sem, full_matrices=False)
        rank = min(w_sem.shape) - sum(adapter.ranks)
        cached = (u if side == "U" else vh.mT)[:, :rank].contiguous()
        adapter.register_buffer(name, cached, persistent=False)  # follows the adapter's .to(device)
    return cached


@torch.no_grad()
def apply_constraints(
    adapters: nn.Module | Iterable[MASMAdapter],
    optimizer: torch.optim.Optimizer | float,
    constraints: SubspaceConstraints = SubspaceConstraints(),  # a frozen dataclass: safe as a default
) -> None:
    """The decoupled constraint step: call once after every ``optimizer.step()``, before ``zero_grad()``.

    Args:
        adapters: a model holding MASM adapters, or the adapters.
        optimizer: the optimizer that just stepped (each factor's group learning rate η is read from it), or η.
        constraints: the strengths; see :class:`SubspaceConstraints` and the module docstring for the formulas.

    A subspace whose factors all have ``grad is None`` (the optimizer skipped them, e.g. a layer mask) is left
    bit-identical, as is any factor the optimizer does not hold. Runs under ``no_grad`` in float32 with autocast
    off, whatever the factors' dtype. σ_r is floored at 1e-3 of the matrix's RMS singular value, so a rank-deficient
    weight (σ_r = 0) does not pin its subspaces at 0.
    """
    if not constraints.active:
        return
    lrs = _learning_rates(optimizer)
    lr_of = (lambda p: lrs) if isinstance(lrs, float) else (lambda p: lrs.get(id(p), 0.0))
    device_type = next(iter(_adapters(adapters))).semantic_weight.device.type
    with _small_work(device_type):
        sides: list[tuple[Tensor, list[nn.Parameter], float]] = []  # (factor in fp32, its parameters, β_orth)
        for adapter, block, subs in _blocks(_adapters(adapters)):
            subs = [x for x in subs if any(p.grad is not None for p in x.factors())]
            if not subs:
                continue
            floor = adapter.semantic_floor[block].float()
            full_rank = _full_rank(adapter, block)
            scale = torch.maximum(floor, 1e-3 * (adapter.energy[block].float() / full_rank).sqrt())
            for x in subs:  # spectral consistency: proximal pull toward s0, then the cap
                lr = lr_of(x.s)
                s = x.s.float()
                if constraints.spectral and lr:
                    s = x.s0.float() + (s - x.s0.float()) / (1 + constraints.spectral * lr / scale)
                s = s.clamp(0, constraints.cap * float(scale)) if math.isfinite(constraints.cap) else s.clamp_min(0)
                if lr:
                    x.s.copy_(s)
            for side in ("U", "V"):
                params = [getattr(x, side) for x in subs]
                lr = lr_of(params[0])
                if not lr:
                    continue
                factor = torch.cat([p.float() for p in params], 1)  # (m or n, T')
                length = factor.shape[0]
                if constraints.semantic:
                    beta = _fraction(constraints.semantic, lr, 1 / math.sqrt(length))
                    if length == full_rank:
                        # The side spans the full rank: the frozen basis is the complement of the initial tail.
                        init = torch.cat([getattr(x, side + "0").float() for x in adapter.block_subspaces(block)], 1)
                        on_frozen = factor - init @ (init.mT @ factor)
                    else:
                        basis = _frozen_basis(adapter, block, side)
                        on_frozen = basis @ (basis.mT @ factor)
                    factor = factor - beta * on_frozen
                beta = _fraction(constraints.orthogonality, lr, 1 / math.sqrt(length))
                sides.append((factor, params, beta))
        if not sides:
            return
        # One batched eigh for every side whose Gram has the same size (all of them for uniform ranks).
        by_size: dict[int, list[int]] = {}
        for i, (factor, _, _) in enumerate(sides):
            by_size.setdefault(factor.shape[1], []).append(i)
        for size, members in by_size.items():
            grams = torch.stack([sides[i][0].mT @ sides[i][0] for i in members])
            needs = [sides[i][2] > 0 for i in members]
            inv_sqrt = _inverse_sqrt(grams) if any(needs) else None
            eye = torch.eye(size, dtype=torch.float64, device=grams.device)
            for j, i in enumerate(members):
                factor, params, beta = sides[i]
                if needs[j] and inv_sqrt is not None:  # (1 − β)U + β·U G^(-1/2) = U·((1 − β)I + β G^(-1/2))
                    factor = factor @ ((1 - beta) * eye + beta * inv_sqrt[j]).to(factor.dtype)
                start = 0
                for p in params:
                    p.copy_(factor[:, start : start + p.shape[1]])
                    start += p.shape[1]


@torch.no_grad()
def constraint_metrics(adapters: nn.Module | Iterable[MASMAdapter], semantic: bool = False) -> dict[str, Tensor]:
    """What the constraints bound, as maxima over decomposed matrices (float32, autocast off).

    Returns:
        ``orth_error``: ``max ‖UᵀU − I‖_F`` over every U and V (subspaces of one matrix together, so overlap between
        subspaces counts); ``spectral_drift``: ``max |s − s0|/σ_r``; ``spectral_peak``: ``max s/σ_r`` (the cap
        bounds it); with ``semantic=True`` also ``semantic_overlap``: ``max ‖P_f U‖_F`` over both sides, the part of
        the artifact directions inside the frozen basis (one thin m·n·T product per matrix).
    """
    found = _adapters(adapters)
    with _small_work(found[0].semantic_weight.device.type):
        orth, drift, peak, overlap = [], [], [], []
        for adapter, block, subs in _blocks(found):
            u = torch.cat([x.U.float() for x in subs], 1)
            v = torch.cat([x.V.float() for x in subs], 1)
            s, s0 = torch.cat([x.s.float() for x in subs]), torch.cat([x.s0.float() for x in subs])
            floor = adapter.semantic_floor[block].float().clamp_min(1e-12)
            eye = torch.eye(u.shape[1], device=u.device)
            orth += [(u.mT @ u - eye).norm(), (v.mT @ v - eye).norm()]
            drift.append((s - s0).abs().max() / floor)
            peak.append(s.max() / floor)
            if semantic:
                full_rank = _full_rank(adapter, block)
                for side, factor in (("U", u), ("V", v)):
                    if factor.shape[0] == full_rank:  # the frozen basis is the complement of the initial tail
                        init = torch.cat([getattr(x, side + "0").float() for x in subs], 1)
                        overlap.append((factor - init @ (init.mT @ factor)).norm())
                    else:
                        basis = _frozen_basis(adapter, block, side)
                        overlap.append((basis.mT @ factor).norm())
        out = {
            "orth_error": torch.stack(orth).max(),
            "spectral_drift": torch.stack(drift).max(),
            "spectral_peak": torch.stack(peak).max(),
        }
        if semantic:
            out["semantic_overlap"] = torch.stack(overlap).max()
        return out
