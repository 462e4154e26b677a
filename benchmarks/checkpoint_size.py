"""Sizes of the two checkpoints every ``fit`` writes, for a CLIP ViT-L/14 MASM (random init; sizes do not depend on
the values): the lean ``best.ckpt`` (trained tensors, head, hyper-parameters, fingerprint: what ``test``,
``detect`` and ``export`` need) and the full ``last.ckpt`` (plus Adam's moments and the loop and callback state,
for resuming), against the whole model's state_dict as the reference code saves it. Both files are written by the
policy's own ModelCheckpoint settings and read back with ``weights_only=True``.

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

from masm_lightning.sharing.checkpoint import load_checkpoint
from masm_lightning.training.module import MASMDetector, run_checkpoints

LIMIT_MB = 30.0  # issue 17: a ViT-L/14 MASM best.ckpt fits in 30 MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_large_patch14_clip_quickgelu_224")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*random weights.*")
    model = MASMDetector(backbone=args.backbone, pretrained=False)
    model.configure_model()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model(torch.randn(1, 3, 224, 224)).sum().backward()
    optimizer.step()  # creates Adam's two moment buffers per trainable tensor, as in a real checkpoint
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(model)
    trainer.optimizers = [optimizer]
    best_policy, last_policy = run_checkpoints(model.monitor, model.mode)
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, policy in (("best", best_policy), ("last", last_policy)):
            path = Path(tmp) / f"{name}.ckpt"
            trainer.save_checkpoint(path, weights_only=policy.save_weights_only)
            sizes[name] = path.stat().st_size / 2**20
            torch.load(path, map_location="cpu", weights_only=True)  # both read safely
        reloaded, _ = load_checkpoint(Path(tmp) / "best.ckpt")  # the frozen base rebuilt, fingerprint checked
        with torch.no_grad():
            image = torch.randn(1, 3, 224, 224)
            same = torch.allclose(reloaded(image), model.eval()(image), atol=1e-5)
        torch.save(super(MASMDetector, model).state_dict(), Path(tmp) / "full.pt")
        full_mb = (Path(tmp) / "full.pt").stat().st_size / 2**20
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"{args.backbone}: {trainable:,} trainable of {total:,} parameters ({4 * trainable / 2**20:.1f} MB fp32)")
    print(f"best.ckpt (trained tensors + hparams + fingerprint + data state): {sizes['best']:.1f} MB")
    print(f"last.ckpt (best.ckpt's content + Adam state + loops + callbacks):  {sizes['last']:.1f} MB")
    print(f"whole model state_dict, as the reference code saves it:           {full_mb:.1f} MB")
    print(f"best.ckpt reloads onto the rebuilt base with the same outputs: {same}")
    print(
        f"checkpoint size: best_mb={sizes['best']:.1f} last_mb={sizes['last']:.1f} full_mb={full_mb:.1f} "
        f"limit_mb={LIMIT_MB:.0f} best_within_limit={sizes['best'] <= LIMIT_MB} reload_same={same}"
    )


if __name__ == "__main__":
    main()
