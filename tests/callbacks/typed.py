"""A tiny adapter model on synthetic features with several forgery types (batches carry ``forgery_type``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule
from torch.utils.data import DataLoader, Dataset

from masm_lightning.adapters import MASMConfig, inject_adapters

# type → (samples per batch, feature shift): 0 real; 1 an easy, frequent type; 2 and 3 subtle ones.
MIX = {0: (8, 0.0), 1: (16, 3.0), 2: (4, 0.6), 3: (4, 0.6)}
DIM = 16


class TypedFeatures(Dataset):
    """Batches of ``sum(MIX counts)`` samples, one type block after another, seeded by their index."""

    def __init__(self, batches: int = 200, scale: int = 1) -> None:
        self.batches, self.scale = batches, scale

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(index)
        images, labels, types = [], [], []
        for t, (count, shift) in MIX.items():
            n = count * self.scale
            x = torch.randn(n, DIM, generator=gen)
            if t:
                x[:, t - 1] += shift
                x[:, 4 + t] += shift  # a second direction per type, so several subspaces see it
            images.append(x)
            labels.append(torch.full((n,), int(t > 0)))
            types.append(torch.full((n,), t))
        return {"image": torch.cat(images), "label": torch.cat(labels), "forgery_type": torch.cat(types)}


class TypedModel(LightningModule):
    forgery_types = ("real", "unknown", "easy", "subtle")  # ids 0..3 (1 plays the easy type's role here)

    def __init__(self, batches: int = 200, scale: int = 1, lr: float = 0.01) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
        )
        inject_adapters(self.net, MASMConfig(num_subspaces=2, subspace_rank=2, targets=("0", "2")))
        self.batches, self.scale, self.lr = batches, scale, lr

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def train_dataloader(self):
        return DataLoader(TypedFeatures(self.batches, self.scale), batch_size=None)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        # A plain DataLoader restarts its epoch on resume: draw by optimizer step (and rank), so a resumed run sees
        # the batches an uninterrupted one would.
        if not self.trainer.training:
            return batch
        return TypedFeatures(scale=self.scale)[self.global_step * self.trainer.world_size + self.trainer.global_rank]


class SaveMaskState(Callback):
    """Each rank writes its SelectiveLayerMask state at the end of fit (for the DDP test)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module) -> None:
        from masm_lightning.training.callbacks import SelectiveLayerMask

        (mask,) = [c for c in trainer.callbacks if isinstance(c, SelectiveLayerMask)]
        torch.save(mask.state_dict(), f"{self.folder}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":  # python -m tests.callbacks.typed <folder>: two CPU ranks (gloo), 60 steps
    import sys

    from lightning.pytorch import Trainer

    from masm_lightning.training.callbacks import SelectiveLayerMask

    Trainer(
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        default_root_dir=sys.argv[1],
        callbacks=[SelectiveLayerMask(warmup_steps=20, interval=10, momentum=0.9), SaveMaskState(sys.argv[1])],
    ).fit(TypedModel())
