"""Every mistake a user can make with a path, a file, a config value or a checkpoint on the fit/test path ends in
one ``error:`` line naming the bad value, exit status 2 and no traceback; bugs keep theirs (``MASM_DEBUG=1`` shows
user errors' too). The real CLI, driven in-process with the tiny config."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from masm_lightning.cli import main
from masm_lightning.errors import InvalidInputError, UserError
from masm_lightning.sharing.checkpoint import CheckpointError, load_checkpoint
from masm_lightning.training.module import MASMDetector
from tests.helpers import TINY_CONFIG, tiny_args


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit status 2, return stderr (which must hold no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


class _Unsafe:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.getcwd, ())  # harmless, but not a tensor: safe loading must refuse it


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": torch.zeros(64, 64)}, folder / "whole.ckpt")
    (folder / "truncated.ckpt").write_bytes((folder / "whole.ckpt").read_bytes()[:3000])
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, folder / "foreign.ckpt")
    with (folder / "unsafe.ckpt").open("wb") as f:
        pickle.dump({"x": _Unsafe()}, f, protocol=2)
    return {
        "missing": (folder / "nope.ckpt", "nope.ckpt' is not a file"),
        "truncated": (folder / "truncated.ckpt", "truncated or is not a torch checkpoint"),
        "foreign": (folder / "foreign.ckpt", "is not a masm_lightning checkpoint"),
        "unsafe": (folder / "unsafe.ckpt", "safe loading refuses"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "foreign", "unsafe"])
def test_a_bad_ckpt_path_is_one_line_naming_the_file(tmp_path, capsys, case):
    path, message = _bad_checkpoints(tmp_path / "ckpts")[case]
    err = _fails(capsys, ["test", *tiny_args(tmp_path, "--ckpt_path", str(path))])
    (line,) = _error_lines(err)
    assert str(path) in line and message in line, err
    assert "weights_only" not in err, "never advise loading a refused checkpoint unsafely"


def _data_config(tmp_path: Path, train: str | None, test: str) -> Path:
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n"
        "  class_path: masm_lightning.data.FaceForgeryDataModule\n"
        "  init_args:\n" + (f"    train: {train}\n" if train else "") + f"    test: [{test}]\n"
        f"    cache_dir: {tmp_path / 'cache'}\n"
        "    batch_size: 4\n"
        "    num_workers: 0\n"
    )
    return config


@pytest.mark.filterwarnings("ignore:`test` without --ckpt_path evaluates an untrained model")
def test_a_wrong_dataset_root_is_one_line(tmp_path, capsys):
    config = _data_config(tmp_path, None, f"{{dataset: dfdc, root: {tmp_path / 'no_such_dfdc'}}}")
    err = _fails(capsys, ["test", *tiny_args(tmp_path, "--config", str(config))])
    (line,) = _error_lines(err)
    assert "DFDC root" in line and "no_such_dfdc" in line and "is not a directory" in line


def test_missing_ffpp_split_lists_are_one_line(tmp_path, capsys):
    (tmp_path / "ffpp" / "original_sequences").mkdir(parents=True)
    config = _data_config(
        tmp_path, f"{{dataset: ffpp, root: {tmp_path / 'ffpp'}}}", f"{{dataset: ffpp, root: {tmp_path / 'ffpp'}}}"
    )
    err = _fails(capsys, ["fit", *tiny_args(tmp_path, "--config", str(config), "--trainer.fast_dev_run", "true")])
    (line,) = _error_lines(err)
    assert "FF++ split lists not found" in line and "splits/train.json" in line


def test_adapters_that_do_not_fit_the_backbone_are_one_line(tmp_path, capsys):
    argv = tiny_args(tmp_path, "--model.adapters.subspace_rank", "1000", "--trainer.fast_dev_run", "true")
    err = _fails(capsys, ["fit", *argv])
    (line,) = _error_lines(err)
    assert "model.adapters do not fit backbone" in line and "ranks [1000, 1000]" in line


CONFIG_MISTAKES = {
    "unknown_backbone": (["--model.backbone", "vit_tiny_patch16_224x"], "model.backbone 'vit_tiny_patch16_224x'"),
    "abbreviated_option": (["--trainer.max_epoch", "1"], "--trainer.max_epoch"),
    "negative_batch_size": (["--data.init_args.batch_size", "-1"], "data.batch_size must be >= 1, got -1"),
    "print_config_validates": (["--model.threshold", "2", "--print_config"], "model.threshold must be in (0, 1)"),
}


@pytest.mark.parametrize(("extra", "message"), CONFIG_MISTAKES.values(), ids=CONFIG_MISTAKES.keys())
def test_a_config_mistake_is_one_message_without_a_namespace_dump(tmp_path, capsys, extra, message):
    err = _fails(capsys, ["fit", *tiny_args(tmp_path, *extra)])
    (line,) = _error_lines(err)
    assert message in line, err
    assert "Namespace(" not in err and "Union" not in err


def test_the_backbone_error_suggests_close_timm_names(tmp_path, capsys):
    with pytest.raises(InvalidInputError, match=r"did you mean .*vit_tiny_patch16_224"):
        MASMDetector(backbone="vit_tiny_patch16_224x", pretrained=False)


def test_optimizer_init_args_change_one_setting_of_the_default_optimizer(tmp_path):
    cli = main(["fit", *tiny_args(tmp_path, "--model.optimizer.init_args.lr", "0.01", "--trainer.fast_dev_run", "1")])
    (group,) = cli.trainer.optimizers[0].param_groups
    assert isinstance(cli.trainer.optimizers[0], torch.optim.Adam)
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.0  # the default's other settings stay


def test_masm_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MASM_DEBUG", "1")
    with pytest.raises(CheckpointError, match=r"nope\.ckpt"):
        main(["test", *tiny_args(tmp_path, "--ckpt_path", str(tmp_path / "nope.ckpt"))])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(self: MASMDetector) -> None:
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(MASMDetector, "configure_model", broken)
    with pytest.raises(ZeroDivisionError, match="a bug of ours"):
        main(["fit", *tiny_args(tmp_path, "--trainer.fast_dev_run", "true")])


def test_user_errors_are_still_the_builtin_types_python_callers_catch():
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointError, UserError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_says_so_and_does_not_blame_the_checkpoint(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(InvalidInputError, match=r"--device cuda: CUDA is not available on this machine") as info:
        load_checkpoint(tmp_path / "other.ckpt", "cuda")
    assert "checkpoint" not in str(info.value)


def test_an_unreadable_test_frame_is_recorded_and_the_run_goes_on(tmp_path, tiny_checkpoint, capsys):
    from masm_lightning.data.synthetic import generate_demo_dataset

    manifest = generate_demo_dataset(tmp_path / "demo_data", {"train": 8, "val": 4, "test": 4}, 3, 32)
    frame = next((tmp_path / "demo_data" / "test").rglob("*.png"))
    frame.write_bytes(b"not a png")  # e.g. a truncated copy
    assert manifest.is_file()
    with pytest.warns(UserWarning, match=r"test set 'demo': 1 frame\(s\) could not be read .*" + frame.name):
        cli = main(["test", *tiny_args(tmp_path, "--ckpt_path", str(tiny_checkpoint))])
    assert cli.trainer.callback_metrics["test/demo/num_frames"] == 4 * 3 - 1
    results = (Path(cli.trainer.log_dir) / "results.md").read_text()
    assert "Status: 1 unreadable frame(s) left out" in results


def test_frames_that_cannot_be_read_are_dropped_from_the_batch_and_listed(tmp_path):
    from masm_lightning.data.datamodule import FrameDataset, collate_frames
    from masm_lightning.data.manifest import FrameRecord

    def transform(image: np.ndarray) -> dict[str, torch.Tensor]:
        return {"image": torch.from_numpy(image).permute(2, 0, 1).float()}

    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((4, 4, 3), np.uint8))
    paths = [tmp_path / "good.png", tmp_path / "gone.png"]
    dataset = FrameDataset([FrameRecord("d", "test", 0, "real", "v", i, p) for i, p in enumerate(paths)], transform)
    batch = collate_frames([dataset[0], dataset[1]])
    assert batch["image"].shape == (1, 3, 4, 4) and batch["index"].tolist() == [0]
    assert batch["unreadable"].tolist() == [1]
    only_bad = collate_frames([dataset[1]])
    assert set(only_bad) == {"unreadable"} and only_bad["unreadable"].tolist() == [1]


def test_a_quoted_number_in_a_yaml_file_is_refused_like_on_the_command_line(tmp_path, capsys):
    config = tmp_path / "lambda.yaml"
    config.write_text('model:\n  lambda_orth: "0.5"\n')
    err = _fails(capsys, ["fit", *tiny_args(tmp_path, "--config", str(config), "--print_config")])
    (line,) = _error_lines(err)
    assert "model.lambda_orth is the quoted string '0.5', but it takes a number" in line
    assert "lambda_orth" in _fails(capsys, ["fit", *tiny_args(tmp_path, "--model.lambda_orth", '"0.5"')])
    config.write_text(
        "model:\n  lambda_orth: 0.5\n  optimizer: {class_path: torch.optim.Adam, init_args: {lr: 1e-4}}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tmp_path, "--config", str(config), "--print_config")])
    assert exit_info.value.code == 0 and "lambda_orth: 0.5" in capsys.readouterr().out


def _only_line(err: str) -> str:
    """The one line a user mistake prints (no usage block, no multi-line error)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


