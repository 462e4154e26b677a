"""Do the constraints bound the drift at every task-gradient scale without stopping learning?

One 1024×1024 matrix with a power-law spectrum (σ_i = i^-alpha, random orthogonal singular vectors) is wrapped in a
``MASMLinear`` (K=4 subspaces of rank d=4) and trained with torch's Adam (lr 2e-4, 300 steps) on a linear task whose
gradient is a fixed direction of the factors (U, s, V of all subspaces), scaled to a norm of 1e-3 … 1. Variants, side
by side in one run: no constraint (the reference), the decoupled constraint step training uses
(:func:`~masm_lightning.adapters.apply_constraints` at the recipe's λ, after every ``optimizer.step()``), and
Adam's coupled weight decay 5e-4 (Effort's optimizer) for contrast. Reported per gradient norm:

- progress: displacement of the factors along the descent direction, relative to the unconstrained run's;
- drift: ``max |s − s0| / σ_r``;
- orth: ``max ‖UᵀU − I‖_F`` over U and V (all subspaces of the matrix together).

Ends with ``regularizer scaling: min_progress=… max_rel_drift_s=… max_orth_err=…`` for the constraint step.
Usage: ``python benchmarks/regularizer_scaling.py [--size 1024] [--steps 300]`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from torch import nn

from masm_lightning.adapters import (
    MASMLinear,
    SubspaceConstraints,
    apply_constraints,
    constraint_metrics,
)

NORMS = (1e-3, 1e-2, 1e-1, 1.0)


def power_law_linear(size: int, alpha: float, seed: int) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(size, size, generator=gen))
    right, _ = torch.linalg.qr(torch.randn(size, size, generator=gen))
    sigma = torch.arange(1, size + 1, dtype=torch.float32) ** -alpha
    linear = nn.Linear(size, size, bias=False)
    with torch.no_grad():
        linear.weight.copy_((left * sigma) @ right.mT)
    return linear


def train(
    initial: MASMLinear, norm: float, variant: str, args: argparse.Namespace, constraints: SubspaceConstraints
) -> dict[str, float]:
    adapter = copy.deepcopy(initial)
    params = [p for sub in adapter.subspaces for p in sub.factors()]
    gen = torch.Generator().manual_seed(args.seed + 1)
    direction = [torch.randn(p.shape, generator=gen) for p in params]
    total = torch.cat([d.reshape(-1) for d in direction]).norm()
    direction = [d / total for d in direction]  # one fixed unit direction over all factors
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=5e-4 if variant == "adam_wd" else 0.0)
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss = norm * sum((d * p).sum() for d, p in zip(direction, params))  # ∇ = norm · direction
        loss.backward()
        optimizer.step()
        if variant == "constrained":
            apply_constraints(adapter, optimizer, constraints)
    with torch.no_grad():
        progress = sum(((p0 - p) * d).sum() for p0, p, d in zip(start, params, direction))
    metrics = constraint_metrics([adapter])
    return {
        "progress": float(progress),
        "drift": float(metrics["spectral_drift"]),
        "orth": float(metrics["orth_error"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--subspaces", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=1.0, help="power-law exponent of the spectrum")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lambda-orth", type=float, default=SubspaceConstraints.orthogonality)
    parser.add_argument("--lambda-spec", type=float, default=SubspaceConstraints.spectral)
    parser.add_argument("--cap", type=float, default=SubspaceConstraints.cap)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    constraints = SubspaceConstraints(orthogonality=args.lambda_orth, spectral=args.lambda_spec, cap=args.cap)
    torch.set_num_threads(args.threads)  # thin matmuls: more threads only contend on a shared machine
    initial = MASMLinear(power_law_linear(args.size, args.alpha, args.seed), [args.rank] * args.subspaces)
    print(
        f"{args.size}x{args.size}, sigma_i = i^-{args.alpha}, K={args.subspaces}, d={args.rank}, Adam lr {args.lr}, "
        f"{args.steps} steps; constraints: {constraints}"
    )
    print(f"{'grad norm':>9} | {'variant':<11} | {'progress':>8} | {'drift s/σr':>10} | {'orth err':>9}")
    worst = {"progress": float("inf"), "drift": 0.0, "orth": 0.0}
    for norm in NORMS:
        rows = {v: train(initial, norm, v, args, constraints) for v in ("none", "constrained", "adam_wd")}
        reference = rows["none"]["progress"]
        for variant, row in rows.items():
            ratio = row["progress"] / reference
            print(f"{norm:9.0e} | {variant:<11} | {ratio:8.3f} | {row['drift']:10.3g} | {row['orth']:9.3g}")
        worst["progress"] = min(worst["progress"], rows["constrained"]["progress"] / reference)
        worst["drift"] = max(worst["drift"], rows["constrained"]["drift"])
        worst["orth"] = max(worst["orth"], rows["constrained"]["orth"])
    rank = args.subspaces * args.rank
    delta = math.sqrt(rank) / args.lambda_orth if args.lambda_orth else math.inf
    bound_s = 1 / args.lambda_spec if args.lambda_spec else math.inf
    print(
        f"documented bounds (kappa = 1, a steady gradient): drift <= 1/lambda_spec = {bound_s:.3g}; "
        f"orth <= delta(2 + delta), delta = sqrt(T)/lambda_orth = {delta:.3g}: {delta * (2 + delta):.3g}"
    )
    print(
        f"regularizer scaling: min_progress={worst['progress']:.3f} max_rel_drift_s={worst['drift']:.3g} "
        f"max_orth_err={worst['orth']:.3g}"
    )


if __name__ == "__main__":
    main()
