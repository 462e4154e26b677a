"""Two CPU processes (gloo) through the real CLI: ranks stay identical and metrics agree."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, tiny_args


@pytest.mark.slow
def test_two_process_ddp_fit_ends_with_identical_weights_on_both_ranks(tmp_path):
    callback = {"class_path": "tests.helpers.SaveRankState", "init_args": {"folder": str(tmp_path / "ranks")}}
    command = [
        sys.executable,
        "-m",
        "masm_lightning",
        "fit",
        *tiny_args(tmp_path),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "6",
        "--data.init_args.frame_draw",
        "random",
        "--data.init_args.train_frames",
        "2",
        f"--trainer.callbacks+={json.dumps(callback)}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    first, second = ranks[0]["state"], ranks[1]["state"]
    assert first.keys() == second.keys() and first
    moved = [k for k in first if k.endswith(".U") and not torch.equal(first[k], first[k + "0"])]
    assert moved, "training must have changed the artifact factors"
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=f"{key} differs between ranks")
    # Training frames: each epoch's draw is split between the ranks (disjoint, 8 videos x 2 frames), and re-drawn
    # every epoch (Lightning calls the sampler's set_epoch).
    epochs = [sorted(ranks[0]["samples"][e] + ranks[1]["samples"][e]) for e in range(6)]
    assert all(len(e) == len(set(e)) == 16 for e in epochs), epochs
    assert len({tuple(e) for e in epochs}) > 1
    # Validation metrics are computed on the gathered, de-duplicated samples: the same on both ranks.
    for key in ("val/video_auc", "val/num_frames", "val/num_videos"):
        torch.testing.assert_close(ranks[0]["metrics"][key], ranks[1]["metrics"][key])
    assert ranks[0]["metrics"]["val/num_videos"] == 4  # 4 val videos, none counted twice by the sampler's padding
    # The selective layer mask (on in tiny.yaml) decided the same masks from the same statistics on both ranks.
    first_mask, second_mask = ranks[0]["masks"][0], ranks[1]["masks"][0]
    assert first_mask["steps"] == second_mask["steps"] > 4 and first_mask["history"]
    for key in ("layer_kept", "rule_masked", "var_grad", "mean_grad"):
        torch.testing.assert_close(first_mask[key], second_mask[key], rtol=0, atol=0, msg=key)

    # `test` under DDP too: metrics gathered once per sample, ROC written by rank 0 without a deadlock.
    best = next((tmp_path / "tiny").glob("version_0/checkpoints/*.ckpt"))
    test = [
        sys.executable,
        "-m",
        "masm_lightning",
        "test",
        *tiny_args(tmp_path),
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--ckpt_path",
        str(best),
    ]
    result = subprocess.run(test, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("tiny/version_1/roc_demo.png"))
    with (tmp_path / "tiny" / "version_1" / "metrics.csv").open() as f:
        logged = next(row for row in csv.DictReader(f) if row.get("test/demo/num_videos"))
    assert float(logged["test/demo/num_videos"]) == 4 and float(logged["test/demo/num_frames"]) == 12
