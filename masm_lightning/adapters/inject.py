"""Put MASM adapters into a model, find them again, and take them out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fnmatch import fnmatchcase

from torch import Tensor, nn

from .config import MASMConfig
from .layer import MASMAdapter, MASMConv2d, MASMLinear, pointwise_conv_problem
from .svd import check_ranks, fused_parts

__all__ = [
    "inject_adapters",
    "iter_adapters",
    "merge_adapters",
    "route_subspaces",
    "select_targets",
    "unload_adapters",
]


_WRAPPABLE = "nn.Linear and pointwise nn.Conv2d (1x1 kernel, groups=1, no padding, any stride)"


def _matches(name: str, target: str) -> bool:
    """A dotted-suffix match (``attn.qkv``), or a glob over the whole name if the target has ``*?[``.

    Globs let a target skip a same-named layer elsewhere: ResNet's ``layer*.conv1`` (1×1) but not its 7×7 stem
    ``conv1``. ``*`` also matches dots.
    """
    if any(c in target for c in "*?["):
        return fnmatchcase(name, target) or fnmatchcase(name, "*." + target)
    return name == target or name.endswith("." + target)


def _wrappable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or pointwise_conv_problem(module) is None


def _matrix_shape(module: nn.Linear | nn.Conv2d) -> tuple[int, int]:
    """(outputs, inputs) of the matrix MASM decomposes."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


def _block_index(name: str) -> int | None:
    """The first integer in a dotted module name (``blocks.3.attn.qkv`` → 3), or None."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def _wrappable_patterns(model: nn.Module) -> list[str]:
    """The names of the model's wrappable layers with indices folded (``blocks.*.attn.qkv``), for error messages."""
    return sorted(
        {".".join("*" if p.isdigit() else p for p in n.split(".")) for n, m in model.named_modules() if _wrappable(m)}
    )


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, MASMAdapter]]:
    """Every MASM adapter in ``model`` (:class:`MASMLinear` and :class:`MASMConv2d`) with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, MASMAdapter):
            yield name, module


def select_targets(model: nn.Module, config: MASMConfig) -> list[str]:
    """The layers :func:`inject_adapters` would wrap, fully validated, without touching the model (no SVD).

    Returns:
        Qualified module names, in module order.

    Raises:
        ValueError: as :func:`inject_adapters`.
    """
    existing = [name for name, _ in iter_adapters(model)]
    if existing:
        raise ValueError(
            f"the model already holds {len(existing)} MASM adapters (first: {existing[0]!r}); "
            "call merge_adapters or unload_adapters before injecting again"
        )
    modules = dict(model.named_modules())
    selected: list[str] = []
    for target in config.targets:
        hits = [name for name in modules if _matches(name, target)]
        if not hits:
            raise ValueError(
                f"MASMConfig.targets entry {target!r} matches no module of {type(model).__name__}; "
                f"its wrappable layers ({_WRAPPABLE}) are {_wrappable_patterns(model)}"
            )
        for name in hits:
            module = modules[name]
            if not _wrappable(module):
                why = (
                    f"a Conv2d that cannot be wrapped: {pointwise_conv_problem(module)}"
                    if isinstance(module, nn.Conv2d)
                    else f"of type {type(module).__name__}"
                )
                raise ValueError(
                    f"MASMConfig.targets entry {target!r} matches {name!r}, {why}; only {_WRAPPABLE} can be "
                    f"wrapped: choose among {_wrappable_patterns(model)}"
                )
        selected += hits
    if config.blocks is not None:
        available = sorted({i for i in map(_block_index, selected) if i is not None})
        missing = sorted(set(config.blocks) - set(available))
        if missing:
            raise ValueError(
                f"MASMConfig.blocks asks for blocks {missing}, which hold no target layer; "
                f"the targets exist in blocks {available}"
            )
        selected = [name for name in selected if _block_index(name) in config.blocks]
    order = {name: i for i, name in enumerate(modules)}
    selected = sorted(set(selected), key=order.__getitem__)

    parts = {name: fused_parts(name) if config.split_fused else 1 for name in selected}
    for name in selected:
        outputs, inputs = _matrix_shape(modules[name])
        if outputs % parts[name]:
            raise ValueError(
                f"{name}: {outputs} output features do not split into {parts[name]} "
                "fused blocks; set MASMConfig.split_fused=false"
            )
        block_shape = (outputs // parts[name], inputs)
        where = name if parts[name] == 1 else f"{name} (each of its {parts[name]} fused blocks)"
        check_ranks(block_shape, config.ranks, config.semantic_rank, where)
    return selected


def inject_adapters(model: nn.Module, config: MASMConfig) -> list[str]:
    """Wrap the layers that ``config`` selects in MASM adapters, in place.

    An ``nn.Linear`` becomes a :class:`MASMLinear`; a pointwise ``nn.Conv2d`` (1×1 kernel, ``groups=1``, no
    padding, any stride: a Linear over channels) becomes a :class:`MASMConv2d`. Spatial (k×k) and grouped or
    depthwise convolutions are not linear maps over channels alone and cannot be wrapped.

    Every parameter of ``model`` is frozen except the adapters' artifact factors; unfreeze your head afterwards.

    Returns:
        The qualified names of the wrapped modules, in module order.

    Raises:
        ValueError: if the model already holds adapters, a target matches no module or one that cannot be wrapped,
            a requested block does not exist, or a rank does not fit a layer.
    """
    selected = select_targets(model, config)  # validates every layer first: an error leaves the model untouched
    modules = dict(model.named_modules())
    parts = {name: fused_parts(name) if config.split_fused else 1 for name in selected}
    model.requires_grad_(False)
    for name in selected:  # one at a time, so at most one extra dense weight is alive
        kind = MASMLinear if isinstance(modules[name], nn.Linear) else MASMConv2d
        adapter = kind(modules.pop(name), config.ranks, config.semantic_rank, parts[name], name=name)
        model.set_submodule(name, adapter)
        for sub in adapter.subspaces:
            sub.requires_grad_(True)
    return selected


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapter by a plain ``nn.Linear`` / ``nn.Conv2d`` holding its effective weight, in place.

    The merged model's ``state_dict()`` loads with ``strict=True`` into a fresh copy of the original architecture.
    """
    for name, adapter in list(iter_adapters(model)):
        model.set_submodule(name, adapter.merge())
    return model


