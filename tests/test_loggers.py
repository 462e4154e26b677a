"""A resumed fit continues in its run folder: one metrics.csv, and best.ckpt the best of every epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import wandb

from masm_lightning.cli import main
from masm_lightning.errors import InvalidInputError
from masm_lightning.training.loggers import CSVLogger
from tests.helpers import tiny_args


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_writes_each_row_when_logged_and_continues_a_folder_from_the_first_step_logged_again(tmp_path):
    first = CSVLogger(tmp_path, name="run", version="version_0")
    for step in range(6):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    metrics = tmp_path / "run" / "version_0" / "metrics.csv"
    assert [r["step"] for r in _rows(metrics)] == ["0", "1", "2", "3", "4", "5"], "on disk without finalize"

    # A run resumed from a checkpoint at step 4 logs steps 4, 5, … again, and a key the first part never logged;
    # the killed run's last write was cut short.
    with metrics.open("a") as f:
        f.write("0.1")
    again = CSVLogger(tmp_path, name="run", version="version_0")
    again.log_metrics({"train/loss": 0.5, "val/video_auc": 0.75}, step=4)
    rows = _rows(metrics)
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[3]["train/loss"] == "0.25" and rows[3]["val/video_auc"] == "", "earlier rows kept as they were"
    assert rows[4] == {"step": "4", "train/loss": "0.5", "val/video_auc": "0.75"}


def test_continuing_a_folder_whose_metrics_file_is_not_csv_is_one_clear_error(tmp_path):
    metrics = tmp_path / "run" / "version_0" / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    metrics.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInputError, match=r"metrics\.csv is not a metrics CSV .*move it away"):
        CSVLogger(tmp_path, name="run", version="version_0").log_metrics({"train/loss": 1.0}, step=0)
    assert metrics.read_bytes() == b"\xff\xfe\x00garbage", "never overwritten"


def _fit(root: Path, *extra: str):
    return main(["fit", *tiny_args(root, *extra)])


def test_fit_resumed_from_last_ckpt_continues_in_its_run_folder_and_keeps_the_best_score(tmp_path, caplog):
    first = _fit(tmp_path, "--trainer.max_epochs", "1")
    run = tmp_path / "tiny" / "version_0"
    best_before = first.trainer.checkpoint_callback.best_model_score
    assert best_before is not None

    resumed = _fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert f"resuming in run folder {run}" in caplog.text
    assert Path(resumed.trainer.log_dir) == run and sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    best = resumed.trainer.checkpoint_callback
    assert Path(best.dirpath) == run / "checkpoints"
    assert best.best_model_score is not None and best.best_model_score >= best_before, "the best so far is kept"
    epochs = {r["epoch"] for r in _rows(run / "metrics.csv") if r.get("val/video_auc")}
    assert epochs == {"0", "1"}, "one metrics.csv with both epochs' validation"
    saved = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert saved["epoch"] == (1 if best.best_model_score > best_before else 0), "best.ckpt is the best epoch"


def test_resuming_with_lightnings_csv_logger_keeps_the_metrics_it_would_delete(tmp_path):
    plain = ["--trainer.logger.class_path", "lightning.pytorch.loggers.CSVLogger"]
    _fit(tmp_path, "--trainer.max_epochs", "1", *plain)
    run = tmp_path / "tiny" / "version_0"
    rows = len(_rows(run / "metrics.csv"))
    resumed = _fit(tmp_path, "--trainer.max_epochs", "2", *plain, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert isinstance(resumed.trainer.logger, CSVLogger)
    assert Path(resumed.trainer.log_dir) == run and len(_rows(run / "metrics.csv")) > rows


def test_a_checkpoint_from_another_root_starts_a_new_run_folder_with_a_warning(tmp_path):
    _fit(tmp_path / "a", "--trainer.max_epochs", "1")
    last = tmp_path / "a" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    # Ours says what happens; Lightning's (when it restores the checkpoint callback) says the same in its words.
    with pytest.warns(UserWarning, match="dirpath has changed"), pytest.warns(UserWarning, match="new run folder"):
        resumed = _fit(tmp_path / "b", "--trainer.max_epochs", "2", "--ckpt_path", str(last))
    assert Path(resumed.trainer.log_dir) == tmp_path / "b" / "tiny" / "version_0"


@pytest.mark.slow
def test_a_wandb_fit_resumed_from_last_ckpt_continues_its_run_id_and_folder(tmp_path):
    logger = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "masm", "offline": True},
    }
    common = ["--trainer.logger", json.dumps(logger)]
    first = _fit(tmp_path, "--trainer.max_epochs", "1", *common)
    run = Path(first.trainer.checkpoint_callback.dirpath).parent  # <root>/<project>/<run id>
    wandb.finish()
    assert run.parent == tmp_path / "masm"
    resumed = _fit(
        tmp_path, "--trainer.max_epochs", "2", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")
    )
    wandb.finish()
    assert resumed.trainer.logger.version == run.name, "the same W&B run id"
    assert Path(resumed.trainer.checkpoint_callback.dirpath) == run / "checkpoints"
    assert sorted(p.name for p in run.parent.iterdir()) == [run.name]
    # The run's own files sit beside its checkpoints, not in the root that every W&B run shares.
    for name in ("layer_masks.jsonl", "config.yaml"):
        assert (run / name).is_file() and not (tmp_path / name).exists(), name
