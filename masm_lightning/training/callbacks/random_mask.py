"""The random-mask control of the selective layer mask: as many subspaces masked, chosen at random.

A mask that improves generalisation can do so because its rule picks the right subspaces, or merely because fewer
parameters update. This callback separates the two: it replays the *number* of masked subspaces of a reference run
(a :class:`~masm_lightning.training.callbacks.SelectiveLayerMask` run's ``layer_masks.jsonl``, same seed and data) at
the same decision steps, but draws *which* subspaces uniformly at random among all of them. Everything else is what the
selective mask does: the mask holds until the next decision, a masked subspace's factors get ``.grad = None``
before the optimizer step (no update, no momentum, no weight decay), and a released subspace restarts its optimizer
state (``reset_released``). The draw at decision step t is a pure function of ``(seed, t)``: same seed, same masks,
also after a resume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from ...adapters import ArtifactSubspace, iter_adapters
from ...io import write_atomic
from ..run_folder import log_dir

__all__ = ["RandomSubspaceMask", "mask_counts"]


def _masked_count(entry: Mapping[str, Any], line: int, path: Path) -> int:
    """How many subspaces one decision of a mask trace masked (``subspaces[*].masked``, or a ``masked`` list/count)."""
    if isinstance(entry.get("subspaces"), list):
        return sum(bool(s.get("masked")) for s in entry["subspaces"])
    masked = entry.get("masked")
    if isinstance(masked, list):
        return sum(bool(m) for m in masked)
    if isinstance(masked, int) and not isinstance(masked, bool):
        return masked
    raise ValueError(
        f"{path}:{line}: a mask decision needs 'step' and 'subspaces' (each with 'masked') or 'masked' (a list or a "
        f"count), got keys {sorted(entry)}"
    )


def mask_counts(path: str | Path) -> dict[int, int]:
    """``{decision step: number of subspaces masked}`` from a ``layer_masks.jsonl`` trace.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a mask decision.
    """
    path = Path(path)
    counts: dict[int, int] = {}
    for line, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line}: not JSON ({error.msg})") from error
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
            raise ValueError(f"{path}:{line}: a mask decision needs an integer 'step'")
        counts[entry["step"]] = _masked_count(entry, line, path)
    return counts


class RandomSubspaceMask(Callback):
    """Mask, at each decision step of a reference trace, as many artifact subspaces as it did, chosen at random.

    Args:
        schedule: the reference run's ``layer_masks.jsonl`` (path), or ``{step: count}``. Steps count optimizer
            steps from 1, as :class:`~masm_lightning.training.callbacks.SelectiveLayerMask` records them.
        seed: seed of the draws (the draw at step t depends on ``(seed, t)`` only).
        reset_released: delete a released subspace's optimizer state, so it restarts from the new gradient (as the
            selective mask does by default).
    """

    def __init__(self, schedule: str | Path | Mapping[int, int], seed: int = 0, reset_released: bool = True) -> None:
        counts = mask_counts(schedule) if isinstance(schedule, str | Path) else dict(schedule)
        for step, count in counts.items():
            if not (isinstance(step, int) and step >= 1 and isinstance(count, int) and count >= 0):
                raise ValueError(
                    f"RandomSubspaceMask.schedule maps optimizer steps (>= 1) to counts (>= 0), got {step!r}: {count!r}"
                )
        self.schedule = dict(sorted(counts.items()))
        self.seed = seed
        self.reset_released = reset_released
        self.steps = 0
        self.masked = torch.zeros(0, dtype=torch.bool)  # per subspace, model order
        self.history: list[dict[str, Any]] = []
        self._subspaces: list[ArtifactSubspace] = []
        self._names: list[str] = []

    def _discover(self, pl_module: LightningModule) -> None:
        names, subspaces = [], []
        for layer, adapter in iter_adapters(pl_module):
            for k, sub in enumerate(adapter.subspaces):
                if not isinstance(sub, ArtifactSubspace):
                    raise TypeError(f"{layer}: subspace {k} is a {type(sub).__name__}, not an ArtifactSubspace")
                names.append(f"{layer}/{k}")
                subspaces.append(sub)
        if not subspaces:
            raise ValueError(f"RandomSubspaceMask found no MASM adapters in {type(pl_module).__name__}")
        too_many = {step: n for step, n in self.schedule.items() if n > len(subspaces)}
        if too_many:
            raise ValueError(
                f"RandomSubspaceMask.schedule masks more subspaces than the model has ({len(subspaces)}): {too_many}"
            )
        self._names, self._subspaces = names, subspaces
        if len(self.masked) != len(subspaces):
            self.masked = torch.zeros(len(subspaces), dtype=torch.bool)

    def draw(self, step: int, count: int, total: int) -> torch.Tensor:
        """The mask of one decision: ``count`` of ``total`` subspaces, uniformly at random, from ``(seed, step)``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        mask = torch.zeros(total, dtype=torch.bool)
        mask[torch.from_numpy(rng.choice(total, size=count, replace=False)).long()] = True
        return mask

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._subspaces:
            self._discover(pl_module)
        self.steps += 1
        if self.steps in self.schedule:
            before = self.masked
            self.masked = self.draw(self.steps, self.schedule[self.steps], len(self._subspaces))
            freed = before & ~self.masked
            if self.reset_released:
                for sub, free in zip(self._subspaces, freed.tolist()):
                    if free:
                        for p in sub.factors():
                            optimizer.state.pop(p, None)
            self.history.append({"step": self.steps, "masked": [i for i, m in enumerate(self.masked.tolist()) if m]})
            pl_module.log("mask/subspaces_updating", 1 - float(self.masked.float().mean()), on_step=True)
        for sub, masked in zip(self._subspaces, self.masked.tolist()):
            if masked:
                for p in sub.factors():
                    p.grad = None

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        folder = log_dir(trainer)
        if trainer.is_global_zero and self.history:
            folder.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"names": self._names})] + [json.dumps(entry) for entry in self.history]
            write_atomic(folder / "random_masks.jsonl", "\n".join(lines) + "\n")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "masked": self.masked.clone(), "history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = state_dict["steps"]
        self.masked = state_dict["masked"].clone()
        self.history = list(state_dict["history"])
