"""The real CLI, driven in-process with the test-only tiny config (torchgeo style)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import wandb

from masm_lightning.cli import MASMCLI, main
from tests.helpers import ROOT, TINY_CONFIG, run_masm, tiny_args


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_every_subcommand_runs_on_the_tiny_config(tmp_path, command):
    args = [command, *tiny_args(tmp_path, "--trainer.fast_dev_run", "true")]
    if command == "fit":
        cli = main(args)
    else:  # no --ckpt_path: the untrained model is evaluated, and the user is told
        with pytest.warns(UserWarning, match=f"`{command}` without --ckpt_path evaluates an untrained model"):
            cli = main(args)
    metrics = cli.trainer.callback_metrics
    if command == "fit":
        assert {"train/loss", "train/ce", "train/orth", "train/spec", "val/video_auc"} <= metrics.keys()
    elif command == "validate":
        assert "val/frame_auc" in metrics
    elif command == "test":
        assert {"test/demo/frame_auc", "test/demo/video_auc", "test/demo/video_eer"} <= metrics.keys()
    else:
        predictions = cli.trainer.predict_loop.predictions
        assert predictions and {"prob", "label", "video", "index"} <= predictions[0].keys()


def test_fit_saves_a_small_checkpoint_that_test_reloads(tmp_path, tiny_checkpoint):
    ckpt = tiny_checkpoint  # the session's one-epoch fit of the tiny config
    assert ckpt.is_file()
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert not any(key.endswith("semantic_weight") for key in state), "the frozen backbone must not be saved"
    tested = main(["test", *tiny_args(tmp_path, "--ckpt_path", str(ckpt))])
    assert "test/demo/video_auc" in tested.trainer.callback_metrics
    assert list(Path(tested.trainer.log_dir).glob("roc_demo.png"))


def test_print_config_shows_the_composed_configuration(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tmp_path), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "num_subspaces: 2" in out and "class_path: masm_lightning.data.DemoDataModule" in out


BAD_ARGUMENTS = {
    "unknown_key": (["--model.adapters.num_subspace", "3"], "num_subspace"),
    "invalid_value": (["--model.adapters.num_subspaces", "0"], "MASMConfig.num_subspaces must be an int >= 1, got 0"),
    "wrong_type": (["--model.lambda_orth", "lots"], "lambda_orth"),
}


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_exit_non_zero_with_a_message_not_a_traceback(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:  # any other exception is a traceback: the test fails
        main(["fit", *tiny_args(tmp_path), *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None)
    assert message in err
    assert "Traceback" not in err


BASELINES = ["effort.yaml", "full_ft.yaml", "linear_probe.yaml", "masm_no_mask.yaml"]


@pytest.fixture(scope="module")
def overlay_fit(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str | None], MASMCLI]:
    """``overlay_fit("effort.yaml")``: the CLI of a one-epoch tiny fit with that overlay (``None``: none), fitted
    once for the tests of this module that only read it."""
    fits: dict[str | None, MASMCLI] = {}

    def fit(overlay: str | None) -> MASMCLI:
        if overlay not in fits:
            extra = ["--config", str(ROOT / "configs" / overlay)] if overlay else []
            folder = tmp_path_factory.mktemp("overlay_fit")
            fits[overlay] = main(["fit", *tiny_args(folder), *extra, "--trainer.max_epochs", "1"])
        return fits[overlay]

    return fit


@pytest.mark.parametrize("overlay", BASELINES)
def test_baseline_configs_compose_with_a_base_config_and_train(overlay_fit, overlay):
    cli = overlay_fit(overlay)
    model = cli.model
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    if overlay == "effort.yaml":
        subspaces = [(a.num_blocks, len(a.subspaces)) for a in model.backbone.modules() if hasattr(a, "subspaces")]
        assert subspaces == [(3, 3), (1, 1)] and "train/orth" not in cli.trainer.callback_metrics
    elif overlay == "full_ft.yaml":
        assert len(trainable) == len(list(model.backbone.parameters()))
    elif overlay == "linear_probe.yaml":
        assert not trainable
    else:
        assert "train/orth" in cli.trainer.callback_metrics
    assert not any(type(c).__name__ == "SelectiveLayerMask" for c in cli.trainer.callbacks)


@pytest.mark.parametrize("config", ["ffpp.yaml", "demo.yaml"])
def test_shipped_configs_parse(tmp_path, capsys, config):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exit_info.value.code == 0
    assert "backbone:" in capsys.readouterr().out


@pytest.mark.slow
def test_wandb_offline_logs_metrics_and_the_roc_image(tmp_path):
    logger = {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "masm", "save_dir": str(tmp_path), "offline": True},
    }
    common = [
        "--config",
        TINY_CONFIG,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger",
        json.dumps(logger),
        "--data.init_args.root",
        str(tmp_path / "demo_data"),
    ]
    fit = main(["fit", *common, "--trainer.max_epochs", "1"])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    wandb.finish()  # as two commands would: the test is a W&B run of its own
    main(["test", *common, "--ckpt_path", ckpt])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, "W&B must run offline and keep its files locally"
    assert list(tmp_path.rglob("roc_demo.png"))
    assert list((tmp_path / "wandb").rglob("*.png")), "the ROC curve is logged to W&B as an image"
    wandb.finish()


def test_every_fit_gets_its_own_run_folder_with_best_and_last_and_says_where(tmp_path, caplog):
    runs = []
    for _ in range(2):
        caplog.clear()
        cli = main(["fit", *tiny_args(tmp_path, "--trainer.max_epochs", "3")])
        folder = Path(cli.trainer.log_dir)
        best, last = folder / "checkpoints" / "best.ckpt", folder / "checkpoints" / "last.ckpt"
        assert best.is_file() and last.is_file()
        assert folder.parent.parent == tmp_path, "the run folder lives under --trainer.default_root_dir"
        state = torch.load(last, weights_only=True)
        assert state["global_step"] == cli.trainer.global_step and state["epoch"] == 2, "last.ckpt is the last state"
        said = caplog.text
        assert f"run folder: {folder}" in said and str(best) in said and str(last) in said
        runs.append((folder, best.stat().st_mtime_ns))
    (first, first_time), (second, _) = runs
    assert first != second and (first / "checkpoints" / "best.ckpt").stat().st_mtime_ns == first_time, (
        "a second run never overwrites the first"
    )


def test_last_ckpt_is_written_every_epoch_even_when_validation_runs_less_often(tmp_path):
    cli = main(["fit", *tiny_args(tmp_path, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "2")])
    folder = Path(cli.trainer.log_dir) / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, cli.trainer.global_step), "last.ckpt: after the last epoch"
    assert last["optimizer_states"] and last["callbacks"], "last.ckpt: the full training state"
    best = torch.load(folder / "best.ckpt", weights_only=True)
    assert best["epoch"] == 1, "best.ckpt: chosen on the validation split (validated after epoch 1 only)"
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & best.keys(), "best.ckpt: lean"
    assert {"state_dict", "hyper_parameters", "masm", "DemoDataModule"} <= best.keys()


@pytest.mark.parametrize("overlay", [None, *BASELINES])
def test_the_checkpoint_policy_is_the_same_for_every_config_and_overlay(overlay_fit, overlay):
    cli = overlay_fit(overlay)
    names = sorted(Path(c.best_model_path).name for c in cli.trainer.checkpoint_callbacks)
    assert names == ["best.ckpt", "last.ckpt"]
    assert cli.trainer.checkpoint_callback.monitor == cli.model.monitor == "val/video_auc"


def test_the_installed_masm_command_exits_0_silently_on_success(tmp_path, capsys):
    """The console script (what users, `&&` chains and SLURM run), not `python -m`: success is status 0 and the
    CLI object is never printed (``sys.exit(<the CLI object>)`` would print it and exit 1)."""
    code = run_masm("fit", *tiny_args(tmp_path, "--trainer.fast_dev_run", "true"))
    captured = capsys.readouterr()
    assert code in (None, 0), f"exit status {code!r}"
    assert "MASMCLI object" not in captured.out + captured.err


@pytest.mark.slow
def test_the_installed_masm_command_exits_2_with_one_line_for_a_wrong_type(tmp_path):
    """A user's mistake through the console script in a fresh process (so a stray warning on stderr would show):
    status 2 and one `error:` line (no usage block); the rest of the mistakes are tested in-process
    (tests/test_errors.py)."""
    masm = Path(sys.executable).with_name("masm")
    result = subprocess.run(
        [str(masm), "fit", *tiny_args(tmp_path, "--trainer.max_epochs", "two")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == ["error: --trainer.max_epochs 'two': expected an integer (or null)"]


def test_robustness_is_tests_alone_and_the_project_commands_take_dashed_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tmp_path), "--robustness"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--robustness" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:  # --num-shards is --num_shards: refused for its value, not its name
        main(["detect", str(tmp_path), "--ckpt", str(tmp_path / "no.ckpt"), "--num-shards", "2", "--shard", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "detect: error: --shard must be in [0, --num_shards=2), got 2\n"
