"""The MASM adapter: one ``nn.Linear`` split into a frozen semantic weight and trainable artifact subspaces."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .svd import split_spectrum

__all__ = ["ArtifactSubspace", "MASMLinear"]


def frobenius_inner(u1: Tensor, s1: Tensor, v1: Tensor, u2: Tensor, s2: Tensor, v2: Tensor) -> Tensor:
    """``⟨U1 diag(s1) V1ᵀ, U2 diag(s2) V2ᵀ⟩_F`` from small Gram matrices, never forming an m×n product.

    ``tr(V1 S1 U1ᵀ U2 S2 V2ᵀ) = Σ_ij s1_i s2_j (U1ᵀU2)_ij (V1ᵀV2)_ij``: cost O((m + n)·d1·d2).
    """
    return ((u1.mT @ u2) * (v1.mT @ v2) * s1[:, None] * s2[None, :]).sum()


class ArtifactSubspace(nn.Module):
    """One trainable artifact subspace ``U diag(s) Vᵀ`` of one (block of a) wrapped Linear.

    ``U`` (m×d), ``s`` (d), ``V`` (n×d) are the trainable factors; ``U0``, ``s0``, ``V0`` are their values at
    injection, kept as non-persistent buffers: everything that reads them (``unload()``, the fitting strength, the
    spectral loss) uses ``U0 diag(s0) V0ᵀ`` or ``s0``, which a fresh SVD of the same base weights reproduces even
    where it flips the signs of (u, v) pairs; checkpoints therefore carry only the trainable factors.
    """

    def __init__(self, u: Tensor, s: Tensor, v: Tensor, block: int, index: int) -> None:
        super().__init__()
        self.block = block  # which part of a fused projection (0 for an unfused Linear)
        self.index = index  # k, 0 = nearest the semantic part
        self.U = nn.Parameter(u.clone())
        self.s = nn.Parameter(s.clone())
        self.V = nn.Parameter(v.clone())
        self.register_buffer("U0", u.clone(), persistent=False)
        self.register_buffer("s0", s.clone(), persistent=False)
        self.register_buffer("V0", v.clone(), persistent=False)

    @property
    def rank(self) -> int:
        return self.s.numel()

    def factors(self) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        """The trainable ``(U, s, V)``: what a mask callback reads gradients from and masks."""
        return self.U, self.s, self.V

    @torch.no_grad()
    def fitting_strength(self) -> Tensor:
        """``‖U s Vᵀ − U0 s0 V0ᵀ‖_F / ‖U0 s0 V0ᵀ‖_F``, factorised: how far training moved this subspace."""
        now, init = (self.U, self.s, self.V), (self.U0, self.s0, self.V0)
        change = frobenius_inner(*now, *now) + frobenius_inner(*init, *init) - 2 * frobenius_inner(*now, *init)
        return change.clamp_min(0).sqrt() / frobenius_inner(*init, *init).sqrt().clamp_min(1e-12)

    def extra_repr(self) -> str:
        return f"block={self.block}, index={self.index}, U={tuple(self.U.shape)}, V={tuple(self.V.shape)}"


class MASMLinear(nn.Module):
    """A drop-in for ``nn.Linear`` whose weight is ``W_sem + Σ_k U_k diag(s_k) V_kᵀ``.

    ``W_sem`` (``semantic_weight``) is the frozen rest of the SVD; its dense matmul is the only full-size work.
    The artifact subspaces of all blocks run as one thin path, ``((x V) ⊙ s) Uᵀ`` with the factors of every
    subspace concatenated (one matmul per side is faster than one per subspace), so backward never forms an m×n
    weight gradient. A fused projection (``qkv``) is split into ``num_blocks`` row blocks, each with its own SVD.

    Args:
        base: the Linear to wrap; it is not kept (``unload()`` rebuilds it from the frozen parts).
        ranks: rank of each artifact subspace (K entries).
        semantic_rank: frozen top triplets per block; None keeps all but the artifact tail.
        num_blocks: how many row blocks ``base`` stacks (3 for a fused ``qkv``).
        name: the module's name in its model, for error messages.
    """

    def __init__(
        self,
        base: nn.Linear,
        ranks: Sequence[int],
        semantic_rank: int | None = None,
        num_blocks: int = 1,
        name: str = "linear",
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{name}: MASM wraps nn.Linear modules, got {type(base).__name__}")
        if base.out_features % num_blocks:
            raise ValueError(
                f"{name}: cannot split {base.out_features} output features into {num_blocks} equal fused blocks"
            )
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.num_blocks = num_blocks
        self.ranks = tuple(ranks)
        rows = base.out_features // num_blocks
        semantic, floors, energies, subspaces = [], [], [], []
        for b in range(num_blocks):
            where = name if num_blocks == 1 else f"{name} (block {b} of {num_blocks})"
            split = split_spectrum(base.weight[b * rows : (b + 1) * rows], self.ranks, semantic_rank, where)
            semantic.append(split.semantic)
            floors.append(split.semantic_floor)
            energies.append(split.energy)
            subspaces += [ArtifactSubspace(*f, block=b, index=k) for k, f in enumerate(split.factors)]
        # A frozen Parameter, not a buffer: it is as large as the original weight, and DDP re-broadcasts buffers
        # on every forward.
        self.semantic_weight = nn.Parameter(torch.cat(semantic), requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.subspaces = nn.ModuleList(subspaces)
        # Recomputed from the base weights at injection, like U0/s0/V0.
        self.register_buffer("semantic_floor", torch.stack(floors), persistent=False)  # (num_blocks,): σ_r
        self.register_buffer("energy", torch.stack(energies), persistent=False)  # (num_blocks,): ‖W_b‖²_F

    def block_subspaces(self, block: int) -> list[ArtifactSubspace]:
        """The K subspaces of one row block, in order."""
        k = len(self.ranks)
        return list(self.subspaces[block * k : (block + 1) * k])

    def semantic_block(self, block: int) -> Tensor:
        """Rows of ``W_sem`` belonging to one block (a view)."""
        rows = self.out_features // self.num_blocks
        return self.semantic_weight[block * rows : (block + 1) * rows]

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.semantic_weight, self.bias)
        # s is folded into the small V (n×T) rather than scaling the (tokens×T) activations.
        v = torch.cat([sub.V * sub.s for sub in self.subspaces], dim=1)  # (n, B·T)
        if self.num_blocks == 1:
            u = torch.cat([sub.U for sub in self.subspaces], dim=1)  # (m, T)
        else:  # block-diagonal: each block's U writes only that block's rows
            u = torch.block_diag(*(torch.cat([sub.U for sub in self.block_subspaces(b)], dim=1)
                                   for b in range(self.num_blocks)))  # (m, B·T)
        # addmm accumulates into the frozen path's output instead of allocating a second (tokens×m) tensor.
        return torch.addmm(out.reshape(-1, self.out_features), (x @ v).reshape(-1, v.shape[1]), u.mT).view_as(out)

    def _linear(self, weight: Tensor) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear

    @torch.no_grad()
    def merged_weight(self, initial: bool = False) -> Tensor:
        """Dense effective weight ``W_sem + Σ U s Vᵀ`` (or the injected original with ``initial=True``)."""
        weight = self.semantic_weight.detach().clone()
        rows = self.out_features // self.num_blocks
        for sub in self.subspaces:
            u, s, v = (sub.U0, sub.s0, sub.V0) if initial else (sub.U, sub.s, sub.V)
            weight[sub.block * rows : (sub.block + 1) * rows] += (u * s) @ v.mT
        return weight

    def merge(self) -> nn.Linear:
        """A plain, frozen ``nn.Linear`` computing what this adapter computes now."""
        return self._linear(self.merged_weight())

    def unload(self) -> nn.Linear:
        """A plain, frozen ``nn.Linear`` with the weight as it was before injection (to float32 round-off)."""
        return self._linear(self.merged_weight(initial=True))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.num_blocks}, "
                f"ranks={list(self.ranks)}, bias={self.bias is not None}")
