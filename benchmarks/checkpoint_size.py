"""Size of a MASM checkpoint for CLIP ViT-L/14 vs the whole model (random init; the size does not depend on it).

python benchmarks/checkpoint_size.py [--backbone vit_large_patch14_clip_quickgelu_224]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from lightning.pytorch import Trainer

from masm_lightning.model import MASMDetector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_large_patch14_clip_quickgelu_224")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*random weights.*")
    model = MASMDetector(backbone=args.backbone)
    model.configure_model()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model(torch.randn(1, 3, 224, 224)).sum().backward()
    optimizer.step()  # creates Adam's two moment buffers per trainable tensor, as in a real checkpoint
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.optimizers = [optimizer]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "masm.ckpt"
        trainer.save_checkpoint(path)
        masm_mb = path.stat().st_size / 2**20
        torch.save(super(MASMDetector, model).state_dict(), Path(tmp) / "full.pt")
        full_mb = (Path(tmp) / "full.pt").stat().st_size / 2**20
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"{args.backbone}: {trainable:,} trainable of {total:,} parameters")
    print(f"MASM checkpoint (trainable tensors + Adam state + hparams): {masm_mb:.1f} MB")
    print(f"whole model state_dict, as the reference code saves it:   {full_mb:.1f} MB")


if __name__ == "__main__":
    main()
