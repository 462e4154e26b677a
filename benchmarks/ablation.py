"""Does MASM generalise better? A paired, multi-seed ablation on real faces and real deepfakes (docs/evidence.md).

    python benchmarks/ablation.py --jobs 2 --write-docs   # the study: regenerates docs/evidence.md, its figure and
                                                          # the README's answer (results cached under outputs/)
    python benchmarks/ablation.py --quick                 # one seed, three arms, fewer steps: the structure check

Protocol (fixed before the first run; nothing here is chosen by looking at a test set):

Settings. Faces are read from ../shared/data (never copied into the repository); derived crops are cached under
``--out`` (default outputs/ablation).

- ``sbi`` — self-blended images → real deepfakes. Train: the FFHQ photos except every fifth (``ffhq_004``,
  ``ffhq_009``, …: 10 held back), each as a real face and, drawn afresh at every visit, as a self-blended fake
  (``masm_lightning.data.transforms.self_blend``, SBI). Test: the DFDC face crops (**primary endpoint: video-level
  AUC over their 60 videos**, a video's score the mean of its crops'), and frames of every shared FF++ clip (519,
  519_515, 634, 634_660) and of the DFDC clip, extracted by ``masm preprocess`` (aligned crops, ``clip_frames`` per
  video); and StyleGAN2 faces vs the held-back FFHQ photos.
- ``lofo`` — leave one forgery type out. Train: ``sbi``'s data plus FF++'s official-train Deepfakes 519_515 and its
  real 519 (extracted frames). Test: FF++'s official-test pair (FaceSwap 634_660 vs 634), the DFDC crops (primary),
  StyleGAN2 vs the held-back FFHQ photos.

No video, source video of a pair or photo is in both a training and a test set. FFHQ reals are JPEG quality 75 and
StyleGAN2 faces quality 100: both are cut to the same face box (x 15–85%, y 18–88% of the aligned photo) and
re-encoded identically (256 px, JPEG quality 90), so compression is no cue. In-domain AUC: the held-back FFHQ
photos vs their self-blends (fixed blends, the same in every run).

Arms (``ARMS``): each is ``configs/ffpp.yaml`` + ``configs/backbones/<backbone>.yaml`` + the arm's shipped overlays,
composed and parsed by the real CLI, so a change of the method's configs or code is picked up on the next run:
linear probe (``linear_probe.yaml``), full fine-tuning (``full_ft.yaml``), Effort as released (``effort.yaml``;
its ViT targets become the backbone's targets on a CNN), **plain** = MASM without mask and constraints
(``masm_no_mask.yaml``, λ_orth = λ_spec = λ_semantic = 0, no spectral cap: the reference of every paired
difference), constraints only (``masm_no_mask.yaml``), mask only (the recipe, no constraints), full MASM (the
recipe), FMSD (``fmsd.yaml`` on the recipe, as shipped) and the random-mask control (constraints, and
``RandomSubspaceMask`` masking at each of full MASM's decisions of the same seed as many subspaces as it did, drawn
at random). One rule scales the selective mask to the run length T (as ``configs/demo.yaml`` scales the recipe):
``warmup_steps = max(4, round(T/9))``, ``interval = max(1, round(T/18))``, ``momentum = max(0.5, 1 − 1/interval)``
(time constant = interval, as the recipe's 0.99 for 100), ``type_probes = max(1, round(4 · interval / 100))`` (the
recipe's share of probed steps, at least one per decision); nothing else of the arm changes.

Training. T optimizer steps of ``batch_size`` images at ``image_size`` px, the recipe's ``effort`` augmentation, CPU
float32, one thread per run. Seeds 0–4 are shared by all arms (paired): the head's initialisation, the batch order
(one permutation per epoch from ``(seed, epoch)``), every self-blend and augmentation (drawn from ``(seed, epoch,
draw, index)``; a worker process makes a seed's batches once and replays them to every arm, the same tensors).
The last step's weights are tested; no model selection on any test set.

Statistics, per backbone and setting, on the primary endpoint: per arm the mean over seeds and its 95% t-interval;
per seed the paired difference arm − plain; the 95% interval of the mean difference from a hierarchical bootstrap
(``bootstrap`` replicates: seeds with replacement, then the test videos with replacement, stratified by label and
shared by the drawn seeds, as the test set is). A claim ("arm differs from plain") is made only when that interval
excludes 0 and the difference has the same sign in ≥ 4 of 5 seeds (≥ 80%). The smallest difference the test set
can detect is printed first (Hanley–McNeil). Also reported: training loss, in-domain AUC, ECE (10 bins) and Brier
score on the primary set's crops, the share masked per rule, spectral drift and overlap with the semantic subspace
(``masm_lightning.adapters.constraint_metrics``).

Every (backbone, setting, arm, seed) result is a file under ``--out``, keyed by the protocol, the arm's composed
configuration, the data and weights by content and this script's code, and recording what its process loaded: the
package's modules by content, every other module by its distribution's version. An interrupted study continues where
it stopped; a change to the method's code, a config or a library reruns what it touches, and a change to code no
run loads reruns nothing (with ``--jobs`` ≥ 2 a run's process loads only what training and testing need: not the
CLI, the exporter or the web app).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
REFERENCE = "plain"
PRIMARY = "dfdc_crops"
NO_CONSTRAINTS = {"lambda_orth": 0.0, "lambda_spec": 0.0, "lambda_semantic": 0.0, "spectral_cap": None}
EVAL_SEED = 20260101  # the in-domain self-blends: the same images in every run
FACE_BOX = (0.15, 0.18, 0.85, 0.88)  # x0, y0, x1, y1 of an FFHQ-aligned photo: about our 1.3-margin face crops


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: shipped overlays (``configs/<name>.yaml``) on the base + backbone, model overrides, mask kind."""

    overlays: tuple[str, ...]
    label: str
    model: tuple[tuple[str, Any], ...] = ()
    random_mask: bool = False


ARMS = {
    "linear_probe": Arm(("linear_probe",), "linear probe"),
    "full_ft": Arm(("full_ft",), "full fine-tuning"),
    "effort": Arm(("effort",), "Effort (as released)"),
    "plain": Arm(("masm_no_mask",), "MASM, no mask, no constraints", tuple(NO_CONSTRAINTS.items())),
    "constraints": Arm(("masm_no_mask",), "constraints only"),
    "mask": Arm((), "mask only", tuple(NO_CONSTRAINTS.items())),
    "masm": Arm((), "full MASM"),
    "fmsd": Arm(("fmsd",), "FMSD (fmsd.yaml on the recipe)"),
    "random_mask": Arm(("masm_no_mask",), "random mask (as many as MASM)", random_mask=True),
}


@dataclasses.dataclass(frozen=True)
class Scale:
    steps: int
    batch_size: int
    image_size: int
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    settings: tuple[str, ...]
    clip_frames: int
    bootstrap: int


