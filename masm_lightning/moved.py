"""The previous, flat layout's module names, which still import: each one *is* the module it moved to.

Configs, run folders (the ``config.yaml`` every ``fit`` saves) and code written before the package was grouped by
role name classes by their old paths — ``masm_lightning.callbacks.SelectiveLayerMask``,
``masm_lightning.callbacks.layer_mask.SelectiveLayerMask``, ``masm_lightning.model.MASMAdam``,
``masm_lightning.loggers.CSVLogger``, ``masm_lightning.explain.SubspaceEnergyMeans``. jsonargparse, Lightning's
checkpoint loader and ``import`` all resolve such a name through the import system, so one finder answers for every
old name, its submodules included, with the module object already loaded under its current name (the classes are the
same objects: ``isinstance`` holds, and nothing is loaded twice). Checkpoints and export/adapter folders name no
module of ours beyond ``masm_lightning.data``, which did not move.

Thin re-export files at the old paths would do the same for a fixed list of names, but they would put the flat layout
back beside the grouped one, and a file at an old path keeps git from seeing the move of the file that was there.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__all__ = ["MOVED", "current_name", "install"]

# Old module → where it lives now (a package's submodules follow it).
MOVED = {
    "masm_lightning.callbacks.mask_policy": "masm_lightning.adapters.gsnr",
    "masm_lightning.callbacks.run_folder": "masm_lightning.training.run_folder",
    "masm_lightning.callbacks": "masm_lightning.training.callbacks",
    "masm_lightning.model": "masm_lightning.training.module",
    "masm_lightning.selection": "masm_lightning.training.selection",
    "masm_lightning.weights": "masm_lightning.training.weights",
    "masm_lightning.loggers": "masm_lightning.training.loggers",
    "masm_lightning.checkpoint": "masm_lightning.sharing.checkpoint",
    "masm_lightning.export": "masm_lightning.sharing.export",
    "masm_lightning.model_card": "masm_lightning.sharing.model_card",
    "masm_lightning.hub": "masm_lightning.sharing.hub",
    "masm_lightning.detector": "masm_lightning.inference.detector",
    "masm_lightning.explain": "masm_lightning.inference.explain",
    "masm_lightning.serve": "masm_lightning.inference.serve",
}


def current_name(name: str) -> str | None:
    """Where the module of an old dotted name lives now; None for a name that did not move."""
    for old in sorted(MOVED, key=len, reverse=True):  # callbacks.mask_policy before callbacks
        if name == old or name.startswith(old + "."):
            return MOVED[old] + name[len(old) :]
    return None


class _PreviousLayout(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as the module it moved to (registered under both names)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if current_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        module = importlib.import_module(current_name(spec.name) or spec.name)
        spec.loader_state = module.__spec__  # the import system replaces __spec__; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        alias = module.__spec__
        if alias is not None and alias.loader_state is not None:
            module.__spec__ = alias.loader_state  # it ran once, under its current name


def install() -> None:
    """Answer old names before the path finders do (which would load a submodule a second time, as a copy)."""
    if not any(isinstance(finder, _PreviousLayout) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PreviousLayout())
