"""Put MASM adapters into a model, find them again, and take them out."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from .config import MASMConfig
from .layer import MASMLinear
from .svd import check_ranks, fused_parts

__all__ = ["find_targets", "inject_adapters", "iter_adapters", "merge_adapters", "unload_adapters"]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _block_index(name: str) -> int | None:
    """The first integer in a dotted module name (``blocks.3.attn.qkv`` → 3), or None."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def _linear_patterns(model: nn.Module) -> list[str]:
    """The model's Linear names with indices folded (``blocks.*.attn.qkv``), for error messages."""
    return sorted({".".join("*" if p.isdigit() else p for p in n.split("."))
                   for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def iter_adapters(model: nn.Module) -> Iterator[tuple[str, MASMLinear]]:
    """Every MASM adapter in ``model`` with its qualified name, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, MASMLinear):
            yield name, module


def find_targets(model: nn.Module, config: MASMConfig) -> list[str]:
    """The qualified names of the ``nn.Linear`` layers ``config`` selects (``targets``, ``blocks``), in module order.

    Raises:
        ValueError: if a target matches no module or a non-Linear, or a requested block does not exist.
    """
    modules = dict(model.named_modules())
    selected: list[str] = []
    for target in config.targets:
        hits = [name for name in modules if _matches(name, target)]
        if not hits:
            raise ValueError(
                f"MASMConfig.targets entry {target!r} matches no module of {type(model).__name__}; "
                f"its Linear layers are {_linear_patterns(model)}"
            )
        for name in hits:
            if not isinstance(modules[name], nn.Linear):
                raise ValueError(
                    f"MASMConfig.targets entry {target!r} matches {name!r} of type {type(modules[name]).__name__}; "
                    f"only nn.Linear can be wrapped: choose among {_linear_patterns(model)}"
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
    return sorted(set(selected), key=order.__getitem__)


def inject_adapters(model: nn.Module, config: MASMConfig) -> list[str]:
    """Wrap the Linear layers that ``config`` selects in :class:`MASMLinear`, in place.

    Every parameter of ``model`` is frozen except the adapters' artifact factors; unfreeze your head afterwards.

    Returns:
        The qualified names of the wrapped modules, in module order.

    Raises:
        ValueError: if the model already holds adapters, a target matches no module or a non-Linear, a requested
            block does not exist, or a rank does not fit a layer.
    """
    existing = [name for name, _ in iter_adapters(model)]
    if existing:
        raise ValueError(
            f"the model already holds {len(existing)} MASM adapters (first: {existing[0]!r}); "
            "call merge_adapters or unload_adapters before injecting again"
        )
    selected = find_targets(model, config)
    modules = dict(model.named_modules())

    parts = {name: fused_parts(name) if config.split_fused else 1 for name in selected}
    for name in selected:  # validate every layer before the first SVD, so an error leaves the model untouched
        linear = modules[name]
        if linear.out_features % parts[name]:
            raise ValueError(f"{name}: {linear.out_features} output features do not split into {parts[name]} "
                             "fused blocks; set MASMConfig.split_fused=false")
        block_shape = (linear.out_features // parts[name], linear.in_features)
        where = name if parts[name] == 1 else f"{name} (each of its {parts[name]} fused blocks)"
        check_ranks(block_shape, config.ranks, config.semantic_rank, where)

    model.requires_grad_(False)
    for name in selected:  # one at a time, so at most one extra dense weight is alive
        adapter = MASMLinear(modules.pop(name), config.ranks, config.semantic_rank, parts[name], name=name)
        model.set_submodule(name, adapter)
        for sub in adapter.subspaces:
            sub.requires_grad_(True)
    return selected


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapter by a plain ``nn.Linear`` holding its effective weight, in place.

    The merged model's ``state_dict()`` loads with ``strict=True`` into a fresh copy of the original architecture.
    """
    for name, adapter in list(iter_adapters(model)):
        model.set_submodule(name, adapter.merge())
    return model


def unload_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapter by the ``nn.Linear`` it wrapped (weights as injected), in place."""
    for name, adapter in list(iter_adapters(model)):
        model.set_submodule(name, adapter.unload())
    return model
