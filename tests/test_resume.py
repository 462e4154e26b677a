"""Runs repeat and resume exactly, with the default augmentation on: the same seed twice gives the same run, and a
fit killed mid-epoch (SIGKILL) and resumed from ``last.ckpt`` ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masm_lightning.cli import main
from tests.helpers import ROOT, tiny_args

EPOCHS = 3
STEPS = 5  # an epoch: 8 videos x 3 frames + 12 self-blended reals, batches of 8
# The default augmentation (the `effort` preset) and self-blended pseudo-fakes: every random draw of the data side.
DATA = ["--data.init_args.augmentation", "effort", "--data.init_args.self_blend", "add"]


def _callback(class_path: str, **init_args: object) -> str:
    return f"--trainer.callbacks+={json.dumps({'class_path': class_path, 'init_args': init_args})}"


def _fit(root: Path, *extra: str) -> dict:
    """An in-process tiny fit; the final weights, metrics, mask state and frames seen per epoch."""
    main(
        [
            "fit",
            *tiny_args(root, "--trainer.max_epochs", str(EPOCHS), *DATA),
            _callback("tests.helpers.SaveRankState", folder=str(root / "final")),
            *extra,
        ]
    )
    return torch.load(root / "final" / "rank0.pt", weights_only=True)


def _assert_same_run(got: dict, want: dict, epochs: range) -> None:
    assert got["state"].keys() == want["state"].keys()
    for key, value in want["state"].items():
        torch.testing.assert_close(got["state"][key], value, rtol=0, atol=0, msg=f"{key} differs")
    for key in ("train/ce", "train/loss", "val/video_auc", "val/frame_auc"):
        torch.testing.assert_close(got["metrics"][key], want["metrics"][key], rtol=0, atol=0, msg=key)
    (mask,), (reference,) = got["masks"], want["masks"]
    assert mask.keys() == reference.keys() and mask["steps"] == reference["steps"] == STEPS * EPOCHS
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(mask[key], value, rtol=0, atol=0, msg=f"mask state {key}")
        else:
            assert mask[key] == value, f"mask state {key}"
    for epoch in epochs:
        assert got["samples"][epoch] == want["samples"][epoch], f"frames drawn in epoch {epoch}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    return {**_fit(root), "run": root / "tiny" / "version_0"}


def _best(run: Path) -> tuple[int, dict]:
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    return best["epoch"], best["state_dict"]


@pytest.mark.slow
def test_the_same_seed_twice_gives_the_same_run_with_augmentation_on(tmp_path, uninterrupted):
    _assert_same_run(_fit(tmp_path), uninterrupted, range(EPOCHS))


@pytest.mark.slow
def test_a_fit_killed_mid_epoch_resumes_from_last_ckpt_bit_identical(tmp_path, uninterrupted):
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "masm_lightning",
            "fit",
            *tiny_args(tmp_path, "--trainer.max_epochs", str(EPOCHS), *DATA),
            _callback("tests.helpers.KillAtStep", step=2 * STEPS + 2),  # in the last epoch, after 2 of its steps
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        # The same thread count as this process's runs: CPU kernels reduce in a thread-dependent order.
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 2 * STEPS), (
        "last.ckpt: the state after the last completed epoch"
    )
    assert saved["optimizer_states"] and saved["callbacks"], "last.ckpt keeps the full training state"

    resumed = _fit(tmp_path, "--ckpt_path", str(last))
    _assert_same_run(resumed, uninterrupted, range(EPOCHS - 1, EPOCHS))

    # The resumed fit continues in the checkpoint's run folder: one log, and best.ckpt the best of all epochs
    # (Lightning's ModelCheckpoint restores the best score only into the folder that saved it).
    run, reference = last.parent.parent, uninterrupted["run"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"], "no second run folder"
    (epoch, weights), (want_epoch, want_weights) = _best(run), _best(reference)
    assert epoch == want_epoch, "best.ckpt is the best epoch of the whole run, before and after the kill"
    for key, value in want_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=f"best.ckpt: {key}")
    # Every row the killed run logged up to its checkpoint is kept, the rest logged once, by the resumed run.
    for name in ("metrics.csv", "layer_masks.jsonl"):
        assert (run / name).read_text() == (reference / name).read_text(), f"{name} as if never stopped"