WRONG_TYPES = {
    "max_epochs": (["--trainer.max_epochs", "two"], "--trainer.max_epochs 'two': expected an integer (or null)"),
    "optimizer_lr": (
        ["--model.optimizer.init_args.lr", "abc"],
        "--model.optimizer.init_args.lr 'abc': expected a number",
    ),
}


@pytest.mark.parametrize(("extra", "message"), WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_a_wrong_type_is_one_line_naming_the_option_the_value_and_the_type(tmp_path, capsys, extra, message):
    assert _only_line(_fails(capsys, ["fit", *tiny_args(tmp_path, *extra)])) == f"error: {message}"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--frames", '"2"', "--frames '\"2\"': expected an integer (or null)"),
        ("--aggregation", "median", "--aggregation 'median': expected one of mean, confident"),
    ],
)
def test_a_wrong_detect_value_is_one_line(tmp_path, capsys, option, value, message):
    err = _fails(capsys, ["detect", "--ckpt", str(tmp_path / "x.ckpt"), option, value, str(tmp_path)])
    assert _only_line(err) == f"error: {message}"


def test_a_yaml_syntax_error_names_the_config_file_and_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: 1\n  devices: [1, 2\nmodel: {}\n")
    line = _only_line(_fails(capsys, ["fit", *tiny_args(tmp_path, "--config", str(config))]))
    assert f"{config}, line 4" in line and "opened at line 3" in line and "<unicode string>" not in line


def test_print_config_with_two_configs_prints_no_lightning_warning(tmp_path, capsys, monkeypatch):
    import warnings

    monkeypatch.setattr("sys.argv", ["masm", "fit", *tiny_args(tmp_path, "--config", TINY_CONFIG), "--print_config"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as exit_info:
            main()
    assert exit_info.value.code == 0 and "max_epochs" in capsys.readouterr().out
    assert not [w for w in caught if "sys.argv" in str(w.message)], [str(w.message) for w in caught]


def test_help_shows_whole_summaries_and_no_raw_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    summary = " ".join(capsys.readouterr().out.split())
    assert "test Score the test sets with a checkpoint (--ckpt_path): results.md and ROC curves." in summary
    assert "never run on your" not in summary
    with pytest.raises(SystemExit):
        main(["preprocess", "--help"])
    text = capsys.readouterr().out
    assert "<out>/manifest.csv" in text and "``" not in text and "Args:" not in text


def test_an_image_given_as_a_checkpoint_is_named_as_an_image(tmp_path, capsys):
    image = tmp_path / "face.jpg"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--ckpt", str(image), str(image)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"'{image}' is not a checkpoint: it is an image" in err and "run code" not in err
