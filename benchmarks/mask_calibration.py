"""Calibration of the selective layer mask's GSNR: synthetic gradient streams of known GSNR through the mask's code.

    python benchmarks/mask_calibration.py [--steps 500] [--seeds 3]

Each stream is one flat gradient vector split into subspaces of several sizes, exactly as
:class:`~masm_lightning.training.callbacks.SelectiveLayerMask` concatenates its subspaces; it runs through the
callback's own :class:`~masm_lightning.adapters.gsnr.GradientMoments` and ``segment_gsnr``. Every coordinate j draws
``g_tj = c_j (μ_j + ε_tj)``, ε ~ N(0, 1), ``μ_j = ±√GSNR``: its true GSNR is exactly the target, while its scale
``c_j`` spans three decades (log-uniform in [1e-9, 1e-6]: the demo's task gradients are ~1e-6, and U/V vs s differ
by 1-2 decades), so a reading that depended on how the energy is split between coordinates would show here.
Readings are taken at the decision steps of the default schedule (every ``interval`` steps from ``warmup``), over
several seeds; the error of a cell is the worst single reading, not the average (a decision sees one reading).

Columns: truth, subspace size, mean reading, worst absolute error, worst relative error, and the previous
estimator's mean reading (the energy ratio ‖EMA(g)‖² / EW-variance without bias correction, ``old``), which has the
floor α/(2 − α) at momentum 1 − α. A second table sweeps the momentum on the two smaller sizes; the default was
chosen from it (see ``SelectiveLayerMask``'s docstring). Ends with one summary line for the defaults:
``mask calibration: max_abs_err_below_0.1=… max_rel_err_above_0.1=… noise_p99=…`` (``noise_p99``: the 99th
percentile of single readings of pure noise on the smallest size, which ``min_gsnr`` must clear;
``noise_p99_rank1``: the same for noise of which half the variance is one factor shared by all coordinates, the
largest over the sizes). A third table gives pure-noise p99 for shared low-rank noise (rank 1, 4, 16). The
readings are of one optimizer step's gradient (a batch mean); the mask's rule divides them by the batch size B.
"""

from __future__ import annotations

import argparse
import math

import torch

from masm_lightning.adapters.gsnr import GradientMoments, segment_gsnr

TRUTHS = (0.0, 0.01, 0.1, 1.0, 10.0)
SIZES = (64, 1024, 16384)  # coordinates per subspace: Effort's d=1 on a 32-wide toy … K·d=16 on ViT-L's 1024


