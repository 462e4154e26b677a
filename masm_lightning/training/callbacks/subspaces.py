"""Lightning callbacks over the artifact subspaces: their training means recorded in each checkpoint
(:class:`SubspaceEnergyMeans`, read by explanations and the web app), and which subspace responds to which forgery
type after ``test`` (:class:`SubspaceTypeResponses`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from ...adapters import iter_adapters
from ...data.batch import has_images
from ...data.forgery_types import REAL, forgery_type_name
from ...evaluation.subspaces import means_record, subspace_contributions, subspace_energies
from ...io import write_atomic
from ..run_folder import log_dir

__all__ = ["ENERGY_KEY", "SubspaceEnergyMeans", "SubspaceTypeResponses"]

# Where the training means live: the checkpoint entry this callback writes, and the adapter folder's config key.
ENERGY_KEY = "subspace_energy"


class SubspaceEnergyMeans(Callback):
    """Records the training mean of every artifact subspace's response into each checkpoint (``subspace_energy``).

    Hooks the adapters during training and sums, per subspace, the per-image energy of ``(x V_k) ⊙ s_k`` over the
    current epoch's training batches; a checkpoint written during or at the end of that epoch stores the mean so
    far (with validation at epoch end: the whole epoch). Costs one thin product per adapter and step. Add it to
    ``trainer.callbacks`` (``masm_lightning.training.callbacks.SubspaceEnergyMeans``).
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        self._hooks: contextlib.ExitStack | None = None
        self._found: dict[str, Tensor] = {}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._hooks = contextlib.ExitStack()
        self._found = self._hooks.enter_context(subspace_energies(pl_module))

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sums, self._count = {}, 0

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for name, e in self._found.items():
            self._sums[name] = self._sums.get(name, 0) + e.sum(0).cpu()
        self._count += len(batch["image"]) if isinstance(batch, Mapping) else 0
        self._found.clear()  # validation forwards are not training faces

    @override
    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._found.clear()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._count:
            checkpoint[ENERGY_KEY] = means_record(self._sums, self._count, pl_module, "training batches")


class SubspaceTypeResponses(Callback):
    """After ``test``: which artifact subspace detects which forgery type, as ``subspace_types.png`` and
    ``subspace_types.json`` in the run folder (per test set holding reals and fakes).

    For every test face, the contribution of each subspace k (:func:`subspace_contributions`: the fall of the
    fake log-odds when subspace k of every layer is reset to its injected factors; K extra forwards per batch,
    the scores are unchanged), minus its mean over the set's real faces: how much more subspace k pushes this face
    toward *fake* than it pushes a real one. The figure shows its mean per forgery type, with the subspace each
    type trained under ``adapters.routing: type`` outlined; the JSON adds, per type, ``top1_match``: the share of
    its faces whose largest contribution comes from that assigned subspace (chance 1/K). Types the training split
    did not hold (the data module's ``trained_forgery_types``) are marked held out, with no subspace of their own.
    Recorded on each process for its own share of the faces; written by global rank zero from its share.
    """

    def __init__(self) -> None:
        self._contributions: dict[int, list[Tensor]] = {}
        self._types: dict[int, list[Tensor]] = {}

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._contributions, self._types = {}, {}

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not (isinstance(batch, Mapping) and "forgery_type" in batch and has_images(batch)):
            return
        if next(iter_adapters(pl_module), None) is None:
            return
        found = subspace_contributions(pl_module, batch["image"])
        self._contributions.setdefault(dataloader_idx, []).append(found.cpu())
        self._types.setdefault(dataloader_idx, []).append(batch["forgery_type"].cpu())

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)  # every rank: a collective under DDP
        if trainer.is_global_zero:
            self._write(trainer, pl_module, folder)

    def _write(self, trainer: Trainer, pl_module: LightningModule, folder: Path) -> None:
        from ...evaluation.loaders import named_loaders
        from ...evaluation.plots import subspace_type_figure

        datamodule = getattr(trainer, "datamodule", None)
        names = [name for name, _ in named_loaders(trainer.test_dataloaders, datamodule)]
        trained = getattr(datamodule, "trained_forgery_types", None)
        vocabulary = tuple(getattr(pl_module, "forgery_types", ()))
        assignment = tuple(getattr(pl_module, "subspace_assignment", ()))
        record: dict[str, Any] = {}
        for loader, parts in sorted(self._contributions.items()):
            types = torch.cat(self._types[loader])
            found = torch.cat(parts)
            reals = types == REAL
            fakes = sorted(int(t) for t in types[~reals].unique())
            if not reals.any() or not fakes:
                continue
            relative = found - found[reals].mean(0)
            k = found.shape[1]
            rows, labels, assigned, entry = [], [], [], {}
            for t in fakes:
                mine = relative[types == t]
                name = forgery_type_name(t, vocabulary) if vocabulary else str(t)
                held = trained is not None and name not in trained
                # A type training never saw was never routed: it has no subspace of its own.
                own = assignment[t] if t < len(assignment) and assignment[t] >= 0 and not held else None
                rows.append(mine.mean(0))
                labels.append(f"{name} (held out)" if held else name)
                assigned.append(own)
                entry[name] = {
                    "faces": int(mine.shape[0]),
                    "held_out": held,
                    "assigned_subspace": own,
                    "mean_contribution": [round(float(v), 5) for v in mine.mean(0)],
                    "top1_match": None if own is None else float((mine.argmax(1) == own).double().mean()),
                }
            set_name = names[loader] if loader < len(names) else str(loader)
            suffix = "" if len(self._contributions) == 1 else f"_{set_name.replace('/', '_')}"
            title = f"{set_name}: what each subspace adds to p(fake)\n(outlined: the subspace the type trained)"
            subspace_type_figure(torch.stack(rows), labels, assigned, title, folder / f"subspace_types{suffix}.png")
            record[set_name] = {"num_subspaces": k, "chance": 1 / k, "types": entry}
        if record:
            write_atomic(folder / "subspace_types.json", json.dumps(record, indent=2) + "\n")
