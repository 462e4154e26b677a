"""What ``test`` and ``predict`` leave in the log directory: results.md and predictions.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from masm_lightning.cli import main
from tests.helpers import tiny_args


def test_test_writes_results_md_with_the_logged_metrics(tmp_path, tiny_checkpoint):
    cli = main(["test", *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint))])
    folder = Path(cli.trainer.log_dir)
    text = (folder / "results.md").read_text()
    metrics = cli.trainer.callback_metrics
    assert "## demo" in text and (folder / "roc_demo.png").is_file()
    video_row = next(line for line in text.splitlines() if line.startswith("| video |"))
    cells = [c.strip() for c in video_row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(float(metrics["test/demo/video_auc"]), abs=1e-4)
    assert int(cells[-1]) == int(metrics["test/demo/num_videos"]) == 4


def test_predict_writes_one_record_per_video(tmp_path, tiny_checkpoint):
    cli = main(["predict", *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint))])
    with (Path(cli.trainer.log_dir) / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    frames = [p for batch in cli.trainer.predict_loop.predictions for p in batch["prob"].tolist()]
    assert len(rows) == 4 and sum(int(r["frames"]) for r in rows) == len(frames) == 12
    assert {r["video_id"] for r in rows} == {"test_000", "test_001", "test_000_demo_blend", "test_001_demo_upsample"}
    assert all(r["decision"] == ("fake" if float(r["score"]) >= 0.5 else "real") for r in rows)
    assert {r["label"] for r in rows} == {"0", "1"}


def test_a_tested_run_checkpoint_brings_its_mask_heatmap_beside_the_roc(tmp_path):
    from masm_lightning.training.callbacks.report import copy_training_figures

    run = tmp_path / "demo" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"ckpt")
    (run / "layer_masks.png").write_bytes(b"png of the training run")
    test_folder = tmp_path / "demo" / "version_1"
    test_folder.mkdir()
    copied = copy_training_figures(run / "checkpoints" / "best.ckpt", test_folder)
    assert copied == [test_folder / "layer_masks.png"]
    assert copied[0].read_bytes() == b"png of the training run"
    # A checkpoint outside a run folder, or a test writing into the run folder itself: nothing to copy.
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"ckpt")
    assert copy_training_figures(loose, test_folder) == []
    assert copy_training_figures(run / "checkpoints" / "best.ckpt", run) == []
