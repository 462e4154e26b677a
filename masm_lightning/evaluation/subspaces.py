"""Artifact-subspace responses of a model with MASM adapters: energies per subspace, means, responses relative to
real faces, and what each subspace's training contributes to the fake score (formulas: ``docs/app.md``,
``docs/method.md``). Torch only; forward hooks and the adapters' public factors, so the adapters compute exactly as
without them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..adapters import ArtifactSubspace, MASMAdapter, MASMConv2d, iter_adapters

__all__ = [
    "energy_means",
    "injected_subspace",
    "means_record",
    "relative_responses",
    "subspace_contributions",
    "subspace_energies",
    "subspace_labels",
]


def subspace_labels(adapter: MASMAdapter) -> list[str]:
    """One label per subspace, in ``adapter.subspaces`` order: ``k0``… or, for a fused projection, ``q.k0``…"""
    parts = ("q", "k", "v") if adapter.num_blocks == 3 else tuple(f"b{b}" for b in range(adapter.num_blocks))
    return [
        f"k{sub.index}" if adapter.num_blocks == 1 else f"{parts[sub.block]}.k{sub.index}"
        for sub in _subspaces(adapter)
    ]


def _subspaces(adapter: MASMAdapter) -> list[ArtifactSubspace]:
    """The adapter's subspaces in order (every block's K, concatenated), typed."""
    return [sub for b in range(adapter.num_blocks) for sub in adapter.block_subspaces(b)]


def _energies(adapter: MASMAdapter, x: Tensor, initial: bool = False) -> Tensor:
    """(B, subspaces): per image, the mean over tokens/pixels of ``‖(x V_k) ⊙ s_k‖²`` for every subspace (with
    ``initial``: of ``(x V0_k) ⊙ s0_k``, the factors as injected)."""
    x = x.detach()
    if isinstance(adapter, MASMConv2d):
        x = x.movedim(1, -1)  # (B, H, W, C): the matrix acts on channels at every pixel
    x = x.reshape(x.shape[0], -1, x.shape[-1]).float()  # (B, tokens, n)
    out = []
    for sub in _subspaces(adapter):
        v, s = (sub.V0, sub.s0) if initial else (sub.V, sub.s)
        z = (x @ v.detach().float()) * s.detach().float()  # (B, tokens, d)
        out.append(z.pow(2).sum(-1).mean(-1))
    return torch.stack(out, dim=1)


@contextlib.contextmanager
def subspace_energies(model: nn.Module, initial: bool = False) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward of ``model`` fills the yielded dict: adapter name → (B, subspaces) energies
    of the last batch (:func:`_energies`; ``initial``: of the factors as injected, on the same layer inputs). Hooks
    only: the adapters compute exactly as without it."""
    found: dict[str, Tensor] = {}
    handles = []
    for name, adapter in iter_adapters(model):

        def hook(module: nn.Module, args: tuple[Any, ...], _out: Any, name: str = name) -> None:
            with torch.no_grad():
                found[name] = _energies(module, args[0], initial)  # type: ignore[arg-type]

        handles.append(adapter.register_forward_hook(hook))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def means_record(sums: Mapping[str, Tensor], count: int, model: nn.Module, what: str) -> dict[str, Any]:
    """Per adapter, the subspace labels and the mean energies (``sums`` over ``count`` images); ``what`` they
    were averaged over."""
    adapters = dict(iter_adapters(model))
    return {
        "what": what,
        "images": count,
        "layers": {
            name: {"labels": subspace_labels(adapters[name]), "mean": (total / max(count, 1)).tolist()}
            for name, total in sums.items()
        },
    }


@torch.no_grad()
def energy_means(model: nn.Module, images: Tensor, batch_size: int = 32) -> dict[str, Any]:
    """The mean subspace energies over a reference batch of normalised images (for a checkpoint that recorded
    none), in the record format of
    :class:`~masm_lightning.training.callbacks.subspaces.SubspaceEnergyMeans`."""
    sums: dict[str, Tensor] = {}
    with subspace_energies(model) as found:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
            for name, e in found.items():
                sums[name] = sums.get(name, 0) + e.sum(0).cpu()
    return means_record(sums, len(images), model, "reference batch")


