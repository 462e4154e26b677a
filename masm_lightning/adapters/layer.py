"""The MASM adapters: one ``nn.Linear`` or pointwise ``nn.Conv2d`` split into a frozen semantic weight and trainable
artifact subspaces."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .svd import split_spectrum

__all__ = ["ArtifactSubspace", "MASMAdapter", "MASMConv2d", "MASMLinear", "pointwise_conv_problem"]


def frobenius_inner(u1: Tensor, s1: Tensor, v1: Tensor, u2: Tensor, s2: Tensor, v2: Tensor) -> Tensor:
    """``⟨U1 diag(s1) V1ᵀ, U2 diag(s2) V2ᵀ⟩_F`` from small Gram matrices, never forming an m×n product.

    ``tr(V1 S1 U1ᵀ U2 S2 V2ᵀ) = Σ_ij s1_i s2_j (U1ᵀU2)_ij (V1ᵀV2)_ij``: cost O((m + n)·d1·d2).
    """
    return ((u1.mT @ u2) * (v1.mT @ v2) * s1[:, None] * s2[None, :]).sum()


class ArtifactSubspace(nn.Module):
    """One trainable artifact subspace ``U diag(s) Vᵀ`` of one (block of a) wrapped layer.

    ``U`` (m×d), ``s`` (d), ``V`` (n×d) are the trainable factors; ``U0``, ``s0``, ``V0`` are their values at
    injection, kept as non-persistent buffers: everything that reads them (``unload()``, the fitting strength, the
    spectral loss) uses ``U0 diag(s0) V0ᵀ`` or ``s0``, which a fresh SVD of the same base weights reproduces even
    where it flips the signs of (u, v) pairs; checkpoints therefore carry only the trainable factors.
    """

    # Buffers, declared so they type as Tensor (nn.Module.__getattr__ types them as Tensor | Module).
    U0: Tensor
    s0: Tensor
    V0: Tensor

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


def _artifact_subspaces(modules: Iterable[nn.Module]) -> list[ArtifactSubspace]:
    """The items of an adapter's ``subspaces``: nn.ModuleList is not generic in torch's stubs (items type as Module),
    and only :class:`ArtifactSubspace` instances are ever put in it."""
    return cast("list[ArtifactSubspace]", list(modules))


class MASMAdapter(nn.Module):
    """The MASM split of one layer whose weight is a matrix ``W`` (m×n): ``W = W_sem + Σ_k U_k diag(s_k) V_kᵀ``.

    ``W_sem`` (``semantic_weight``, m×n for every kind of layer) is the frozen rest of the SVD; its dense product
    is the only full-size work. The artifact subspaces of all blocks run as one thin path with the factors of every
    subspace concatenated (one product per side is faster than one per subspace), so backward never forms an m×n
    weight gradient. A fused projection (``qkv``) is split into ``num_blocks`` row blocks, each with its own SVD.

    Subclasses say how the matrix acts on their input (:class:`MASMLinear`: over the last dimension,
    :class:`MASMConv2d`: over channels at every pixel) and which plain layer ``merge()``/``unload()`` rebuild;
    everything a regulariser or a mask callback reads (``subspaces``, ``block_subspaces``, ``semantic_block``,
    ``energy``, ``semantic_floor``) lives here, identical for both.

    Args:
        weight: the layer's weight as an m×n matrix (outputs × inputs); it is not kept.
        bias: the layer's bias (m) or None; kept frozen.
        ranks: rank of each artifact subspace (K entries).
        semantic_rank: frozen top triplets per block; None keeps all but the artifact tail.
        num_blocks: how many row blocks ``weight`` stacks (3 for a fused ``qkv``).
        name: the module's name in its model, for error messages.
    """

    # Buffers, declared so they type as Tensor (nn.Module.__getattr__ types them as Tensor | Module).
    semantic_floor: Tensor
    energy: Tensor
    column_subspace: Tensor

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        ranks: Sequence[int],
        semantic_rank: int | None = None,
        num_blocks: int = 1,
        name: str = "layer",
    ) -> None:
        super().__init__()
        rows = weight.shape[0] // num_blocks
        if weight.shape[0] % num_blocks:
            raise ValueError(f"{name}: cannot split {weight.shape[0]} outputs into {num_blocks} equal fused blocks")
        self.num_blocks = num_blocks
        self.ranks = tuple(ranks)
        semantic, floors, energies, subspaces = [], [], [], []
        for b in range(num_blocks):
            where = name if num_blocks == 1 else f"{name} (block {b} of {num_blocks})"
            split = split_spectrum(weight[b * rows : (b + 1) * rows], self.ranks, semantic_rank, where)
            semantic.append(split.semantic)
            floors.append(split.semantic_floor)
            energies.append(split.energy)
            subspaces += [ArtifactSubspace(*f, block=b, index=k) for k, f in enumerate(split.factors)]
        # A frozen Parameter, not a buffer: it is as large as the original weight, and DDP re-broadcasts buffers
        # on every forward.
        self.semantic_weight = nn.Parameter(torch.cat(semantic), requires_grad=False)  # (m, n)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.subspaces = nn.ModuleList(subspaces)
        # Recomputed from the base weights at injection, like U0/s0/V0.
        self.register_buffer("semantic_floor", torch.stack(floors), persistent=False)  # (num_blocks,): σ_r
        self.register_buffer("energy", torch.stack(energies), persistent=False)  # (num_blocks,): ‖W_b‖²_F
        # The subspace index k of every column of the thin path (thin_factors' order), for routing.
        index = [sub.index for sub in _artifact_subspaces(self.subspaces) for _ in range(sub.rank)]
        self.register_buffer("column_subspace", torch.tensor(index, dtype=torch.long), persistent=False)
        # (B, K) bool while a route_subspaces block is active: which subspaces each sample may train.
        self.route_mask: Tensor | None = None
        self.name = name

    def block_subspaces(self, block: int) -> list[ArtifactSubspace]:
        """The K subspaces of one row block, in order."""
        k = len(self.ranks)
        return _artifact_subspaces(self.subspaces[block * k : (block + 1) * k])

    def semantic_block(self, block: int) -> Tensor:
        """Rows of ``W_sem`` belonging to one block (a view)."""
        rows = self.semantic_weight.shape[0] // self.num_blocks
        return self.semantic_weight[block * rows : (block + 1) * rows]

    def thin_factors(self) -> tuple[Tensor, Tensor]:
        """The artifact path as two thin matrices ``(V·s, U)``: ``Σ_k U_k diag(s_k) V_kᵀ = U (V·s)ᵀ``.

        Returns ``v`` (n, B·T) with s folded in (cheaper than scaling the activations) and ``u`` (m, B·T),
        block-diagonal over fused blocks so each block's U writes only that block's rows.
        """
        subspaces = _artifact_subspaces(self.subspaces)
        v = torch.cat([sub.V * sub.s for sub in subspaces], dim=1)  # (n, B·T)
        if self.num_blocks == 1:
            u = torch.cat([sub.U for sub in subspaces], dim=1)  # (m, T)
        else:
            u = torch.block_diag(
                *(torch.cat([sub.U for sub in self.block_subspaces(b)], dim=1) for b in range(self.num_blocks))
            )  # (m, B·T)
        return v, u

    def routed_up(self, h: Tensor, u: Tensor, channel_dim: int) -> Tensor:
        """``h Uᵀ`` over ``channel_dim`` (the thin path's second product), routed when :attr:`route_mask` is set.

        With the per-sample column mask ``m`` (1 where the sample may train that column's subspace) the result is
        ``(h ⊙ m) Uᵀ + ((h ⊙ (1 − m)) Uᵀ).detach()``: the same values (to float round-off), but a sample sends no
        gradient to the factors (U, s, V) of a subspace it is not routed to — nor, through that subspace, to the
        layer's input. ``h`` has the samples first; a leading dimension that is a multiple of the mask's B (a
        window-partitioned batch, sample-major) repeats each sample's row.
        """
        mask = self.route_mask
        if mask is None:
            return torch.movedim(torch.movedim(h, channel_dim, -1) @ u.mT, -1, channel_dim)
        samples = mask.shape[0]
        if h.shape[0] % samples:
            raise ValueError(
                f"{self.name}: a routing mask for {samples} samples does not fit an input of {h.shape[0]} rows"
            )
        columns = mask[:, self.column_subspace].to(h.dtype).repeat_interleave(h.shape[0] // samples, dim=0)
        shape = [h.shape[0]] + [1] * (h.ndim - 1)
        shape[channel_dim] = columns.shape[1]
        columns = columns.view(shape)
        routed = torch.movedim(torch.movedim(h * columns, channel_dim, -1) @ u.mT, -1, channel_dim)
        rest = torch.movedim(torch.movedim(h * (1 - columns), channel_dim, -1) @ u.mT, -1, channel_dim)
        return routed + rest.detach()

    @torch.no_grad()
    def merged_weight(self, initial: bool = False) -> Tensor:
        """Dense effective matrix ``W_sem + Σ U s Vᵀ`` (m×n), or the injected original with ``initial=True``."""
        weight = self.semantic_weight.detach().clone()
        rows = weight.shape[0] // self.num_blocks
        for sub in _artifact_subspaces(self.subspaces):
            u, s, v = (sub.U0, sub.s0, sub.V0) if initial else (sub.U, sub.s, sub.V)
            weight[sub.block * rows : (sub.block + 1) * rows] += (u * s) @ v.mT
        return weight

    def _rebuild(self, weight: Tensor) -> nn.Module:
        """The plain, frozen layer with this m×n ``weight`` and the adapter's bias."""
        raise NotImplementedError

    def merge(self) -> nn.Module:
        """A plain, frozen layer of the wrapped kind computing what this adapter computes now."""
        return self._rebuild(self.merged_weight())

    def unload(self) -> nn.Module:
        """A plain, frozen layer of the wrapped kind with the weight as it was before injection (float32 round-off)."""
        return self._rebuild(self.merged_weight(initial=True))

    def _frozen_bias(self) -> nn.Parameter | None:
        return None if self.bias is None else nn.Parameter(self.bias.detach().clone(), requires_grad=False)


class MASMLinear(MASMAdapter):
    """A drop-in for ``nn.Linear`` whose weight is ``W_sem + Σ_k U_k diag(s_k) V_kᵀ`` (see :class:`MASMAdapter`).

    The artifact path is ``((x V) ⊙ s) Uᵀ``, accumulated into the frozen path's output.

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
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{name}: MASMLinear wraps nn.Linear modules, got {type(base).__name__}")
        super().__init__(base.weight, base.bias, ranks, semantic_rank, num_blocks, name)
        self.in_features = base.in_features
        self.out_features = base.out_features

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.semantic_weight, self.bias)
        v, u = self.thin_factors()
        if self.route_mask is not None:
            return out + self.routed_up(x @ v, u, -1)
        # addmm accumulates into the frozen path's output instead of allocating a second (tokens×m) tensor.
        return torch.addmm(out.reshape(-1, self.out_features), (x @ v).reshape(-1, v.shape[1]), u.mT).view_as(out)

    def _rebuild(self, weight: Tensor) -> nn.Linear:
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=weight.device, dtype=weight.dtype
        )
        linear.weight = nn.Parameter(weight, requires_grad=False)
        bias = self._frozen_bias()
        if bias is not None:  # built with bias=False otherwise: its bias is already None
            linear.bias = bias
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.num_blocks}, "
            f"ranks={list(self.ranks)}, bias={self.bias is not None}"
        )


def pointwise_conv_problem(module: nn.Module) -> str | None:
    """Why ``module`` is not a pointwise convolution :class:`MASMConv2d` can wrap, or None if it is one.

    Wrappable: an ``nn.Conv2d`` with a 1×1 kernel, ``groups=1`` and zero padding (any stride, any dilation) whose
    class keeps ``nn.Conv2d.forward``. A subclass with its own forward may transform its weight (timm's
    ``StdConv2d`` standardises it), so wrapping it would not be exact. (timm builds its TF-"same" 1×1 convolutions
    as plain ``nn.Conv2d``: "same" padding is 0 at 1×1.)
    """
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not an nn.Conv2d"
    kh, kw = module.kernel_size
    if (kh, kw) != (1, 1):
        return f"its kernel is {kh}x{kw}, not 1x1"
    if module.groups != 1:
        return f"it is grouped (groups={module.groups}; depthwise when groups == in_channels)"
    if not (module.padding in ("valid", "same") or tuple(module.padding) == (0, 0)):
        return f"it pads its input (padding={tuple(module.padding)})"
    if type(module).forward is not nn.Conv2d.forward:
        return f"its class {type(module).__name__} overrides nn.Conv2d.forward (it may transform its weight)"
    return None


class MASMConv2d(MASMAdapter):
    """A drop-in for a pointwise (1×1) ``nn.Conv2d``: a Linear over channels at every pixel, split as MASM splits one.

    The weight ``(C_out, C_in, 1, 1)`` is the matrix ``W`` (C_out×C_in); ``U`` is C_out×d, ``V`` is C_in×d. The
    frozen path is ``F.conv2d`` with ``W_sem``; the artifact path is two thin 1×1 convolutions (C_in → B·T → C_out),
    both with the layer's stride (a 1×1 kernel with stride s reads ``x[..., ::s, ::s]``), so no dense weight
    gradient is formed. ``merge()``/``unload()`` return a plain ``nn.Conv2d`` with the same stride, dilation, bias,
    dtype and device.

    Args:
        base: the pointwise Conv2d to wrap (see :func:`pointwise_conv_problem`); it is not kept.
        ranks: rank of each artifact subspace (K entries).
        semantic_rank: frozen top triplets per block; None keeps all but the artifact tail.
        num_blocks: how many row blocks the output channels stack (3 for a fused 1×1 ``qkv``).
        name: the module's name in its model, for error messages.
    """

    def __init__(
        self,
        base: nn.Conv2d,
        ranks: Sequence[int],
        semantic_rank: int | None = None,
        num_blocks: int = 1,
        name: str = "conv",
    ) -> None:
        problem = pointwise_conv_problem(base)
        if problem is not None:
            raise ValueError(f"{name}: MASMConv2d wraps pointwise convolutions only, but {problem}")
        super().__init__(base.weight[:, :, 0, 0], base.bias, ranks, semantic_rank, num_blocks, name)
        self.in_channels = base.in_channels
        self.out_channels = base.out_channels
        # Conv2d stores both as pairs (torch's stubs type them tuple[int, ...]). The dilation is irrelevant to a
        # 1×1 kernel; kept so merge() returns the same layer.
        self.stride: tuple[int, int] = (base.stride[0], base.stride[1])
        self.dilation: tuple[int, int] = (base.dilation[0], base.dilation[1])

    def forward(self, x: Tensor) -> Tensor:
        out = F.conv2d(x, self.semantic_weight[:, :, None, None], self.bias, self.stride)
        v, u = self.thin_factors()
        thin = F.conv2d(x, v.mT[:, :, None, None], None, self.stride)  # (N, B·T, H', W')
        if self.route_mask is not None:
            return out + self.routed_up(thin, u, 1)
        return out + F.conv2d(thin, u[:, :, None, None])

    def _rebuild(self, weight: Tensor) -> nn.Conv2d:
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            1,
            stride=self.stride,
            padding=0,
            dilation=self.dilation,
            bias=self.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        conv.weight = nn.Parameter(weight[:, :, None, None].contiguous(), requires_grad=False)
        conv.bias = self._frozen_bias()
        return conv

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}, "
            f"blocks={self.num_blocks}, ranks={list(self.ranks)}, bias={self.bias is not None}"
        )
