"""Figures written at the end of a test run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics.functional.classification import binary_auroc, binary_roc  # noqa: E402

__all__ = ["roc_figure"]


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
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
           title=f"ROC — {title}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