FULL = Scale(150, 16, 96, (0, 1, 2, 3, 4), tuple(ARMS), ("sbi", "lofo"), 16, 2000)
QUICK = Scale(24, 16, 64, (0,), ("plain", "masm", "random_mask"), ("sbi", "lofo"), 4, 200)


def mask_schedule(steps: int, recipe: dict[str, Any] | None = None) -> dict[str, float | int]:
    """The one rule that scales the selective mask to a run of ``steps`` optimizer steps (module doc); ``recipe``
    is the arm's mask arguments (their ``interval`` and ``type_probes`` set the probed share of steps)."""
    recipe = recipe or {}
    interval = max(1, round(steps / 18))
    probes = max(1, round(recipe.get("type_probes", 4) * interval / recipe.get("interval", 100)))
    return {
        "warmup_steps": max(4, round(steps / 9)),
        "interval": interval,
        "momentum": max(0.5, 1 - 1 / interval),
        "type_probes": probes,
    }


# --- configurations, composed by the real CLI ---


def compose(backbone: str, overlays: Sequence[str]) -> dict[str, Any]:
    """What ``masm fit --config configs/ffpp.yaml --config configs/backbones/<backbone>.yaml --config …`` runs."""
    return yaml.safe_load(_printed_config(backbone, tuple(overlays)))  # a fresh copy: callers may change it