def stream(
    truth: float,
    sizes: tuple[int, ...],
    momentum: float,
    steps: int,
    readings: list[int],
    seed: int,
    eps: float = 1e-8,
    rank: int = 0,
    shared: float = 0.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The new and the old estimator's per-subspace readings at the given steps.

    ``rank`` > 0: a share ``shared`` of every coordinate's noise variance comes from ``rank`` factors common to all
    coordinates (ε = √(1 − shared)·ε_own + √shared·(A z_t)_j, each row of A of unit norm): each coordinate's GSNR is
    still the truth, but the noise no longer averages out over a subspace's coordinates.
    """
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    lengths = torch.tensor(sizes)
    scale = 10 ** (torch.rand(n, generator=gen) * 3 - 9)
    sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    mu = sign * math.sqrt(truth)
    mixing = torch.randn(n, max(rank, 1), generator=gen)
    mixing = mixing / mixing.norm(dim=1, keepdim=True)
    moments = GradientMoments.zeros(n, momentum)
    old_mean, old_var, alpha = torch.zeros(n), torch.zeros(len(sizes)), 1 - momentum
    new, old = [], []
    for t in range(1, steps + 1):
        noise = torch.randn(n, generator=gen)
        if rank:
            common = mixing @ torch.randn(rank, generator=gen)
            noise = math.sqrt(1 - shared) * noise + math.sqrt(shared) * common
        g = scale * (mu + noise)
        moments.update(g)
        delta = g - old_mean  # the previous callback's statistic, for comparison
        old_mean += alpha * delta
        old_var = (1 - alpha) * (old_var + alpha * torch.segment_reduce(delta.square(), "sum", lengths=lengths))
        if t in readings:
            new.append(segment_gsnr(moments.mean, moments.var, moments.count, momentum, lengths, eps))
            bias = torch.segment_reduce(old_mean.square(), "sum", lengths=lengths)
            old.append(bias / (old_var + 1e-30))
    return new, old


def table(
    momentum: float, sizes: tuple[int, ...], steps: int, readings: list[int], seeds: int, show: bool
) -> tuple[float, float, float]:
    worst_abs, worst_rel, noise = 0.0, 0.0, []
    if show:
        print(f"\nmomentum {momentum}: readings at steps {readings}, {seeds} seeds")
        print("| truth | size | mean reading | worst abs err | worst rel err | old estimator |")
        print("|---|---|---|---|---|---|")
    for truth in TRUTHS:
        runs = [stream(truth, sizes, momentum, steps, readings, 1000 * s + int(truth * 100)) for s in range(seeds)]
        new = torch.stack([r for run in runs for r in run[0]])  # readings × sizes
        old = torch.stack([r for run in runs for r in run[1]])
        if truth == 0:
            noise.append(new[:, 0])
        for i, size in enumerate(sizes):
            err = (new[:, i] - truth).abs().max().item()
            rel = err / truth if truth else math.inf
            if truth < 0.1:
                worst_abs = max(worst_abs, err)
            else:
                worst_rel = max(worst_rel, rel)
            if show:
                rel_text = f"{rel:.1%}" if truth else "-"
                print(
                    f"| {truth:g} | {size} | {new[:, i].mean():.4f} | {err:.4f} | {rel_text} | {old[:, i].mean():.4f} |"
                )
    return worst_abs, worst_rel, torch.quantile(torch.cat(noise), 0.99).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="stream length; readings every 100 from 200")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--momentum", type=float, default=0.99, help="the callback's default")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    readings = list(range(200, args.steps + 1, 100))
    worst_abs, worst_rel, noise = table(args.momentum, SIZES, args.steps, readings, args.seeds, show=True)

    print("\nmomentum sweep (sizes 64 and 1024): worst abs err below 0.1, worst rel err above, pure-noise p99")
    print("| momentum | n_eff | abs err < 0.1 | rel err >= 0.1 | noise p99 |")
    print("|---|---|---|---|---|")
    for momentum in (0.9, 0.95, 0.98, 0.99):
        a, r, p = table(momentum, SIZES[:2], args.steps, readings, args.seeds, show=False)
        print(f"| {momentum} | {(1 + momentum) / (1 - momentum):.0f} | {a:.4f} | {r:.1%} | {p:.4f} |")

    print(
        f"\ncorrelated pure noise (GSNR 0; shared low-rank noise), momentum {args.momentum}: p99 of single readings "
        f"({10 * args.seeds} seeds)"
    )
    print("| rank | shared variance | " + " | ".join(f"size {n}" for n in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    rank1 = 0.0
    for rank, shared in ((1, 0.1), (1, 0.5), (1, 1.0), (4, 0.5), (16, 0.5)):
        runs = [
            stream(0.0, SIZES, args.momentum, args.steps, readings, 7000 + s, rank=rank, shared=shared)[0]
            for s in range(10 * args.seeds)  # a p99 needs more readings than the tables above
        ]
        p99 = torch.quantile(torch.stack([r for run in runs for r in run]), 0.99, dim=0)
        if rank == 1 and shared == 0.5:
            rank1 = p99.max().item()
        print(f"| {rank} | {shared:g} | " + " | ".join(f"{v:.4f}" for v in p99.tolist()) + " |")

    print(
        f"\nmask calibration: max_abs_err_below_0.1={worst_abs:.4f} max_rel_err_above_0.1={worst_rel:.3f} "
        f"noise_p99={noise:.4f} noise_p99_rank1={rank1:.4f}"
    )


if __name__ == "__main__":
    main()