def _log_ratio(e: Tensor, reference: Tensor) -> Tensor:
    return (e.double().clamp_min(1e-30) / reference.double().clamp_min(1e-30)).log()


def relative_responses(
    energies: Mapping[str, Tensor], reals: Tensor, model: nn.Module, initial: Mapping[str, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """How hard each face drives each of the K artifact subspaces, relative to real faces, layer by layer and
    overall.

    For every adapter ``a`` of ``model`` with recorded ``energies[a]`` (B, subspaces) (:func:`subspace_energies`),
    the response is ``log(e_{a,k} / ē_{a,k})`` with ``ē`` the mean over the faces flagged in ``reals`` (B,) bool,
    averaged over the fused blocks of the same subspace index k. With ``initial`` (the same faces' energies of the
    factors as injected, ``subspace_energies(model, initial=True)``), the response at injection is subtracted:
    what training put into subspace k, not how the SVD tail it started from happened to respond.

    Returns:
        ``per_layer`` (B, layers, K) and ``overall`` (B, K), the mean over layers, in nats (0: as on real faces).
    """
    adapters = dict(iter_adapters(model))
    layers = []
    for name, e in energies.items():
        adapter = adapters[name]
        index = torch.tensor([sub.index for sub in _subspaces(adapter)])
        k = len(adapter.ranks)
        ratio = _log_ratio(e, e[reals].mean(0))  # (B, subspaces)
        if initial is not None:
            ratio = ratio - _log_ratio(initial[name], initial[name][reals].mean(0))
        summed = torch.zeros(e.shape[0], k, dtype=torch.float64).index_add_(1, index, ratio)
        layers.append(summed / torch.bincount(index, minlength=k).double())
    per_layer = torch.stack(layers, dim=1)
    return per_layer, per_layer.mean(1)


@contextlib.contextmanager
def injected_subspace(model: nn.Module, index: int) -> Iterator[None]:
    """Within the block, subspace ``index`` of every adapter in ``model`` (every layer and fused block) holds its
    factors as injected (``U0, s0, V0``): what the model computes without what training put there. The trained
    factors are restored bit for bit on exit."""
    saved = []
    with torch.no_grad():
        for _, adapter in iter_adapters(model):
            for sub in _subspaces(adapter):
                if sub.index == index:
                    saved.append((sub, sub.U.detach().clone(), sub.s.detach().clone(), sub.V.detach().clone()))
                    sub.U.copy_(sub.U0)
                    sub.s.copy_(sub.s0)
                    sub.V.copy_(sub.V0)
    try:
        yield
    finally:
        with torch.no_grad():
            for sub, u, s, v in saved:
                sub.U.copy_(u)
                sub.s.copy_(s)
                sub.V.copy_(v)


@torch.no_grad()
def subspace_contributions(model: nn.Module, images: Tensor) -> Tensor:
    """(B, K): per image, how much the fake log-odds (``logit_fake − logit_real`` of ``model(images)``) fall when
    subspace k of every layer is reset to its injected factors (:func:`injected_subspace`): what the training of
    subspace k contributes to calling the image fake. K + 1 forwards; the model is left unchanged."""
    adapters = [adapter for _, adapter in iter_adapters(model)]
    if not adapters:
        raise ValueError("subspace_contributions: the model holds no MASM adapters")

    def log_odds() -> Tensor:
        logits = model(images)
        return (logits[:, 1] - logits[:, 0]).double()

    base = log_odds()
    out = []
    for k in range(len(adapters[0].ranks)):
        with injected_subspace(model, k):
            out.append(base - log_odds())
    return torch.stack(out, dim=1)