def unload_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapter by the plain layer it wrapped (weights as injected), in place."""
    for name, adapter in list(iter_adapters(model)):
        model.set_submodule(name, adapter.unload())
    return model


@contextlib.contextmanager
def route_subspaces(model: nn.Module, sample_mask: Tensor | None) -> Iterator[None]:
    """Within the block, sample ``b`` trains only the artifact subspaces ``k`` with ``sample_mask[b, k]`` true.

    ``sample_mask`` is (B, K) bool, B the batch's samples and K the adapters' ``num_subspaces``; it applies to every
    adapter in ``model`` (subspace k of every layer and fused block). The forward values do not change (to float
    round-off): a sample's contribution through a subspace it may not train is detached, so that subspace's factors
    get no gradient from it (:meth:`~masm_lightning.adapters.layer.MASMAdapter.routed_up`). None routes nothing
    (every sample trains every subspace, the plain forward). The masks are cleared on exit, also on error.

    Raises:
        ValueError: if the mask is not (B, K) for the adapters' K.
    """
    adapters = [adapter for _, adapter in iter_adapters(model)]
    if sample_mask is not None:
        for adapter in adapters:
            if sample_mask.ndim != 2 or sample_mask.shape[1] != len(adapter.ranks):
                raise ValueError(
                    f"route_subspaces: the sample mask has shape {tuple(sample_mask.shape)}, but {adapter.name} "
                    f"has {len(adapter.ranks)} subspaces: expected (batch, {len(adapter.ranks)})"
                )
        mask = sample_mask.bool()
        for adapter in adapters:
            adapter.route_mask = mask
    try:
        yield
    finally:
        for adapter in adapters:
            adapter.route_mask = None
