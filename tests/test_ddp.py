"""Two CPU processes (gloo) through the real CLI: ranks stay identical and metrics agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_cli import ROOT, tiny_args


@pytest.mark.slow
def test_two_process_ddp_fit_ends_with_identical_weights_on_both_ranks(tmp_path):
    callback = {"class_path": "tests.helpers.SaveRankState", "init_args": {"folder": str(tmp_path / "ranks")}}
    command = [sys.executable, "-m", "masm_lightning", "fit", *tiny_args(tmp_path),
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "2",
               f"--trainer.callbacks+={json.dumps(callback)}"]
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
    # Validation metrics are computed on the gathered, de-duplicated samples: the same on both ranks.
    for key in ("val/video_auc", "val/num_frames", "val/num_videos"):
        torch.testing.assert_close(ranks[0]["metrics"][key], ranks[1]["metrics"][key])
    assert ranks[0]["metrics"]["val/num_videos"] == 4  # 4 val videos, none counted twice by the sampler's padding
