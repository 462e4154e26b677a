"""The DeeperForensics perturbations, and the sweep run by ``test --robustness`` on the tiny model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from masm_lightning.cli import main
from masm_lightning.evaluation.perturbations import LEVELS, PerturbedTransform, perturb
from tests.helpers import tiny_args


@pytest.fixture
def face() -> np.ndarray:
    return np.random.default_rng(0).integers(30, 226, (64, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", sorted(LEVELS))
def test_each_perturbation_is_deterministic_and_grows_with_the_level(face, kind):
    assert perturb(face, kind, 0) is face
    changes = []
    for level in range(1, 6):
        out = perturb(face, kind, level)
        assert out.shape == face.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, perturb(face.copy(), kind, level))  # same image, same result
        changes.append(np.abs(out.astype(float) - face).mean())
    assert changes[0] > 0 and changes[-1] > changes[0], f"{kind}: level 5 must hurt more than level 1: {changes}"


def test_saturation_level_5_is_grey_and_contrast_scales_values(face):
    grey = perturb(face, "CS", 5).astype(int)
    assert np.abs(grey - grey.mean(-1, keepdims=True)).max() <= 2
    np.testing.assert_array_equal(perturb(face, "CC", 1), np.rint(face * 0.85).astype(np.uint8))


def test_bad_type_or_level_is_rejected_with_the_valid_choices():
    with pytest.raises(ValueError, match="'JPEG'"):
        perturb(np.zeros((4, 4, 3), np.uint8), "jpeg", 1)
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        PerturbedTransform("GB", 6, lambda image: {"image": image})


def test_robustness_sweep_writes_a_csv_and_a_plot_for_every_type_and_level(tmp_path, tiny_checkpoint):
    cli = main(["test", *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint)), "--robustness"])
    folder = Path(cli.trainer.log_dir)
    with (folder / "robustness.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["type"], r["level"]) for r in rows} == {("none", "0")} | {
        (kind, str(level)) for kind in LEVELS for level in range(1, 6)
    }
    assert all(r["dataset"] == "demo" and 0 <= float(r["video_auc"]) <= 1 and r["num_videos"] == "4" for r in rows)
    clean = next(r for r in rows if r["type"] == "none")
    assert float(clean["video_auc"]) == pytest.approx(float(cli.trainer.callback_metrics["test/demo/video_auc"]))
    assert (folder / "robustness.png").stat().st_size > 10_000
