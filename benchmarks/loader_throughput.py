"""Training-loader images/s: our data module vs a plain torchvision ImageFolder with equivalent transforms.

Same crops (the shared DFDC face crops, or generated ones when the shared data is absent), 224 px, the default
`effort` augmentation (torchvision equivalents for ImageFolder: flip, rotation, blur, colour jitter, JPEG), batch 32,
2 persistent workers, same process, rounds interleaved; medians over rounds. Each round is several epochs after
a warm-up epoch (worker start-up is excluded for both).

    python benchmarks/loader_throughput.py [--rounds 3] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from masm_lightning.data import FaceForgeryDataModule
from masm_lightning.data.sources import DataSource

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dfdc_faces"
CLIP = {
    "image_size": 224,
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "interpolation": "bicubic",
}


def generated_crops(root: Path, count: int = 160) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("real" if i % 2 else "fake")
        folder.mkdir(parents=True, exist_ok=True)
        image = cv2.GaussianBlur(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"v{i // 4}_{i % 4}.jpg"), image)
    return root


def ours(root: Path, batch_size: int, workers: int) -> DataLoader:
    data = FaceForgeryDataModule(
        train=DataSource("folder", root=str(root), crops=True, split="train"),
        train_frames=None,
        augmentation="effort",
        input_config=CLIP,
        batch_size=batch_size,
        num_workers=workers,
    )
    data.setup("fit")
    return data.train_dataloader()


def image_folder(root: Path, batch_size: int, workers: int) -> DataLoader:
    transform = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomApply([T.RandomRotation(10)], p=0.5),
            T.RandomApply([T.GaussianBlur(5)], p=0.2),
            T.RandomApply([T.ColorJitter(0.1, 0.1, 0.1, 0.05)], p=0.5),
            T.RandomApply([T.JPEG((40, 100))], p=0.5),
            T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(CLIP["mean"], CLIP["std"]),
        ]
    )
    return DataLoader(
        ImageFolder(str(root), transform=transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def images_per_second(loader: DataLoader, epochs: int) -> float:
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; workers do the work
    with tempfile.TemporaryDirectory() as tmp:
        root = SHARED if SHARED.is_dir() else generated_crops(Path(tmp))
        loaders = {
            "ours": ours(root, args.batch_size, args.workers),
            "ImageFolder": image_folder(root, args.batch_size, args.workers),
        }
        for loader in loaders.values():
            images_per_second(loader, 1)  # start the persistent workers
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.rounds):
            for name, loader in loaders.items():
                rates[name].append(images_per_second(loader, args.epochs))
        print(
            f"crops: {root} ({len(loaders['ImageFolder'].dataset)} images), 224 px, batch {args.batch_size}, "
            f"{args.workers} workers, {args.epochs} epochs x {args.rounds} rounds"
        )
        for name, values in rates.items():
            print(
                f"{name:12s} {statistics.median(values):8.1f} images/s  (rounds: "
                + ", ".join(f"{v:.1f}" for v in values)
                + ")"
            )
        ratio = statistics.median(rates["ours"]) / statistics.median(rates["ImageFolder"])
        print(f"ours / ImageFolder: {ratio:.2f}x  (target >= 1.0x)")


if __name__ == "__main__":
    main()
