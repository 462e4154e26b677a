"""Figures written at the end of a test run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from ..io import atomic_path

__all__ = ["robustness_figure", "roc_figure", "subspace_type_figure"]


def roc_figure(curves: dict[str, tuple[Tensor, Tensor]], title: str, path: str | Path) -> Path:
    """Frame- and video-level ROC curves of one test set, saved as a PNG."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for level, (probs, labels) in curves.items():
        labels = labels.long()
        if labels.unique().numel() < 2:
            continue
        fpr, tpr, _ = binary_roc(probs.float(), labels)
        auc = binary_auroc(probs.float(), labels)
        ax.plot(fpr.cpu(), tpr.cpu(), label=f"{level} (AUC {auc:.3f}, n={labels.numel()})")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set(
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake caught)",
        title=f"ROC — {title}",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def mask_heatmap(history: list[dict], path: str | Path) -> Path:
    """Layers × decision steps: the share of each layer's artifact subspaces that kept updating."""
    import numpy as np

    layers = list(dict.fromkeys(s["layer"] for s in history[0]["subspaces"]))
    grid = np.zeros((len(layers), len(history)))
    for col, entry in enumerate(history):
        for row, layer in enumerate(layers):
            flags = [not s["masked"] for s in entry["subspaces"] if s["layer"] == layer]
            grid[row, col] = sum(flags) / len(flags)
    height = min(2 + 0.18 * len(layers), 24)
    # Width grows with the decisions up to a readable page width; beyond that the cells get narrower.
    width = min(max(6.0, 0.25 * len(history) + 3), 12.0)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    steps = [entry["step"] for entry in history]
    # About one label per 0.6 inch of plot, so step numbers never run into each other.
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), int(width - 3) * 2)).round().astype(int))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_yticks(range(len(layers)), layers, fontsize=max(4, min(8, 400 // max(len(layers), 1))))
    ax.set_xlabel("optimizer step (mask decision)")
    ax.set_title("MASM selective layer mask\nshare of each layer's artifact subspaces updating", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def robustness_figure(rows: list[dict], names: dict[str, str], path: str | Path) -> Path:
    """AUC vs severity level, one panel per perturbation type; a line per test set and level (frame, video).

    ``rows`` are :class:`~masm_lightning.robustness.RobustnessSweep` rows; the level-0 (clean) row of each set
    starts every panel's lines.
    """
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    columns = min(4, len(names))
    grid_rows = -(-len(names) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3.2 * columns, 2.8 * grid_rows), dpi=110, squeeze=False)
    for ax, (kind, title) in zip(axes.flat, names.items()):
        for i, dataset in enumerate(datasets):
            clean = [r for r in rows if r["dataset"] == dataset and r["level"] == 0]
            points = clean + [r for r in rows if r["dataset"] == dataset and r["type"] == kind]
            levels = [r["level"] for r in points]
            colour = f"C{i}"
            ax.plot(levels, [r["video_auc"] for r in points], "o-", color=colour, label=f"{dataset} video")
            ax.plot(levels, [r["frame_auc"] for r in points], "s--", color=colour, alpha=0.6, label=f"{dataset} frame")
        ax.set(title=f"{title} ({kind})", xlabel="level (0 = clean)", ylabel="AUC", ylim=(0, 1.02))
        ax.axhline(0.5, color="k", linestyle=":", linewidth=0.8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def subspace_type_figure(
    matrix: Tensor, types: list[str], assigned: list[int | None], title: str, path: str | Path
) -> Path:
    """Forgery types (rows) × artifact subspaces (columns), coloured by each subspace's mean contribution to the
    fake log-odds beyond its contribution on real faces; the subspace each type trained under routing is
    outlined."""
    grid = matrix.detach().double().cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.8 + 0.5 * grid.shape[1], 1.0 + 0.35 * len(types)), dpi=120)
    bound = max(float(abs(grid).max()) if grid.size else 1.0, 1e-3)
    image = ax.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
    for row, k in enumerate(assigned):
        if k is not None:
            ax.add_patch(plt.Rectangle((k - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.set_label("contribution to fake log-odds − reals'", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    ax.set_xticks(range(grid.shape[1]), [f"k{k}" for k in range(grid.shape[1])], fontsize=7)
    ax.set_yticks(range(len(types)), types, fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)
