"""`test`/`validate`/`predict`/`fit` with ``--ckpt_path``: the checkpoint's settings fill in, a given value is either
honoured or refused with both values, never silently replaced; evaluating an untrained model warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from masm_lightning.cli import main
from masm_lightning.sharing.checkpoint import CheckpointError, checkpoint_model_settings
from tests.helpers import tiny_args

SAVED = {
    "backbone": "vit_x",
    "backbone_kwargs": {"depth": 1, "embed_dim": 48},
    "backbone_seed": 0,
    "adapters": {"num_subspaces": 2, "subspace_rank": 2, "targets": ("attn.qkv",)},
    "selection": {"layers": ("blocks.0.attn.qkv",), "batches": 4},
    "threshold": 0.5,
    "lambda_orth": 10.0,
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def test_settings_not_given_come_from_the_checkpoint_and_say_so_where_the_configuration_differed():
    configured = {**SAVED, "backbone_kwargs": {"depth": 1, "embed_dim": 32}, "threshold": 0.5}
    settings, lines = checkpoint_model_settings(SAVED, {}, configured, "a.ckpt")
    assert settings == {k: v for k, v in SAVED.items() if not k.startswith("_")}
    assert lines == [
        "  backbone_kwargs: {'depth': 1, 'embed_dim': 48} (from the checkpoint; the configuration had "
        "{'depth': 1, 'embed_dim': 32})"
    ]


def test_given_values_that_leave_the_weights_meaning_alone_are_kept_and_reported():
    given = {"threshold": 0.9, "lambda_orth": 0.0, "adapters": {"num_subspaces": 2}, "selection": {"batches": 8}}
    settings, lines = checkpoint_model_settings(SAVED, given, SAVED, "a.ckpt")
    assert settings["threshold"] == 0.9 and settings["lambda_orth"] == 0.0
    assert settings["selection"] == {"layers": ["blocks.0.attn.qkv"], "batches": 8}, "the chosen layers stay"
    assert "  threshold: 0.9 (given; the checkpoint has 0.5)" in lines and len(lines) == 3


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"backbone_seed": 7}, ("backbone_seed 7", "backbone_seed 0")),
        ({"backbone_kwargs": {"depth": 1, "embed_dim": 32}}, ("'embed_dim': 32", "'embed_dim': 48")),
        ({"adapters": {"subspace_rank": 3}}, ("'subspace_rank': 3", "'subspace_rank': 2")),
        ({"backbone": "vit_y"}, ("'vit_y'", "'vit_x'")),
        ({"selection": {"layers": ["blocks.1.mlp.fc1"]}}, ("blocks.1.mlp.fc1", "blocks.0.attn.qkv")),
    ],
)
def test_a_given_value_that_changes_the_weights_meaning_is_refused_naming_both(given, named):
    with pytest.raises(CheckpointError) as error:
        checkpoint_model_settings(SAVED, given, SAVED, "a.ckpt")
    assert all(part in str(error.value) for part in (*named, "'a.ckpt'")), str(error.value)


def test_test_uses_the_command_line_threshold_and_results_md_shows_it(tmp_path, tiny_checkpoint, caplog):
    cli = main(["test", *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint), "--model.threshold", "0.9")])
    assert cli.model.hparams["threshold"] == 0.9
    assert [metric.threshold for metric in cli.model.test_metrics.values()] == [0.9]
    assert "Accuracy at threshold 0.9" in (Path(cli.trainer.log_dir) / "results.md").read_text()
    assert f"model settings from checkpoint {tiny_checkpoint}" in caplog.text
    assert "threshold: 0.9 (given; the checkpoint has 0.5)" in caplog.text


ARCHITECTURE = {
    "backbone_seed": (["--model.backbone_seed", "7"], ("backbone_seed 7", "backbone_seed 0")),
    "embed_dim": (
        ["--model.backbone_kwargs", json.dumps(dict(depth=1, embed_dim=48, num_heads=2, img_size=32, patch_size=8))],
        ("'embed_dim': 48", "'embed_dim': 32"),
    ),
    "adapters": (["--model.adapters.num_subspaces", "3"], ("'num_subspaces': 3", "'num_subspaces': 2")),
}


@pytest.mark.parametrize(("extra", "named"), ARCHITECTURE.values(), ids=ARCHITECTURE.keys())
@pytest.mark.parametrize("command", ["test", "predict"])
def test_an_architecture_that_conflicts_with_the_checkpoint_is_refused(
    tmp_path, tiny_checkpoint, capsys, command, extra, named
):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint), *extra)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(part in err for part in named) and "Traceback" not in err, err


def test_fit_refuses_to_resume_from_a_lean_best_checkpoint(tmp_path, tiny_checkpoint, capsys):
    assert "optimizer_states" not in torch.load(tiny_checkpoint, weights_only=True), "best.ckpt is lean"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint))])
    assert exit_info.value.code == 2
    assert "resume a fit from the run's last.ckpt" in capsys.readouterr().err


def test_test_without_a_checkpoint_warns_that_the_model_is_untrained(tmp_path):
    with pytest.warns(UserWarning, match=r"`test` without --ckpt_path evaluates an untrained model .* --ckpt_path"):
        main(["test", *tiny_args(tmp_path, "--trainer.fast_dev_run", "true")])
