"""MASM's two regularisers, computed from the factors alone (no dense m×n product per layer).

Both are averaged over *decomposed matrices* (every row block of every adapter: q, k and v of a fused ``qkv`` count
as three), so their scale does not grow with depth or with the number of targets, and a λ tuned on ViT-B carries
over to ViT-L. Notation per matrix: ``U = [U_1 … U_K]`` (m×T), ``s`` (T), ``V`` (n×T), ``T = Σ d_k``; ``0`` marks
values at injection; ``W_sem`` is the frozen semantic weight, ``σ_r`` its smallest kept singular value.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from .inject import iter_adapters
from .layer import MASMLinear, frobenius_inner

__all__ = ["orthogonality_loss", "spectral_consistency_loss"]


def _matrices(adapters: nn.Module | Iterable[MASMLinear]) -> Iterator[tuple[MASMLinear, int, Tensor, Tensor, Tensor]]:
    """Per decomposed matrix: its adapter, block index and concatenated trainable factors U, s, V."""
    found = (a for _, a in iter_adapters(adapters)) if isinstance(adapters, nn.Module) else adapters
    for adapter in found:
        for block in range(adapter.num_blocks):
            subs = adapter.block_subspaces(block)
            yield (adapter, block, torch.cat([x.U for x in subs], 1), torch.cat([x.s for x in subs]),
                   torch.cat([x.V for x in subs], 1))


def _gram_deviation(a: Tensor) -> Tensor:
    """``‖aᵀa − I‖²_F``."""
    gram = a.mT @ a
    return (gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)).square().sum()


def _mean(terms: list[Tensor], adapters: object) -> Tensor:
    if not terms:
        raise ValueError(f"no MASM adapters found in {type(adapters).__name__}; call inject_adapters first")
    return torch.stack(terms).mean()


def orthogonality_loss(adapters: nn.Module | Iterable[MASMLinear], semantic_weight: float = 0.0) -> Tensor:
    """Artifact subspaces stay orthonormal bases, complementary to each other and (optionally) to the semantics.

    Per matrix::

        L = ‖UᵀU − I‖²_F + ‖VᵀV − I‖²_F
            + semantic_weight · (‖W_semᵀ U‖²_F + ‖W_sem V‖²_F) / ‖W_sem‖²_F

    The diagonal blocks of ``UᵀU − I`` ask each ``U_k`` to stay orthonormal; the off-diagonal blocks are
    ``U_iᵀ U_j`` (i ≠ j), so the same norm drives different subspaces apart (non-redundant). The semantic term is
    the share of the frozen weight's energy that the artifact directions touch (``U_semᵀ U_k`` weighted by the
    semantic singular values); it costs one thin ``m·n·T`` product, hence off by default. All terms are 0 at
    injection (to round-off). Returns the mean over decomposed matrices.
    """
    terms = []
    for adapter, block, u, _, v in _matrices(adapters):
        loss = _gram_deviation(u) + _gram_deviation(v)
        if semantic_weight:
            w_sem = adapter.semantic_block(block)
            sem_energy = adapter.energy[block] - torch.cat([x.s0 for x in adapter.block_subspaces(block)]).square().sum()
            overlap = (w_sem.mT @ u).square().sum() + (w_sem @ v).square().sum()
            loss = loss + semantic_weight * overlap / sem_energy.clamp_min(1e-12)
        terms.append(loss)
    return _mean(terms, adapters)


def spectral_consistency_loss(
    adapters: nn.Module | Iterable[MASMLinear],
    energy_weight: float = 1.0,
    drift_weight: float = 1.0,
    cap_weight: float = 1.0,
) -> Tensor:
    """The spectrum of every adapted matrix stays that of the pretrained one.

    Per matrix, with ``W_eff = W_sem + U diag(s) Vᵀ`` and ``E0 = ‖W‖²_F`` at injection::

        energy = ((‖W_eff‖²_F − E0) / E0)²
        drift  = ‖s − s0‖² / σ_r²
        cap    = ‖relu(s − σ_r)‖² / σ_r²
        L      = energy_weight·energy + drift_weight·drift + cap_weight·cap

    ``energy`` keeps the Frobenius energy (Effort's singular-value-keeping loss); ``drift`` keeps each subspace's
    singular values near their initial ones, measured against the semantic floor σ_r rather than s0 itself because
    trailing singular values can be ~0; ``cap`` keeps artifact values below the smallest semantic one, so the
    subspaces stay minor components. ``‖W_eff‖²_F`` is expanded as
    ``‖W_sem‖² + 2⟨W_sem, USVᵀ⟩ + ‖USVᵀ‖²`` with ``‖W_sem‖² = E0 − ‖s0‖²`` (orthogonal parts),
    ``⟨W_sem, USVᵀ⟩ = Σ_j s_j u_jᵀ (W_sem V)_j`` (one thin product) and
    ``‖USVᵀ‖² = Σ_ij s_i s_j (UᵀU)_ij (VᵀV)_ij`` (T×T Grams). All terms are 0 at injection (to round-off).
    Returns the mean over decomposed matrices.
    """
    terms = []
    for adapter, block, u, s, v in _matrices(adapters):
        s0 = torch.cat([x.s0 for x in adapter.block_subspaces(block)])
        energy0, floor = adapter.energy[block], adapter.semantic_floor[block]
        loss = drift_weight * (s - s0).square().sum() / floor.square()
        loss = loss + cap_weight * torch.relu(s - floor).square().sum() / floor.square()
        if energy_weight:  # the one thin m·n·T product of this function
            cross = ((u * (adapter.semantic_block(block) @ v)).sum(0) * s).sum()
            change = 2 * cross + frobenius_inner(u, s, v, u, s, v) - s0.square().sum()  # ‖W_eff‖² − E0 directly
            loss = loss + energy_weight * (change / energy0).square()
        terms.append(loss)
    return _mean(terms, adapters)
