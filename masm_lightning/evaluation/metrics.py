"""Frame- and video-level detection metrics, keyed by sample and by video, correct under DDP.

A video's score is the mean of its frames' fake probabilities, accumulated in float64: a float32 sum depends on the
order of its terms (two videos with the same frames in a different order got different means, which broke the ties
AUC relies on), while float64 sums of float32 probabilities are exact for any realistic frame count. Videos are
grouped by an integer key the dataset assigns to each unique (dataset, label, video id) — never by a folder or file
basename — and frames by their sample index, so the copies a ``DistributedSampler`` pads or repeats are counted
once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc
from torchmetrics.utilities import dim_zero_cat

__all__ = ["DetectionMetrics", "auc_by_type", "equal_error_rate", "scores"]

METRIC_NAMES = ("auc", "ap", "eer", "acc")


def equal_error_rate(probs: Tensor, labels: Tensor) -> Tensor:
    """The false-positive rate where it equals the false-negative rate, linearly interpolated on the ROC.

    Same definition as DeepfakeBench/Effort (``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)``).
    """
    fpr, tpr, _ = binary_roc(probs, labels.long())
    gap = 1 - fpr - tpr  # decreasing from 1 at (0, 0) to -1 at (1, 1)
    i = int(torch.nonzero(gap < 0)[0])  # first ROC point past the crossing
    if gap[i - 1] == 0 or fpr[i] == fpr[i - 1]:
        return fpr[i - 1] if gap[i - 1] == 0 else fpr[i]
    # 1 - x - tpr(x) is linear on the segment: solve for its zero.
    slope_tpr = (tpr[i] - tpr[i - 1]) / (fpr[i] - fpr[i - 1])
    return (1 - tpr[i - 1] + slope_tpr * fpr[i - 1]) / (1 + slope_tpr)


def scores(probs: Tensor, labels: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """AUC, AP, EER and accuracy at ``threshold``; ranking metrics are NaN when only one class is present."""
    probs = probs if probs.dtype == torch.float64 else probs.float()  # video means stay float64
    labels = labels.long()
    acc = ((probs >= threshold).long() == labels).float().mean()
    if labels.unique().numel() < 2:
        nan = torch.tensor(math.nan, device=probs.device)
        return {"auc": nan, "ap": nan, "eer": nan, "acc": acc}
    return {
        "auc": binary_auroc(probs, labels),
        "ap": binary_average_precision(probs, labels),
        "eer": equal_error_rate(probs, labels),
        "acc": acc,
    }


def auc_by_type(probs: Tensor, labels: Tensor, types: Tensor) -> dict[int, tuple[float, int]]:
    """Per fake type ``t`` in ``types``: the AUC of the fakes of type t against **all** reals, and how many fakes.

    Each row of the arguments is one scored item (a video); ``types`` holds its forgery-type index (reals any).
    A type's AUC is NaN when there are no reals.
    """
    out = {}
    reals = labels == 0
    for t in sorted(int(t) for t in types[labels == 1].unique()):
        chosen = reals | ((labels == 1) & (types == t))
        out[t] = (float(scores(probs[chosen], labels[chosen])["auc"]), int(((labels == 1) & (types == t)).sum()))
    return out


class DetectionMetrics(Metric):
    """Accumulates (probability, label, video key, sample index) for one evaluation set.

    ``compute()`` returns ``frame_{auc,ap,eer,acc}``, ``video_{auc,ap,eer,acc}``, ``num_frames`` and
    ``num_videos``, and leaves the scores behind them in ``curves["frame"|"video"] = (probs, labels)``, with the
    video keys of ``curves["video"]`` and their frame counts in ``video_keys`` and ``video_frames``.
    """

    full_state_update = False
    higher_is_better = True
    # States registered by add_state, declared so they type as lists (nn.Module.__getattr__ types them Tensor | Module).
    probs: list[Tensor]
    labels: list[Tensor]
    videos: list[Tensor]
    samples: list[Tensor]

    def __init__(self, threshold: float = 0.5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("probs", "labels", "videos", "samples"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.curves: dict[str, tuple[Tensor, Tensor]] = {}
        self.video_keys = self.video_frames = torch.zeros(0)

    def update(self, probs: Tensor, labels: Tensor, videos: Tensor, samples: Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.labels.append(labels.detach().long())
        self.videos.append(videos.detach().long())
        self.samples.append(samples.detach().long())

    def compute(self) -> dict[str, Tensor]:
        if not self.update_count:
            raise RuntimeError("DetectionMetrics.compute() called before any update()")
        probs, labels = dim_zero_cat(self.probs), dim_zero_cat(self.labels)
        videos, samples = dim_zero_cat(self.videos), dim_zero_cat(self.samples)
        # One row per sample index: drop the padding/repeats of a DistributedSampler.
        unique_samples, inverse = torch.unique(samples, return_inverse=True)
        first = torch.full_like(unique_samples, samples.numel()).scatter_reduce(
            0, inverse, torch.arange(samples.numel(), device=samples.device), reduce="amin"
        )
        probs, labels, videos = probs[first], labels[first], videos[first]

        keys, video_of = torch.unique(videos, return_inverse=True)
        count = torch.zeros(keys.numel(), dtype=torch.float64, device=probs.device).index_add_(
            0, video_of, torch.ones_like(probs, dtype=torch.float64)
        )
        video_probs = torch.zeros_like(count).index_add_(0, video_of, probs.double()) / count
        video_labels = torch.zeros_like(keys).scatter_reduce(0, video_of, labels, reduce="amax", include_self=False)
        lowest = torch.zeros_like(keys).scatter_reduce(0, video_of, labels, reduce="amin", include_self=False)
        if not torch.equal(video_labels, lowest):
            bad = keys[video_labels != lowest][:5].tolist()
            raise ValueError(
                f"video keys {bad} mix real and fake frames; a video key must identify one labelled "
                "video (dataset, label, video id)"
            )
        # Kept for ROC plots: the synchronised, de-duplicated scores behind the numbers.
        self.curves = {"frame": (probs, labels), "video": (video_probs, video_labels)}
        self.video_keys, self.video_frames = keys, count.long()
        out = {f"frame_{k}": v for k, v in scores(probs, labels, self.threshold).items()}
        out |= {f"video_{k}": v for k, v in scores(video_probs, video_labels, self.threshold).items()}
        out["num_frames"] = torch.tensor(float(probs.numel()), device=probs.device)
        out["num_videos"] = torch.tensor(float(keys.numel()), device=probs.device)
        return out
