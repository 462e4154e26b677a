"""Pure tensor functions: split a weight's spectrum into a frozen semantic part and artifact subspaces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SpectralSplit", "check_ranks", "fused_parts", "split_spectrum"]


class SpectralSplit(NamedTuple):
    """One matrix ``W`` (m×n) split as ``W = semantic + Σ_k U_k diag(s_k) V_kᵀ``."""

    semantic: Tensor  # (m, n): W minus the artifact triplets, in W's dtype
    semantic_floor: Tensor  # (): the smallest singular value kept frozen (σ_r, or below it when r < p − T)
    energy: Tensor  # (): ‖W‖²_F, computed in float32
    factors: list[tuple[Tensor, Tensor, Tensor]]  # per subspace: U_k (m, d_k), s_k (d_k,), V_k (n, d_k)


def fused_parts(module_name: str) -> int:
    """How many projections a fused Linear stacks along its output: 3 for ``…qkv``, 2 for ``…kv``, else 1."""
    leaf = module_name.rsplit(".", 1)[-1]
    return {"qkv": 3, "kv": 2}.get(leaf, 1)


def check_ranks(shape: tuple[int, int], ranks: Sequence[int], semantic_rank: int | None, name: str) -> int:
    """Validate the split of an m×n matrix before any SVD; return the semantic rank r it implies.

    Raises:
        ValueError: if the subspaces leave no semantic part or overlap the requested semantic rank.
    """
    m, n = shape
    full_rank, tail = min(m, n), sum(ranks)
    if tail >= full_rank:
        raise ValueError(
            f"{name}: {len(ranks)} artifact subspaces of ranks {list(ranks)} need {tail} singular triplets, but this "
            f"{m}x{n} matrix has {full_rank}, which leaves no semantic part; lower num_subspaces or subspace_rank "
            f"so that their total is below {full_rank}"
        )
    kept = full_rank - tail if semantic_rank is None else semantic_rank
    if kept + tail > full_rank:
        raise ValueError(
            f"{name}: semantic_rank={semantic_rank} plus {tail} artifact triplets exceeds the {full_rank} singular "
            f"values of this {m}x{n} matrix; use semantic_rank <= {full_rank - tail} or null"
        )
    return kept


def split_spectrum(
    weight: Tensor, ranks: Sequence[int], semantic_rank: int | None = None, name: str = "weight"
) -> SpectralSplit:
    """SVD ``weight`` once in float32 on its own device and split off ``len(ranks)`` trailing subspaces.

    The artifact subspaces are the trailing ``sum(ranks)`` triplets: subspace K-1 holds the smallest singular values.
    Triplets between the top ``semantic_rank`` and the tail (if any) stay frozen with the semantic part.
    Raises ``ValueError`` as :func:`check_ranks` does.
    """
    m, n = weight.shape
    full_rank, tail = min(m, n), sum(ranks)
    check_ranks((m, n), ranks, semantic_rank, name)
    w32 = weight.detach().to(torch.float32)
    u, s, vh = torch.linalg.svd(w32, full_matrices=False)  # u (m, p), s (p,), vh (p, n)
    v = vh.mT  # (n, p)
    factors = []
    start = full_rank - tail
    for d in ranks:
        block = slice(start, start + d)
        factors.append((u[:, block].contiguous(), s[block].clone(), v[:, block].contiguous()))
        start += d
    u_tail, s_tail, v_tail = u[:, full_rank - tail :], s[full_rank - tail :], v[:, full_rank - tail :]
    semantic = w32 - (u_tail * s_tail) @ v_tail.mT  # (m, n)
    return SpectralSplit(
        semantic=semantic.to(weight.dtype),
        semantic_floor=s[full_rank - tail - 1].clone(),  # W_sem keeps every triplet above the artifact tail
        energy=w32.square().sum(),
        factors=[tuple(f.to(weight.dtype) for f in triplet) for triplet in factors],
    )