@functools.cache
def _printed_config(backbone: str, overlays: tuple[str, ...]) -> str:
    """``--print_config`` of the composition, once per process (each parse of the CLI takes about 2 s)."""
    from masm_lightning.cli import main as cli_main

    args = ["fit", "--config", str(ROOT / "configs/ffpp.yaml"), "--config", str(backbone_config(backbone))]
    for overlay in overlays:
        args += ["--config", str(ROOT / "configs" / f"{overlay}.yaml")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main([*args, "--print_config"])
    return out.getvalue()


def backbone_config(name: str) -> Path:
    return ROOT / "configs" / "backbones" / f"{name}.yaml"


def arm_config(backbone: str, arm: str) -> dict[str, Any]:
    """The arm's model and callback configuration (plain data: it is hashed and sent to worker processes)."""
    spec = ARMS[arm]
    base = compose(backbone, [])
    config = compose(backbone, spec.overlays)
    model = {**config["model"], **dict(spec.model)}
    adapters = model.get("adapters")
    if adapters is not None and not _targets_exist(base, adapters["targets"]):
        # Effort's ViT targets (attn.qkv, attn.proj) on a backbone without them: the backbone's own targets.
        model["adapters"] = {**adapters, "targets": base["model"]["adapters"]["targets"]}
    callbacks = [c for c in config["trainer"].get("callbacks") or [] if c["class_path"].endswith("SelectiveLayerMask")]
    return {"model": model, "mask": callbacks[0] if callbacks else None, "random_mask": spec.random_mask}


def _targets_exist(base: dict[str, Any], targets: Sequence[str]) -> bool:
    if base["model"]["adapters"] is None:
        return True
    own = base["model"]["adapters"]["targets"]
    vit = any(t.startswith("attn.") for t in targets)
    return not vit or any(t.startswith("attn.") for t in own)


# --- data ---


@dataclasses.dataclass(frozen=True)
class Item:
    """One face crop: file, label (1 = fake), video key, and whether it is self-blended on the fly."""

    path: str
    label: int
    video: str
    blend: bool = False
    method: str = ""  # the manifest's method (a fake's forgery type: Deepfakes, FaceSwap, …); blends are `sbi`


def _reencode(source: Path, target: Path) -> None:
    from PIL import Image

    if target.is_file():
        return
    image = Image.open(source).convert("RGB")
    w, h = image.size
    box = (round(FACE_BOX[0] * w), round(FACE_BOX[1] * h), round(FACE_BOX[2] * w), round(FACE_BOX[3] * h))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    image.crop(box).resize((256, 256), Image.BICUBIC).save(partial, "JPEG", quality=90)
    partial.replace(target)


def ffhq_faces(data: Path, out: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(training photos, held-back photos, StyleGAN2 faces), cut and re-encoded identically into the cache."""
    folders = {}
    for kind in ("real", "fake"):
        paths = sorted((data / "ffhq_stylegan2" / kind).glob("*.jpg"))
        folders[kind] = [out / "faces" / "ffhq" / kind / p.name for p in paths]
        for source, target in zip(paths, folders[kind]):
            _reencode(source, target)
    real = folders["real"]
    held = [p for i, p in enumerate(real) if i % 5 == 4]
    return [p for p in real if p not in held], held, folders["fake"]


def extract_clips(data: Path, out: Path, frames: int) -> list[tuple[Any, str]]:
    """Frames of the shared FF++ and DFDC clips through ``masm preprocess`` (cached, idempotent): (record, split)."""
    from masm_lightning.cli import main as cli_main
    from masm_lightning.data.manifest import read_manifest

    jobs = []
    if (data / "FaceForensics++" / "splits").is_dir():
        jobs.append(("ffpp", ["--root", str(data / "FaceForensics++"), "--methods", "[Deepfakes, FaceSwap]"]))
    if (data / "DFDC").is_dir():
        jobs.append(("dfdc", ["--root", str(data / "DFDC")]))
    found = []
    for dataset, extra in jobs:
        target = out / "faces" / f"{dataset}_f{frames}"
        args = ["preprocess", "--dataset", dataset, *extra, "--out", str(target), "--frames", str(frames)]
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with quiet[0], quiet[1], contextlib.suppress(SystemExit):
            cli_main([*args, "--crop", "aligned", "--workers", "1"])
        if not (target / "manifest.csv").is_file():
            print(f"preprocess {dataset}: no manifest written, its clips are left out", flush=True)
            continue
        for record in read_manifest(target / "manifest.csv"):
            found.append((record, "test" if dataset == "dfdc" else record.split))
    return found


def dfdc_crops(data: Path) -> list[Item]:
    """The DFDC face crops; the video is the second field of ``<split>_<video>[_<original>]_<frame>.jpg``."""
    items = []
    for label, kind in ((0, "real"), (1, "fake")):
        for path in sorted((data / "dfdc_faces" / kind).glob("*.jpg")):
            items.append(Item(str(path), label, "dfdc/" + path.stem.split("_")[1]))
    return items


def study_data(data: Path, out: Path, clip_frames: int) -> dict[str, dict[str, list[Item]]]:
    """Per setting: ``train`` and the test sets (``dfdc_crops`` primary, ``in_domain`` the diagnostic)."""
    train_photos, held, stylegan = ffhq_faces(data, out)
    clips = extract_clips(data, out, clip_frames)

    def clip_item(record: Any) -> Item:
        return Item(
            str(record.path), record.label, f"{record.dataset}/{record.label}/{record.video_id}", method=record.method
        )

    sbi_train = [Item(str(p), 0, f"ffhq/{p.stem}") for p in train_photos]
    sbi_train += [dataclasses.replace(x, label=1, blend=True) for x in sbi_train]
    common = {
        PRIMARY: dfdc_crops(data),
        "stylegan2": [Item(str(p), 0, f"ffhq/{p.stem}") for p in held]
        + [Item(str(p), 1, f"stylegan2/{p.stem}") for p in stylegan],
        "in_domain": [Item(str(p), 0, f"ffhq/{p.stem}") for p in held]
        + [Item(str(p), 1, f"sbi/{p.stem}", blend=True) for p in held],
    }
    ffpp_train = [clip_item(r) for r, split in clips if r.dataset == "ffpp" and split == "train"]
    ffpp_test = [clip_item(r) for r, split in clips if r.dataset == "ffpp" and split == "test"]
    every_clip = [clip_item(r) for r, _ in clips]
    return {
        "sbi": {"train": sbi_train, **common, "clips": every_clip},
        "lofo": {"train": sbi_train + ffpp_train, **common, "ffpp_faceswap": ffpp_test},
    }


def check_disjoint(sets: dict[str, list[Item]]) -> None:
    """No photo, video or source video of a pair both in training and in a test set."""

    def sources(item: Item) -> set[str]:
        if item.video.split("/", 1)[0] in ("ffhq", "sbi", "stylegan2"):
            return {Path(item.path).name}  # a photo
        return set(item.video.rsplit("/", 1)[-1].split("_"))  # a video, or both videos of a pair

    train = set().union(*(sources(x) for x in sets["train"]))
    for name, items in sets.items():
        if name != "train":
            shared = train & set().union(*(sources(x) for x in items))
            if shared:
                raise RuntimeError(f"test set {name} shares {sorted(shared)[:5]} with the training set")


# --- one run ---


@dataclasses.dataclass(frozen=True)
class RunSpec:
    backbone: str
    setting: str
    arm: str
    seed: int
    scale: Scale
    config: dict[str, Any]
    folder: str
    key: str
    schedule: str | None  # full MASM's layer_masks.jsonl of the same seed (random-mask arm)


def _class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_model(config: dict[str, Any], image_size: int) -> Any:
    from masm_lightning import MASMConfig
    from masm_lightning.training.module import MASMDetector
    from masm_lightning.training.selection import LayerSelection

    model = dict(config["model"])
    optimizer = model.pop("optimizer")
    opt_cls, opt_args = _class(optimizer["class_path"]), dict(optimizer.get("init_args") or {})
    model.pop("lr_scheduler", None)
    if model.get("adapters") is not None:
        model["adapters"] = MASMConfig(**model["adapters"])
    if model.get("selection") is not None:
        model["selection"] = LayerSelection(**model["selection"])
    kwargs = dict(model.get("backbone_kwargs") or {})
    if "img_size" in kwargs:
        model["backbone_kwargs"] = {**kwargs, "img_size": image_size}
    else:
        model["image_size"] = image_size
    return MASMDetector(**model, optimizer=lambda params: opt_cls(params, **opt_args))


@functools.lru_cache(maxsize=16)
def _eval_tensors(items: tuple[Item, ...], size: int, mean: tuple, std: tuple, interpolation: str) -> Any:
    """The test images of one set, resized and normalised once per process (deterministic)."""
    import torch

    from masm_lightning.data.datamodule import FrameDataset
    from masm_lightning.data.manifest import FrameRecord
    from masm_lightning.data.transforms import eval_transform

    records = [FrameRecord("study", "test", x.label, x.method, x.video, i, Path(x.path)) for i, x in enumerate(items)]
    dataset = FrameDataset(
        records, eval_transform(size, mean, std, interpolation), [x.blend for x in items], seed=EVAL_SEED
    )
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def train_loader(items: Sequence[Item], scale: Scale, seed: int, data_config: dict[str, Any]) -> Any:
    """The seed's batches: one permutation per epoch from (seed, epoch); augmentation and blends per draw."""
    from torch.utils.data import DataLoader

    from masm_lightning.data.datamodule import FrameDataset, SampleDraw, collate_frames
    from masm_lightning.data.manifest import FrameRecord
    from masm_lightning.data.transforms import train_transform

    records = [FrameRecord("study", "train", x.label, x.method, x.video, i, Path(x.path)) for i, x in enumerate(items)]
    transform = train_transform(
        scale.image_size, data_config["mean"], data_config["std"], "effort", data_config["interpolation"]
    )
    dataset = FrameDataset(records, transform, [x.blend for x in items], seed=seed)
    batches: list[list[SampleDraw]] = []
    epoch = 0
    while len(batches) < scale.steps:
        order = np.random.default_rng([seed, epoch]).permutation(len(items))
        draws = [SampleDraw(int(i), seed, epoch, d) for d, i in enumerate(order)]
        for start in range(0, len(draws) - scale.batch_size + 1, scale.batch_size):
            batches.append(draws[start : start + scale.batch_size])
        epoch += 1
    return DataLoader(dataset, batch_sampler=batches[: scale.steps], collate_fn=collate_frames, num_workers=0)


class _Replay:
    """A seed's training batches, made once per worker process and replayed to every arm of that seed: the same
    tensors the seed's loader yields (every draw is a function of (seed, epoch, draw, index), not of the arm), as
    fresh copies so that no run can change another's input."""

    def __init__(self, batches: list[dict[str, Any]], types: list[int]) -> None:
        self.batches, self.types = batches, types

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {k: v.clone() if hasattr(v, "clone") else v for k, v in self.batches[index].items()}


@functools.lru_cache(maxsize=3)  # a worker moves on from a seed's sbi and lofo runs, then never comes back
def _seed_batches(items: tuple[Item, ...], scale: Scale, seed: int, data: tuple[Any, ...]) -> _Replay:
    mean, std, interpolation = data
    loader = train_loader(items, scale, seed, {"mean": mean, "std": std, "interpolation": interpolation})
    return _Replay(list(loader), list(loader.dataset.types))


def replay_loader(items: Sequence[Item], scale: Scale, seed: int, data_config: dict[str, Any]) -> Any:
    """:func:`train_loader`'s batches for this seed, made at the seed's first run in this process."""
    from torch.utils.data import DataLoader

    data = (tuple(data_config["mean"]), tuple(data_config["std"]), data_config["interpolation"])
    replay = _seed_batches(tuple(items), scale, seed, data)
    return DataLoader(replay, batch_size=None, collate_fn=_same, num_workers=0)


def _same(batch: Any) -> Any:
    return batch


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann–Whitney, ties counted half)."""
    return float(_auc_rows(scores[None], labels)[0])


def _auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of every row of ``scores`` against the same ``labels`` (1 = fake = positive)."""
    ranks = stats.rankdata(scores, axis=-1)
    pos = labels == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return (ranks[..., pos].sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """(ECE over ``bins`` equal-width confidence bins of the predicted class, Brier score of p(fake))."""
    confidence = np.maximum(probs, 1 - probs)
    correct = (probs >= 0.5).astype(int) == labels
    which = np.minimum((confidence - 0.5) * 2 * bins, bins - 1).astype(int)
    ece = sum(
        abs(confidence[which == b].mean() - correct[which == b].mean()) * (which == b).mean()
        for b in range(bins)
        if (which == b).any()
    )
    return float(ece), float(np.mean((probs - labels) ** 2))


def evaluate(model: Any, sets: dict[str, list[Item]], size: int) -> dict[str, Any]:
    import torch

    data = model.data_config
    out = {}
    model.eval()
    for name, items in sets.items():
        if name == "train" or not items:
            continue
        x = _eval_tensors(tuple(items), size, tuple(data["mean"]), tuple(data["std"]), data["interpolation"])
        with torch.no_grad():
            probs = torch.cat([model.fake_probability(b) for b in x.split(64)]).double().numpy()
        labels = np.array([i.label for i in items])
        videos = sorted({(i.video, i.label) for i in items})
        frame_of = {v: [k for k, i in enumerate(items) if (i.video, i.label) == v] for v in videos}
        video_scores = [float(probs[frame_of[v]].mean()) for v in videos]
        video_labels = np.array([label for _, label in videos])
        ece, brier = calibration(probs, labels)
        two = len(set(labels.tolist())) == 2
        out[name] = {
            "frame_auc": auc(probs, labels) if two else math.nan,
            "video_auc": auc(np.array(video_scores), video_labels)
            if len(set(video_labels.tolist())) == 2
            else math.nan,
            "ece": ece,
            "brier": brier,
            "videos": [v for v, _ in videos],
            "video_labels": video_labels.tolist(),
            "video_scores": video_scores,
            "frame_probs": probs.tolist(),
        }
    return out


def adapter_diagnostics(model: Any, mask: Any) -> dict[str, Any]:
    """Spectral drift, semantic overlap, orthogonality error (adapters) and the share masked per rule."""
    from masm_lightning.adapters import constraint_metrics, iter_adapters

    found: dict[str, Any] = {}
    if list(iter_adapters(model.backbone)):
        metrics = constraint_metrics(model.backbone, semantic=True)
        found = {k: float(v) for k, v in metrics.items()}
    if mask is not None and getattr(mask, "history", None):
        history = mask.history
        masked_per_decision = [
            (sum(bool(s["masked"]) for s in e["subspaces"]) / len(e["subspaces"]))
            if "subspaces" in e
            else len(e["masked"]) / max(1, len(getattr(mask, "masked", [])))
            for e in history
        ]
        found["masked_mean"] = float(np.mean(masked_per_decision))
        found["decisions"] = len(history)
        # The share of subspaces each rule holds masked, mean over decisions (the trace names each mask's rule).
        rules = sorted(
            {s["rule"] for e in history for s in e.get("subspaces", []) if s.get("masked") and s.get("rule")}
        )
        for rule in rules:
            found[f"masked_by_{rule}"] = float(
                np.mean(
                    [
                        sum(bool(s["masked"]) and s.get("rule") == rule for s in e["subspaces"]) / len(e["subspaces"])
                        for e in history
                        if e.get("subspaces")
                    ]
                )
            )
    return found


def run_one(spec: RunSpec, sets: dict[str, list[Item]]) -> dict[str, Any]:
    """Train one arm for one seed and test its last weights; writes ``result.json`` in the run folder."""
    import torch
    from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything

    from masm_lightning.data.forgery_types import forgery_type_name
    from masm_lightning.training.callbacks import RandomSubspaceMask

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and logging intervals: not measured here
    for name in ("lightning.pytorch", "lightning.fabric", "masm_lightning"):  # its banners, once per run
        logging.getLogger(name).setLevel(logging.ERROR)
    folder = Path(spec.folder)
    shutil.rmtree(folder, ignore_errors=True)  # the mask trace appends: start clean
    folder.mkdir(parents=True)
    started = time.perf_counter()
    model = build_model(spec.config, spec.scale.image_size)  # built by fit (FMSD selects layers in it)
    callbacks: list[Any] = []
    mask = None
    if spec.config["mask"] is not None:
        mask_spec = spec.config["mask"]
        recipe = mask_spec.get("init_args") or {}
        args = {**recipe, **mask_schedule(spec.scale.steps, recipe)}
        mask = _class(mask_spec["class_path"])(**args)
        callbacks.append(mask)
    if spec.config["random_mask"]:
        if spec.schedule is None or not Path(spec.schedule).is_file():
            raise RuntimeError(f"random_mask needs full MASM's mask trace of seed {spec.seed}: {spec.schedule}")
        mask = RandomSubspaceMask(spec.schedule, seed=spec.seed)
        callbacks.append(mask)

    losses: list[float] = []
    head: list[str] = []

    class Losses(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            weights = torch.cat([p.detach().flatten() for p in pl_module.head.parameters()]).double().numpy()
            head.append(hashlib.sha256(weights.tobytes()).hexdigest()[:16])  # the same in every arm of a seed

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]))

    loader = replay_loader(sets["train"], spec.scale, spec.seed, model.data_config)

    class Batches(LightningDataModule):  # FMSD's selection reads its batches from the data module
        # The training split's forgery types, as FaceForgeryDataModule records them: routing assigns subspaces
        # round-robin over these (batches carry `forgery_type`: real, sbi for blends, the FF++ method).
        def __init__(self) -> None:
            super().__init__()
            self.trained_forgery_types = [forgery_type_name(t) for t in sorted(set(loader.dataset.types))]

        def train_dataloader(self) -> Any:
            return loader

    trainer = Trainer(
        max_steps=spec.scale.steps,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(folder),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Losses(), *callbacks],
        deterministic=True,
        use_distributed_sampler=False,
    )
    # The head is drawn when fit builds the model, right after the backbone (which draws the same in every arm):
    # seeding here gives every arm of a seed the same initial head.
    seed_everything(spec.seed, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(model, datamodule=Batches())
    trained = time.perf_counter() - started
    result = {
        "key": spec.key,
        "backbone": spec.backbone,
        "setting": spec.setting,
        "arm": spec.arm,
        "seed": spec.seed,
        "steps": len(losses),
        "trainable": model.num_trainable_parameters(),
        "head_init": head[0],
        "loss_first": float(np.mean(losses[: max(1, len(losses) // 10)])),
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "losses": losses,
        "diagnostics": adapter_diagnostics(model, mask),
        "sets": evaluate(model, sets, spec.scale.image_size),
        "train_s": trained,
        "total_s": time.perf_counter() - started,
        "depends": dependencies(),
    }
    (folder / "result.json").write_text(json.dumps(result))
    return result


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


# --- the study: keys, cache, scheduling ---


def code_digest() -> str:
    """This script's functions that make a run's numbers (not those that only report them). The package's code is
    not here: each result records the modules its process loaded (:func:`dependencies`)."""
    digest = hashlib.sha256()
    for function in (
        mask_schedule,
        compose,
        _printed_config,
        arm_config,
        _reencode,
        ffhq_faces,
        extract_clips,
        dfdc_crops,
    ):
        digest.update(inspect.getsource(function).encode())
    for function in (
        study_data,
        build_model,
        _eval_tensors,
        train_loader,
        _Replay,
        _seed_batches,
        replay_loader,
        _auc_rows,
        calibration,
        evaluate,
    ):
        digest.update(inspect.getsource(function).encode())
    digest.update(inspect.getsource(adapter_diagnostics).encode() + inspect.getsource(run_one).encode())
    return digest.hexdigest()


@functools.cache
def file_sha256(path: str) -> str:
    """A file's content digest, read once per process (the study's inputs do not change while it runs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    if name == "python":
        return ".".join(map(str, sys.version_info[:3]))
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def dependencies() -> dict[str, dict[str, str]]:
    """What this process has loaded that a run's numbers depend on beyond its key: every module of the package by
    content, every other module by its installed distribution's version (the Python version for the standard
    library). Recorded with each result; a result whose record no longer holds is run again."""
    from importlib import metadata

    import masm_lightning

    package = Path(masm_lightning.__file__).resolve().parent
    files, tops = {}, set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(package):
            files[str(Path(path).resolve().relative_to(package.parent))] = file_sha256(str(Path(path).resolve()))
        else:
            tops.add(name.partition(".")[0])
    owners = metadata.packages_distributions()
    names = {dist for top in tops for dist in owners.get(top, ()) if dist != "masm-lightning"} | {"python"}
    versions = {name: version for name in sorted(names) if (version := _distribution_version(name)) is not None}
    return {"files": dict(sorted(files.items())), "versions": versions}


def changed_dependency(record: dict[str, Any] | None) -> str | None:
    """What no longer holds of a result's recorded dependencies, the first found (None: all hold)."""
    if not record:
        return "no record of what its run loaded"
    import masm_lightning

    root = Path(masm_lightning.__file__).resolve().parent.parent
    for name, sha in record.get("files", {}).items():
        path = root / name
        if not path.is_file() or file_sha256(str(path)) != sha:
            return f"{name} changed"
    for name, version in record.get("versions", {}).items():
        if _distribution_version(name) != version:
            return f"{name} {version} → {_distribution_version(name) or 'not installed'}"
    return None


def _weights_sha256(path: str) -> str | None:
    """The weights file's digest; None where it does not resolve (the run then fails with the loader's own message,
    reported like any failed run, instead of the study ending here)."""
    from masm_lightning.training.weights import resolve_weights_path

    try:
        return file_sha256(resolve_weights_path(path))
    except OSError:
        return None


def run_key(scale: Scale, config: dict[str, Any], items: dict[str, list[Item]], code: str) -> str:
    """The protocol, the arm's composed configuration, the data by content, the weights file by content and this
    script's code; the package's code and the libraries are checked per result (:func:`changed_dependency`)."""
    weights = config["model"].get("checkpoint_path")
    payload = json.dumps(
        {
            "protocol": dataclasses.asdict(dataclasses.replace(scale, seeds=(), arms=(), settings=())),
            "config": config,
            "data": {k: [(*dataclasses.astuple(x)[1:], file_sha256(x.path)) for x in v] for k, v in items.items()},
            "weights": _weights_sha256(weights) if weights else None,
            "code": code,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached(folder: Path, key: str, stale: collections.Counter[str] | None = None) -> dict[str, Any] | None:
    """The run's result if its key matches and its recorded dependencies still hold; why not, counted in ``stale``."""
    path = folder / "result.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if result.get("key") != key:
        return None
    changed = changed_dependency(result.get("depends"))
    if changed is not None and stale is not None:
        stale[changed] += 1
    return result if changed is None else None


def from_cache(specs: list[RunSpec]) -> tuple[dict[tuple, dict[str, Any]], list[RunSpec]]:
    """The specs' cached results and the specs still to run; prints what made a cached result stale."""
    results: dict[tuple, dict[str, Any]] = {}
    pending = []
    stale: collections.Counter[str] = collections.Counter()
    for spec in specs:
        hit = cached(Path(spec.folder), spec.key, stale)
        if hit is not None:
            results[(spec.backbone, spec.setting, spec.arm, spec.seed)] = hit
        else:
            pending.append(spec)
    for changed, count in stale.most_common():
        print(f"  {count} cached run(s) stale: {changed}", flush=True)
    return results, pending


def run_study(specs: list[RunSpec], sets: dict[str, dict[str, list[Item]]], jobs: int) -> dict[tuple, dict[str, Any]]:
    """Every spec's result, from the cache or run now; random-mask runs wait for full MASM of their seed."""
    results, pending = from_cache(specs)
    if pending:
        print(f"running {len(pending)} of {len(specs)} runs ({len(specs) - len(pending)} cached)", flush=True)
    started = time.perf_counter()
    left = collections.Counter(spec.backbone for spec in pending)

    def ready(spec: RunSpec) -> bool:
        return not spec.config["random_mask"] or (spec.backbone, spec.setting, "masm", spec.seed) in results

    def done(spec: RunSpec, result: dict[str, Any]) -> None:
        results[(spec.backbone, spec.setting, spec.arm, spec.seed)] = result
        print(
            f"  {spec.backbone} {spec.setting} {spec.arm:<13} seed {spec.seed}: loss {result['loss_first']:.3f} → "
            f"{result['loss_last']:.3f}, {result['total_s']:.0f} s",
            flush=True,
        )
        backbone_done(spec)

    def backbone_done(spec: RunSpec) -> None:
        left[spec.backbone] -= 1
        if not left[spec.backbone]:  # backbones run one after the other: its study's wall time, roughly
            print(f"{spec.backbone}: runs done after {(time.perf_counter() - started) / 60:.1f} min", flush=True)

    def failed(spec: RunSpec, error: BaseException) -> None:
        # One arm's failure (a bug, a config that does not fit the backbone) is reported; the study goes on.
        print(f"  {spec.backbone} {spec.setting} {spec.arm} seed {spec.seed}: FAILED ({type(error).__name__}: {error})")
        backbone_done(spec)

    def unrunnable() -> None:
        for spec in pending:
            print(
                f"  {spec.backbone} {spec.setting} {spec.arm} seed {spec.seed}: not run (no full MASM run of its seed)"
            )

    if jobs <= 1:
        for spec in list(pending):
            if ready(spec):
                pending.remove(spec)
                try:
                    done(spec, run_one(spec, sets[spec.setting]))
                except Exception as error:  # reported, and the study continues
                    failed(spec, error)
        unrunnable()
        return results
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        running: dict[Future, RunSpec] = {}
        while pending or running:
            for spec in [s for s in pending if ready(s)][: max(0, jobs - len(running))]:
                pending.remove(spec)
                running[pool.submit(run_one, spec, sets[spec.setting])] = spec  # the items, not the preparation
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                spec = running.pop(future)
                try:
                    done(spec, future.result())
                except Exception as error:  # reported, and the study continues
                    failed(spec, error)
    unrunnable()
    return results


# --- statistics ---


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds (NaN interval for one seed)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def hierarchical_bootstrap(
    arm: np.ndarray, ref: np.ndarray, labels: np.ndarray, replicates: int, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the mean over seeds of AUC(arm) − AUC(ref): seeds resampled, then videos (stratified by
    label, one draw per replicate shared by the drawn seeds: every seed is tested on the same videos).

    ``arm``, ``ref``: video scores, seeds × videos.
    """
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n = arm.shape[0]
    diffs = np.empty(replicates)
    for b in range(replicates):
        seeds = rng.integers(0, n, n)
        videos = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        lab = labels[videos]
        diffs[b] = np.mean(_auc_rows(arm[seeds][:, videos], lab) - _auc_rows(ref[seeds][:, videos], lab))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def detectable_difference(n_fake: int, n_real: int, base_auc: float = 0.7, correlation: float = 0.5) -> float:
    """Smallest paired AUC difference a two-sided 5% test detects with 80% power on this many videos (one seed):
    2.8 × SE of the difference, SE from Hanley & McNeil (1982) at ``base_auc`` with the two models' AUC estimates
    correlated ``correlation``."""
    a = base_auc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_fake - 1) * (q1 - a * a) + (n_real - 1) * (q2 - a * a)) / (n_fake * n_real)
    return 2.8 * math.sqrt(2 * var * (1 - correlation))


def summarise(
    results: dict[tuple, dict[str, Any]], backbone: str, setting: str, scale: Scale
) -> dict[str, dict[str, Any]]:
    """Per arm: primary mean and interval, paired difference to plain with its bootstrap interval, diagnostics."""
    rows: dict[str, dict[str, Any]] = {}
    seeds = [s for s in scale.seeds if (backbone, setting, REFERENCE, s) in results]
    for arm in scale.arms:
        runs = [results[(backbone, setting, arm, s)] for s in scale.seeds if (backbone, setting, arm, s) in results]
        if not runs:
            continue
        primary = [r["sets"][PRIMARY]["video_auc"] for r in runs]
        row: dict[str, Any] = {"arm": arm, "seeds": len(runs), "primary": t_interval(primary), "runs": runs}
        paired = [s for s in seeds if (backbone, setting, arm, s) in results]
        if arm != REFERENCE and paired:
            a = np.array([results[(backbone, setting, arm, s)]["sets"][PRIMARY]["video_scores"] for s in paired])
            r = np.array([results[(backbone, setting, REFERENCE, s)]["sets"][PRIMARY]["video_scores"] for s in paired])
            labels = np.array(runs[0]["sets"][PRIMARY]["video_labels"])
            per_seed = _auc_rows(a, labels) - _auc_rows(r, labels)
            mean = float(per_seed.mean())
            ci = hierarchical_bootstrap(a, r, labels, scale.bootstrap)
            same = int(np.sum(np.sign(per_seed) == np.sign(mean))) if mean != 0 else 0
            row |= {
                "diff": mean,
                "per_seed": per_seed.tolist(),
                "ci": ci,
                "same_sign": same,
                "paired": len(paired),
                "planned": len(scale.seeds),
                # A claim only on the whole protocol: every planned seed paired (a study still running claims
                # nothing yet), the interval excluding 0 and the sign in ≥ 80% of the seeds (4 of 5).
                "claim": len(paired) == len(scale.seeds)
                and (ci[0] > 0 or ci[1] < 0)
                and same >= math.ceil(0.8 * len(scale.seeds)),
            }
        rows[arm] = row
    return rows


# --- reporting ---


def _fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mean(runs: list[dict[str, Any]], get: Any) -> float:
    values = [get(r) for r in runs]
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def tables(rows: dict[str, dict[str, Any]], setting: str) -> str:
    """The two markdown tables of one backbone and setting: generalisation, then diagnostics."""
    others = [n for n in next(iter(rows.values()))["runs"][0]["sets"] if n not in (PRIMARY, "in_domain")]
    head = (
        "| arm | seeds | **DFDC video AUC** mean [95% CI] | Δ vs plain [hier. bootstrap 95%] | same sign | claim "
        "| DFDC frame AUC | " + " | ".join(f"{n} frame AUC" for n in others) + " | ECE | Brier |"
    )
    lines = [head, "|" + "---|" * (9 + len(others))]
    for arm, row in rows.items():
        mean, low, high = row["primary"]
        runs = row["runs"]
        diff = "reference" if arm == REFERENCE else "–"
        same = claim = "–"
        if "diff" in row:
            diff = f"{_fmt(row['diff'], sign=True)} [{_fmt(row['ci'][0], sign=True)}, {_fmt(row['ci'][1], sign=True)}]"
            same, claim = f"{row['same_sign']}/{row['paired']}", "**yes**" if row["claim"] else "no"
            if row["paired"] < row["planned"]:
                claim = "pending"  # not all planned seeds yet
        cells = [
            ARMS[arm].label,
            str(row["seeds"]),
            f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]",
            diff,
            same,
            claim,
            _fmt(_mean(runs, lambda r: r["sets"][PRIMARY]["frame_auc"])),
            *[_fmt(_mean(runs, lambda r, n=n: r["sets"][n]["frame_auc"])) for n in others],
            _fmt(_mean(runs, lambda r: r["sets"][PRIMARY]["ece"])),
            _fmt(_mean(runs, lambda r: r["sets"][PRIMARY]["brier"])),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| arm | trainable | train loss first → last 10% | in-domain AUC | share masked (mean over decisions) "
        "| by rule (mean over decisions) | spectral drift max \\|s−s0\\|/σ_r | semantic overlap max ‖P_f U‖_F "
        "| orth. error | s per run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in rows.items():
        runs = row["runs"]

        def diag(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return _mean(runs, lambda r: r["diagnostics"].get(key))

        by_rule = sorted({k for run in runs for k in run["diagnostics"] if k.startswith("masked_by_")})
        rules = " · ".join(f"{k.removeprefix('masked_by_')} {_fmt(diag(k), 2)}" for k in by_rule) or "–"
        cells = [
            ARMS[arm].label,
            f"{runs[0]['trainable']:,}",
            f"{_fmt(_mean(runs, lambda r: r['loss_first']))} → {_fmt(_mean(runs, lambda r: r['loss_last']))}",
            _fmt(_mean(runs, lambda r: r["sets"]["in_domain"]["frame_auc"])),
            _fmt(diag("masked_mean"), 2),
            rules,
            _fmt(diag("spectral_drift"), 3),
            _fmt(diag("semantic_overlap"), 3),
            _fmt(diag("orth_error"), 3),
            f"{_mean(runs, lambda r: r['total_s']):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_line(backbone: str, setting: str, rows: dict[str, dict[str, Any]]) -> str:
    masm, plain = rows.get("masm"), rows.get(REFERENCE)
    if masm is None or plain is None or "diff" not in masm:
        return f"ablation: backbone={backbone} setting={setting} primary=video_auc incomplete=yes claim=no"
    return (
        f"ablation: backbone={backbone} setting={setting} primary=video_auc masm={masm['primary'][0]:.3f} "
        f"plain={plain['primary'][0]:.3f} diff={masm['diff']:+.3f} ci=[{masm['ci'][0]:+.3f},{masm['ci'][1]:+.3f}] "
        f"seeds_same_sign={masm['same_sign']}/{masm['paired']} claim={'yes' if masm['claim'] else 'no'}"
    )


def forest_plot(summaries: dict[tuple[str, str], dict[str, dict[str, Any]]], path: Path) -> Path:
    """Paired differences to plain on the primary endpoint: per arm the mean with its bootstrap interval and the
    per-seed differences, one panel per backbone and setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(b for b, _ in summaries))
    settings = list(dict.fromkeys(s for _, s in summaries))
    fig, axes = plt.subplots(
        len(backbones), len(settings), figsize=(5.2 * len(settings), 3.2 * len(backbones)), squeeze=False, sharex=True
    )
    for ax in axes.flat:  # a row per backbone, a column per setting; a cell without runs stays empty
        ax.set_visible(False)
    for (backbone, setting), rows in summaries.items():
        ax = axes[backbones.index(backbone), settings.index(setting)]
        ax.set_visible(True)
        arms = [a for a, r in rows.items() if "diff" in r]
        for y, arm in enumerate(arms):
            row = rows[arm]
            colour = "tab:red" if arm == "masm" else "tab:blue"
            ax.plot(row["ci"], [y, y], color=colour, lw=2)
            ax.plot(row["diff"], y, "D", color=colour, ms=6)
            ax.plot(row["per_seed"], [y] * len(row["per_seed"]), "o", mfc="none", color="grey", ms=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(arms)), [ARMS[a].label for a in arms], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{backbone} · {setting}", fontsize=9)
        ax.set_xlabel("Δ DFDC video AUC vs plain MASM", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise RuntimeError(f"markers {start} … {end} not found")
    head, rest = text.split(start, 1)
    return head + start + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1]


def answer(summaries: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> str:
    """The study's answer to "does full MASM help?" from its claims (full MASM against plain MASM): ``not_shown``
    without a claim, ``yes`` when every claim is an improvement, ``no`` when every claim is a loss, else ``mixed``."""
    claimed = [rows["masm"]["diff"] for rows in summaries.values() if rows.get("masm", {}).get("claim")]
    if not claimed:
        return "not_shown"
    if all(d > 0 for d in claimed):
        return "yes"
    return "no" if all(d < 0 for d in claimed) else "mixed"


def readme_answer(summaries: dict[tuple[str, str], dict[str, dict[str, Any]]], scale: Scale, mde: float) -> str:
    parts = []
    for (backbone, setting), rows in summaries.items():
        masm = rows.get("masm", {})
        if "diff" not in masm:
            continue
        parts.append(
            f"{backbone}/{setting}: Δ {masm['diff']:+.3f} [{masm['ci'][0]:+.3f}, {masm['ci'][1]:+.3f}], same sign in "
            f"{masm['same_sign']}/{masm['paired']} seeds"
        )
    if not parts:
        return (
            "Not measured yet: full MASM and plain MASM have no paired run. See [docs/evidence.md](docs/evidence.md)."
        )
    claimed = [rows["masm"]["diff"] for rows in summaries.values() if rows.get("masm", {}).get("claim")]
    verdict = {
        "not_shown": "**Not shown.**",
        "yes": f"**Yes, in {len(claimed)} of {len(parts)} settings.**",
        "no": f"**No: full MASM is below plain in {len(claimed)} of {len(parts)} settings, above it in none.**",
        "mixed": f"**Full MASM differs from plain in {len(claimed)} of {len(parts)} settings, not always upwards.**",
    }[answer(summaries)]
    short = {}  # backbone → fewest paired seeds of full MASM over its settings, where fewer than the scale's
    for (backbone, _), rows in summaries.items():
        paired = rows.get("masm", {}).get("paired", 0)
        if paired < len(scale.seeds):
            short[backbone] = min(paired, short.get(backbone, paired))
    if short:
        which = ", ".join(f"{b} {n} of {len(scale.seeds)} seeds" for b, n in short.items())
        verdict = f"{verdict} *Preliminary where the study is still running: {which} so far.*"
    return textwrap.fill(
        f"{verdict} In the paired ablation ({scale.steps} steps of {scale.batch_size} faces at {scale.image_size} px "
        f"on {', '.join(sorted({b for b, _ in summaries}))}; primary endpoint: video AUC on the DFDC crops, never "
        "trained on), full MASM "
        "minus MASM without mask and constraints: " + "; ".join(parts) + ". A claim needs the 95% interval "
        "(hierarchical bootstrap over seeds and test videos) to exclude 0 and the sign to hold in 4 of 5 seeds; "
        f"differences below about {mde:.2f} AUC are beyond what the test videos can resolve. Protocol, all arms, "
        "diagnostics and the forest plot: [docs/evidence.md](docs/evidence.md).",
        118,
        break_long_words=False,
        break_on_hyphens=False,
    )


def write_docs(
    summaries: dict[tuple[str, str], dict[str, dict[str, Any]]], scale: Scale, header: str, command: str, mde: float
) -> None:
    figure = forest_plot(summaries, ROOT / "docs" / "images" / "evidence_forest.png")
    body = [header, "", f"![paired differences](images/{figure.name})", ""]
    for (backbone, setting), rows in summaries.items():
        body += [
            f"### {backbone} · {setting}",
            "",
            tables(rows, setting),
            "",
            f"`{summary_line(backbone, setting, rows)}`",
            "",
        ]
    body.append(f"Generated by `{command}`.")
    doc = ROOT / "docs" / "evidence.md"
    doc.write_text(_replace_between(doc.read_text(), "<!-- results:start -->", "<!-- results:end -->", "\n".join(body)))
    readme = ROOT / "README.md"
    readme.write_text(
        _replace_between(
            readme.read_text(), "<!-- evidence:start -->", "<!-- evidence:end -->", readme_answer(summaries, scale, mde)
        )
    )


# --- backbones ---


def input_size(config: dict[str, Any], size: int) -> int:
    """The study's input size for a backbone: as given for a CNN; for a ViT with a fixed ``img_size``, rounded to a
    multiple of its patch size (read from the timm name, e.g. ``patch14``: 96 → 98)."""
    kwargs = config["model"].get("backbone_kwargs") or {}
    patch = re.search(r"patch(\d+)", config["model"]["backbone"])
    if "img_size" not in kwargs or patch is None:
        return size
    step = int(patch.group(1))
    return max(step, round(size / step) * step)


def loads_offline(name: str) -> bool:
    """Whether a backbone config's pretrained weights load here without the network (``--backbones all``)."""
    config = compose(name, ["linear_probe"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model({"model": config["model"]}, input_size(config, 96))
            model.configure_model()
    except Exception as error:  # any failure to build means: not usable offline
        print(f"backbone {name}: skipped, its weights do not load offline ({type(error).__name__}: {error})")
        return False
    return model.hparams["pretrained"] or model.hparams["checkpoint_path"] is not None


# --- entry point ---


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, three arms, fewer steps (the structure check)")
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["mobilenetv2"],
        help="configs/backbones/<name>.yaml names, or all (those whose weights load offline)",
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="a subset of the arms (default: the scale's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="a subset of the seeds (default: the scale's)")
    parser.add_argument("--settings", nargs="+", choices=["sbi", "lofo"], help="a subset of the settings")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each (about the cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "ablation", help="cache and run folders")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--report-only", action="store_true", help="tables from the cached runs; run nothing")
    parser.add_argument("--verify", action="store_true", help="rerun the first run afresh: bit-identical scores?")
    parser.add_argument("--write-docs", action="store_true", help="regenerate docs/evidence.md, its figure, README")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    args = parse(argv)
    scale = QUICK if args.quick else FULL
    scale = dataclasses.replace(
        scale,
        arms=tuple(a for a in ARMS if a in (args.arms or scale.arms)),
        seeds=tuple(args.seeds or scale.seeds),
        settings=tuple(args.settings or scale.settings),
    )
    missing = [p for p in ("dfdc_faces", "ffhq_stylegan2") if not (args.data / p).is_dir()]
    if missing:
        print(f"ablation: skipped: {', '.join(missing)} not found under {args.data} (the study's real data)")
        return {}
    known = sorted(p.stem for p in (ROOT / "configs" / "backbones").glob("*.yaml"))
    if args.backbones == ["all"]:
        args.backbones = [name for name in ["mobilenetv2", *known] if name in known and loads_offline(name)]
        args.backbones = list(dict.fromkeys(args.backbones))
    for name in args.backbones:
        if name not in known:
            print(
                f"error: --backbones: no configs/backbones/{name}.yaml; known: {', '.join(known)}, all", file=sys.stderr
            )
            raise SystemExit(2)
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    sets = study_data(args.data, args.out, scale.clip_frames)
    for setting in scale.settings:
        check_disjoint(sets[setting])
    primary = sets["sbi"][PRIMARY]
    n_fake = len({x.video for x in primary if x.label == 1})
    n_real = len({x.video for x in primary if x.label == 0})
    mde = detectable_difference(n_fake, n_real)
    print(
        f"protocol: {scale.steps} steps x {scale.batch_size} images at {scale.image_size} px, seeds "
        f"{list(scale.seeds)}, arms {list(scale.arms)}, mask rule {mask_schedule(scale.steps)}\n"
        f"primary endpoint: video AUC on {n_fake} fake + {n_real} real DFDC videos ({len(primary)} crops); smallest "
        f"detectable paired difference of one seed (80% power, 5% two-sided, AUC 0.7, correlation 0.5): {mde:.3f}"
        " — averaging seeds removes training noise, not this test-set noise",
        flush=True,
    )
    for setting in scale.settings:
        counts = {k: len(v) for k, v in sets[setting].items()}
        print(f"setting {setting}: {counts}", flush=True)
    code = code_digest()
    specs = []
    for backbone in args.backbones:
        configs = {arm: arm_config(backbone, arm) for arm in scale.arms}
        size = input_size(compose(backbone, []), scale.image_size)
        if size != scale.image_size:
            print(f"{backbone}: {size} px, the study's {scale.image_size} px rounded to its patch size", flush=True)
        for seed in scale.seeds:
            for setting in scale.settings:
                for arm in scale.arms:
                    folder = args.out / "runs" / backbone / setting / arm / f"seed{seed}"
                    masm_trace = args.out / "runs" / backbone / setting / "masm" / f"seed{seed}" / "layer_masks.jsonl"
                    sized = dataclasses.replace(scale, image_size=size)
                    key = run_key(sized, configs[arm], sets[setting], code)
                    specs.append(
                        RunSpec(
                            backbone,
                            setting,
                            arm,
                            seed,
                            sized,
                            configs[arm],
                            str(folder),
                            key,
                            str(masm_trace) if configs[arm]["random_mask"] else None,
                        )
                    )
    if args.report_only:
        results, _ = from_cache(specs)
        print(f"report only: {len(results)} of {len(specs)} runs cached", flush=True)
    else:
        results = run_study(specs, sets, args.jobs)
    minutes = (time.perf_counter() - started) / 60
    if args.verify and specs:
        spec = next(s for s in specs if not s.config["random_mask"])
        _seed_batches.cache_clear()  # afresh: its batches made again, not replayed from this process's runs
        with tempfile.TemporaryDirectory(prefix="ablation_verify_") as tmp:
            again = run_one(dataclasses.replace(spec, folder=str(Path(tmp) / "run")), sets[spec.setting])
        first = results[(spec.backbone, spec.setting, spec.arm, spec.seed)]
        same = all(again["sets"][n]["frame_probs"] == first["sets"][n]["frame_probs"] for n in first["sets"])
        same = same and again["losses"] == first["losses"]
        print(f"repeat: {spec.backbone} {spec.setting} {spec.arm} seed {spec.seed} identical={'yes' if same else 'no'}")
    summaries = {}
    for backbone in args.backbones:
        for setting in scale.settings:
            rows = summarise(results, backbone, setting, scale)
            if rows:
                summaries[(backbone, setting)] = rows
    for (backbone, setting), rows in summaries.items():
        print(f"\n### {backbone} · {setting}\n\n{tables(rows, setting)}\n")
    if args.write_docs and summaries:
        command = "python benchmarks/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
        header = (
            f"Scale: {scale.steps} steps × {scale.batch_size} images at {scale.image_size} px, seeds "
            f"{', '.join(map(str, scale.seeds))}; {len(results)} runs; smallest detectable paired difference of "
            f"one seed on the primary endpoint ≈ {mde:.2f} AUC."
        )
        ran = {arm for rows in summaries.values() for arm in rows}
        if [arm for arm in scale.arms if arm not in ran]:
            header += " Not run yet: " + ", ".join(ARMS[a].label for a in scale.arms if a not in ran) + "."
        expected = len(scale.seeds) * len(scale.settings) * len(scale.arms)
        for backbone in args.backbones:
            done = sum(key[0] == backbone for key in results)
            if done < expected:
                header += f" **Preliminary: {backbone} has {done} of its {expected} runs** (the `seeds` column)."
        write_docs(summaries, scale, header, command.strip(), mde)
    lines = [summary_line(b, s, rows) for (b, s), rows in summaries.items()]
    for line in lines:
        print(line)
    claims = sum(line.endswith("claim=yes") for line in lines)
    print(
        f"ablation: backbones={len(args.backbones)} settings={len(scale.settings)} runs={len(results)} "
        f"minutes={minutes:.1f} claims={claims}/{len(lines)} answer={answer(summaries)}"
    )
    return summaries


if __name__ == "__main__":
    main()
