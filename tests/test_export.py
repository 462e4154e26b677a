"""``export``: merged weights that a fresh timm model loads strictly and that score exactly like the checkpoint."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from masm_lightning.cli import main
from masm_lightning.sharing.checkpoint import load_checkpoint


def test_export_loads_into_plain_timm_and_reproduces_the_checkpoint_scores(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "export"
    main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(out)])
    assert "model.safetensors" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    # The README's lines: timm and safetensors only.
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=2, **config["model_kwargs"])
    model.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    model.eval()
    assert not any("subspaces" in name or "semantic" in name for name in model.state_dict())
    detector, _ = load_checkpoint(tiny_checkpoint)
    size = config["image_size"]
    images = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = detector(images)
        logits = model(images)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert config["labels"] == ["real", "fake"] and config["threshold"] == detector.hparams.threshold
    assert config["mean"] == pytest.approx(list(detector.data_config["mean"]))
    assert config["face_crop"]["size"] > 0 and config["source_checkpoint"] == str(tiny_checkpoint)


def test_export_of_a_file_that_is_not_a_checkpoint_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("hello")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(bad), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_exported_files_are_readable_like_any_new_file_respecting_the_umask(tmp_path, tiny_checkpoint):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "plain")])
        main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "adapter"), "--adapter", "true"])
        os.umask(0o027)
        main(["export", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "private")])
    finally:
        os.umask(previous)
    modes = {f"{p.parent.name}/{p.name}": stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("*/*")}
    assert modes["plain/model.safetensors"] == modes["plain/config.json"] == 0o644, modes
    assert modes["adapter/adapter_model.safetensors"] == modes["adapter/adapter_config.json"] == 0o644, modes
    assert modes["private/model.safetensors"] == 0o640, modes
