"""`make demo`'s configuration: it runs end to end, and (slow) it learns."""

from __future__ import annotations

from pathlib import Path

import pytest

from masm_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """The demo writes to outputs/… relative to where it runs: run it in a temporary folder."""
    monkeypatch.chdir(tmp_path)


def _demo_args(*extra: str) -> list[str]:
    return ["--config", DEMO, "--trainer.enable_progress_bar", "false", *extra]


def test_demo_fit_then_test_runs_end_to_end_short(tmp_path):
    short = [
        "--data.init_args.videos",
        "{train: 8, val: 4, test: 4}",
        "--data.init_args.frames_per_video",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_epochs",
        "1",
    ]
    main(["fit", *_demo_args(*short)])
    best = tmp_path / "outputs" / "demo" / "demo" / "version_0" / "checkpoints" / "best.ckpt"
    assert best.is_file()
    tested = main(["test", *_demo_args(*short, "--ckpt_path", str(best))])
    assert tested.trainer.callback_metrics["test/demo/num_videos"] == 4


@pytest.mark.slow
def test_demo_learns_to_detect_self_blended_fakes(tmp_path):
    fit = main(["fit", *_demo_args()])
    tested = main(["test", *_demo_args("--ckpt_path", fit.trainer.checkpoint_callback.best_model_path)])
    metrics = tested.trainer.callback_metrics
    assert metrics["test/demo/num_videos"] == 64
    assert metrics["test/demo/video_auc"] > 0.8, f"demo did not learn: {dict(metrics)}"
