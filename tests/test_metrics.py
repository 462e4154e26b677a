"""Detection metrics agree with scikit-learn, group videos by their full key, and count DDP padding once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from masm_lightning.data.datamodule import FrameDataset
from masm_lightning.data.manifest import FrameRecord
from masm_lightning.evaluation.metrics import DetectionMetrics, scores


def _sklearn_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    fpr, tpr, _ = roc_curve(labels, probs)
    return {
        "auc": roc_auc_score(labels, probs),
        "ap": average_precision_score(labels, probs),
        "eer": brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0),  # DeepfakeBench's definition
        "acc": accuracy_score(labels, probs >= 0.5),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_scores_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.25, 200), 0, 1).astype(np.float32)
    ours = scores(torch.from_numpy(probs), torch.from_numpy(labels))
    for name, expected in _sklearn_scores(probs, labels).items():
        assert ours[name].item() == pytest.approx(expected, abs=1e-5), name


def test_video_scores_are_means_of_frame_probabilities():
    metric = DetectionMetrics()
    # Video 0 (real): frames 0.1, 0.3 -> 0.2; video 1 (fake): 0.4, 0.8 -> 0.6; video 2 (fake): 0.9.
    metric.update(
        torch.tensor([0.1, 0.3, 0.4, 0.8, 0.9]),
        torch.tensor([0, 0, 1, 1, 1]),
        torch.tensor([0, 0, 1, 1, 2]),
        torch.arange(5),
    )
    out = metric.compute()
    video_probs, video_labels = metric.curves["video"]
    f = torch.tensor([0.1, 0.3, 0.4, 0.8, 0.9]).double()  # the float32 inputs, averaged in float64
    torch.testing.assert_close(video_probs, torch.stack([(f[0] + f[1]) / 2, (f[2] + f[3]) / 2, f[4]]))
    assert video_labels.tolist() == [0, 1, 1]
    assert out["num_videos"] == 3 and out["num_frames"] == 5
    expected = _sklearn_scores(np.array([0.2, 0.6, 0.9]), np.array([0, 1, 1]))
    assert out["video_auc"].item() == pytest.approx(expected["auc"])
    assert out["video_acc"].item() == pytest.approx(expected["acc"])


def test_videos_with_the_same_frames_in_another_order_tie_exactly():
    """Float32 sums depend on the order of their terms: these five frames sum to 3.108551025 forwards and
    3.108551264 backwards, which would rank the fake video above the real one (AUC 1 instead of the tie's 0.5)."""
    frames = torch.tensor(
        [0.6340786814689636, 0.4900934100151062, 0.8964447379112244, 0.455627977848053, 0.6323062777519226]
    )
    one_video = torch.zeros(5, dtype=torch.long)
    assert torch.zeros(1).index_add_(0, one_video, frames) != torch.zeros(1).index_add_(0, one_video, frames.flip(0))
    metric = DetectionMetrics()
    metric.update(
        torch.cat([frames, frames.flip(0)]),
        torch.tensor([0] * 5 + [1] * 5),
        torch.tensor([0] * 5 + [1] * 5),
        torch.arange(10),
    )
    out = metric.compute()
    video_probs, _ = metric.curves["video"]
    assert video_probs[0] == video_probs[1]
    assert out["video_auc"].item() == 0.5


def test_samples_repeated_by_distributed_padding_count_once():
    once, padded = DetectionMetrics(), DetectionMetrics()
    probs, labels = torch.tensor([0.2, 0.7, 0.6, 0.1]), torch.tensor([0, 1, 1, 0])
    videos, samples = torch.tensor([0, 1, 1, 2]), torch.arange(4)
    once.update(probs, labels, videos, samples)
    # A DistributedSampler over 4 samples and 3 ranks pads to 6 by repeating samples 0 and 1.
    padded.update(
        torch.cat([probs, probs[:2]]),
        torch.cat([labels, labels[:2]]),
        torch.cat([videos, videos[:2]]),
        torch.cat([samples, samples[:2]]),
    )
    a, b = once.compute(), padded.compute()
    assert b["num_frames"] == 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True)


def test_video_keys_include_dataset_and_label_not_just_the_name(tmp_path):
    # Two datasets (and a real/fake pair) reuse the video name "000": they must stay four separate videos.
    records = [
        FrameRecord(ds, "test", label, "m", "000", f, tmp_path / f"{ds}{label}{f}.png")
        for ds in ("celebdf", "dfdc")
        for label in (0, 1)
        for f in range(2)
    ]
    dataset = FrameDataset(records, transform=lambda image: {"image": image})
    assert len(dataset.videos) == 4
    assert dataset.video_index == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_video_key_with_mixed_labels_is_an_error():
    metric = DetectionMetrics()
    metric.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]), torch.tensor([5, 5]), torch.arange(2))
    with pytest.raises(ValueError, match=r"video keys \[5\] mix real and fake frames"):
        metric.compute()


def test_single_class_sets_give_nan_ranking_metrics_not_a_crash():
    metric = DetectionMetrics()
    metric.update(torch.tensor([0.2, 0.7]), torch.tensor([1, 1]), torch.tensor([0, 1]), torch.arange(2))
    out = metric.compute()
    assert torch.isnan(out["frame_auc"]) and out["frame_acc"] == 0.5
