"""MASM vs its baselines on a real ImageNet-pretrained CNN and real face crops (docs/benchmarks.md).

    python benchmarks/pretrained_check.py [--backbone-config configs/backbones/mobilenetv2.yaml] [--steps 40]
    python benchmarks/pretrained_check.py --backbone-config dinov2_s14 --image-size 112   # the offline ViT, by name

Every method is the shipped configuration, composed and parsed by the real CLI (``fit --print_config``), so the
check follows whatever the configs say today (constraints, mask, optimizer):

    linear_probe  configs/ffpp.yaml + backbone + configs/linear_probe.yaml
    full_ft       configs/ffpp.yaml + backbone + configs/full_ft.yaml
    effort        configs/ffpp.yaml + backbone + configs/effort.yaml (targets: the backbone's; a CNN has no attn)
    masm          configs/ffpp.yaml + backbone (the recipe: both constraints + SelectiveLayerMask)
    masm_plain    configs/ffpp.yaml + backbone + configs/masm_no_mask.yaml, no constraint (λ's 0, no cap)

Every arm runs with its own constraint settings (``lambda_orth``, ``lambda_spec``, ``lambda_semantic``,
``spectral_cap``: ``constraint_kwargs``).

Data (read from ../shared/data, never copied): the DFDC face crops split by video id, plus FFHQ photos vs StyleGAN2
faces both re-encoded identically (256 px, JPEG quality 90) so compression is no cue, each image its own "video",
plus faces extracted from the shared FF++ c23 and DFDC clips by the project's own ``preprocess`` (MTCNN, aligned
crops, into a temporary folder): the FF++ clips follow the official split (519, 519_515 train; 634, 634_660 held
out), the DFDC clip is held out. The crops and FFHQ images: 70% of the videos train, 30% are held out (seeded).
AUC on the held-out images with a 95% bootstrap interval over videos.
The mask's warm-up and interval are scaled to the run (the recipe's 500 steps are half an FF++ epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
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
from lightning.pytorch import Callback, Trainer, seed_everything
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from masm_lightning import MASMConfig
from masm_lightning.adapters import iter_adapters
from masm_lightning.cli import main as cli_main
from masm_lightning.training.module import MASMDetector

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "linear_probe": (["configs/linear_probe.yaml"], {}),
    "full_ft": (["configs/full_ft.yaml"], {}),
    "effort": (["configs/effort.yaml"], {}),
    "masm": ([], {}),
    "masm_plain": (
        ["configs/masm_no_mask.yaml"],
        {"lambda_orth": 0.0, "lambda_spec": 0.0, "lambda_semantic": 0.0, "spectral_cap": None},
    ),
}


def composed(backbone_config: str, overlays: list[str]) -> dict:
    """The configuration the CLI would run: ffpp.yaml + backbone overlay + method overlays."""
    args = ["fit", "--config", str(ROOT / "configs/ffpp.yaml"), "--config", str(ROOT / backbone_config)]
    for overlay in overlays:
        args += ["--config", str(ROOT / overlay)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main([*args, "--print_config"])
    return yaml.safe_load(out.getvalue())


def _instance(spec: dict, **extra: object) -> object:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**spec.get("init_args", {}), **extra})


CONSTRAINTS = ("lambda_orth", "lambda_spec", "lambda_semantic", "spectral_cap")


def constraint_kwargs(model_cfg: dict) -> dict:
    """The arm's own constraint settings (every one of them: an arm never runs with another's cap or λ)."""
    return {key: model_cfg[key] for key in CONSTRAINTS}


def build(
    config: dict, backbone_targets: list[str], overrides: dict, steps: int, image_size: int
) -> tuple[MASMDetector, list]:
    model_cfg = {**config["model"], **overrides}
    adapters = model_cfg["adapters"]
    if adapters is not None:
        has_attention = any(t.startswith("attn.") for t in backbone_targets)
        if any(t.startswith("attn.") for t in adapters["targets"]) and not has_attention:  # Effort's targets on a CNN
            adapters = {**adapters, "targets": backbone_targets}
        adapters = MASMConfig(**adapters)
    optimizer = model_cfg["optimizer"]
    module, _, name = optimizer["class_path"].rpartition(".")
    opt_cls, opt_args = getattr(importlib.import_module(module), name), optimizer.get("init_args", {})
    backbone_kwargs = model_cfg.get("backbone_kwargs")
    if backbone_kwargs and "img_size" in backbone_kwargs:  # a ViT: its position embedding follows the run's size
        backbone_kwargs = {**backbone_kwargs, "img_size": image_size}
    model = MASMDetector(
        backbone=model_cfg["backbone"],
        backbone_kwargs=backbone_kwargs,
        pretrained=False,
        checkpoint_path=model_cfg["checkpoint_path"],
        adapters=adapters,
        freeze_backbone=model_cfg["freeze_backbone"],
        optimizer=lambda p: opt_cls(p, **opt_args),
        **constraint_kwargs(model_cfg),
        **{k: model_cfg[k] for k in ("freeze_norm_stats",) if k in model_cfg},
    )
    callbacks = []
    for spec in config["trainer"].get("callbacks") or []:
        if spec["class_path"].endswith("SelectiveLayerMask"):
            callbacks.append(_instance(spec, warmup_steps=max(steps // 4, 1), interval=max(steps // 10, 1)))
    return model, callbacks


def _jpeg(image: Image.Image, size: int = 256, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").resize((size, size), Image.BICUBIC).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def load_faces(data: Path) -> list[tuple[Image.Image, int, str]]:
    """(image, label 1 = fake, video key) for every crop."""
    items = []
    for label, folder in ((0, "real"), (1, "fake")):
        for path in sorted((data / "dfdc_faces" / folder).glob("*.jpg")):
            items.append((Image.open(path).convert("RGB"), label, "dfdc/" + path.stem.split("_")[1]))
        for path in sorted((data / "ffhq_stylegan2" / folder).glob("*.jpg")):
            items.append((_jpeg(Image.open(path)), label, f"ffhq/{path.stem}"))
    return items


def extract_clips(data: Path, out: Path, frames: int) -> list[tuple[Image.Image, int, str, str]]:
    """Faces from the shared FF++ and DFDC clips through the ``preprocess`` command: (image, label, video key,
    split) per crop, the split the dataset's own (FF++'s official JSONs; DFDC's clip: held out as ``test``)."""
    from masm_lightning.data.manifest import read_manifest

    jobs = []
    if (data / "FaceForensics++" / "splits").is_dir():
        jobs.append(
            ["--dataset", "ffpp", "--root", str(data / "FaceForensics++"), "--methods", "[Deepfakes, FaceSwap]"]
        )
    if (data / "DFDC").is_dir():
        jobs.append(["--dataset", "dfdc", "--root", str(data / "DFDC")])
    items = []
    for job in jobs:
        target = out / job[1]
        args = ["preprocess", *job, "--out", str(target), "--frames", str(frames), "--crop", "aligned"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            cli_main(args)
        if not (target / "manifest.csv").is_file():
            print(f"preprocess {job[1]}: no manifest written, its clips are left out", flush=True)
            continue
        for record in read_manifest(target / "manifest.csv"):
            split = "test" if record.dataset == "dfdc" else record.split
            key = f"{record.dataset}/{record.label}/{record.video_id}"
            items.append((Image.open(record.path).convert("RGB"), record.label, key, split))
    return items


def tensors(items: list, size: int, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    images = []
    for image, _, _ in items:
        array = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
        images.append((torch.from_numpy(array).permute(2, 0, 1) - m) / s)
    return torch.stack(images), torch.tensor([label for _, label, _ in items])


class LossCurve(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def bootstrap_auc(probs: np.ndarray, labels: np.ndarray, videos: list[str], seed: int, n: int = 1000):
    keys = sorted(set(videos))
    groups = {k: np.flatnonzero(np.array(videos) == k) for k in keys}
    rng, aucs = np.random.default_rng(seed), []
    for _ in range(n):
        picks = np.concatenate([groups[k] for k in rng.choice(keys, len(keys))])
        if len(set(labels[picks])) == 2:
            aucs.append(roc_auc_score(labels[picks], probs[picks]))
    return roc_auc_score(labels, probs), np.percentile(aucs, [2.5, 97.5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone-config", default="configs/backbones/mobilenetv2.yaml")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="train/test resolution (the backbone's own, e.g. 224, is ~3x slower on 2 cores)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--clip-frames", type=int, default=16, help="faces extracted per shared clip (0: none)")
    args = parser.parse_args()
    if not args.backbone_config.endswith(".yaml"):  # a name: configs/backbones/<name>.yaml
        args.backbone_config = f"configs/backbones/{args.backbone_config}.yaml"
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging intervals; not measured here

    items = load_faces(args.data)
    if not items:
        raise SystemExit(f"no face crops under {args.data} (dfdc_faces/, ffhq_stylegan2/): nothing to check")
    videos = sorted({v for _, _, v in items})
    random.Random(args.seed).shuffle(videos)
    held_out = set(videos[: int(0.3 * len(videos))])
    train = [x for x in items if x[2] not in held_out]
    test = [x for x in items if x[2] in held_out]
    with tempfile.TemporaryDirectory(prefix="pretrained_check_faces_") as faces:
        clips = extract_clips(args.data, Path(faces), args.clip_frames) if args.clip_frames else []
    train += [(image, label, key) for image, label, key, split in clips if split == "train"]
    test += [(image, label, key) for image, label, key, split in clips if split != "train"]
    clip_videos = sorted({key for _, _, key, _ in clips})
    print(
        f"data: {len(train)} train / {len(test)} held-out images, {len(videos) + len(clip_videos)} videos "
        f"({len(clips)} faces from {len(clip_videos)} shared clips via preprocess: {', '.join(clip_videos)}), "
        f"fake share {np.mean([x[1] for x in train + test]):.2f}"
    )

    backbone_targets = composed(args.backbone_config, [])["model"]["adapters"]["targets"]
    results = {}
    # One row per method as soon as it is done (flushed): a long run that is stopped still reports what it measured.
    print(
        "| method | trainable | train loss first5 → last5 | fitting strength per subspace k | spectral drift "
        "| share masked | held-out AUC [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|", flush=True)
    for method in args.methods:
        overlays, overrides = METHODS[method]
        seed_everything(args.seed, verbose=False)
        model, callbacks = build(
            composed(args.backbone_config, overlays), backbone_targets, overrides, args.steps, args.image_size
        )
        model.configure_model()
        data = {**model.data_config, "image_size": args.image_size}  # mean/std stay the backbone's
        x_train, y_train = tensors(train, data["image_size"], data["mean"], data["std"])
        x_test, y_test = tensors(test, data["image_size"], data["mean"], data["std"])
        g = torch.Generator().manual_seed(args.seed)
        batches = []
        while len(batches) < args.steps:
            for idx in torch.randperm(len(train), generator=g).split(args.batch_size):
                if len(idx) == args.batch_size:
                    batches.append({"image": x_train[idx], "label": y_train[idx], "video": idx, "index": idx})
        curve = LossCurve()
        trainer = Trainer(
            max_steps=args.steps,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            default_root_dir=tempfile.mkdtemp(prefix=f"pretrained_check_{method}_"),  # mask's files
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[curve, *callbacks],
            deterministic=True,
        )
        trainer.fit(model, DataLoader(batches[: args.steps], batch_size=None))
        model.eval()
        with torch.no_grad():
            probs = torch.cat([model.fake_probability(b) for b in x_test.split(64)]).numpy()
        auc, ci = bootstrap_auc(probs, y_test.numpy(), [x[2] for x in test], args.seed)
        adapters = [a for _, a in iter_adapters(model.backbone)]
        strength = drift = None
        if adapters:
            k = len(adapters[0].ranks)
            per_sub = [
                [float(s.fitting_strength()) for a in adapters for s in a.subspaces if s.index == i] for i in range(k)
            ]
            strength = [float(np.mean(v)) for v in per_sub]
            drifts = []
            for a in adapters:
                for b in range(a.num_blocks):
                    subs = a.block_subspaces(b)
                    s, s0 = torch.cat([x.s for x in subs]).detach(), torch.cat([x.s0 for x in subs])
                    drifts.append(float((s - s0).norm() / s0.norm().clamp_min(1e-12)))
            drift = float(np.mean(drifts))
        masked = float(callbacks[0].masked.float().mean()) if callbacks else 0.0
        first, last = np.mean(curve.losses[:5]), np.mean(curve.losses[-5:])
        r = results[method] = dict(
            trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
            first=first,
            last=last,
            strength=strength,
            drift=drift,
            masked=masked,
            auc=auc,
            ci=ci,
        )
        strength = "–" if r["strength"] is None else ", ".join(f"{v:.3f}" for v in r["strength"])
        drift = "–" if r["drift"] is None else f"{r['drift']:.4f}"
        print(
            f"| {method} | {r['trainable']:,} | {r['first']:.3f} → {r['last']:.3f} | {strength} | {drift} | "
            f"{r['masked']:.2f} | {r['auc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |",
            flush=True,
        )

    def get(method: str, key: str) -> float:
        return results[method][key] if method in results else float("nan")

    masm_ci = results["masm"]["ci"] if "masm" in results else (float("nan"),) * 2
    print(
        f"pretrained check: masm_auc={get('masm', 'auc'):.3f} masm_ci=[{masm_ci[0]:.3f},{masm_ci[1]:.3f}] "
        f"effort_auc={get('effort', 'auc'):.3f} fullft_auc={get('full_ft', 'auc'):.3f} "
        f"masm_loss_drop={get('masm', 'first') - get('masm', 'last'):.3f}"
    )


if __name__ == "__main__":
    main()
