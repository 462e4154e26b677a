"""What the previous, flat layout wrote still loads: configs and run folders naming classes by their old module paths,
checkpoints, and adapter/export folders."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from masm_lightning.cli import main
from masm_lightning.moved import MOVED, current_name
from tests.helpers import TINY_CONFIG, tiny_args

# A run folder's config.yaml as the previous layout wrote it: jsonargparse records each class by its defining module.
OLD_CLASS_PATHS = {
    "logger": "masm_lightning.loggers.CSVLogger",
    "mask": "masm_lightning.callbacks.SelectiveLayerMask",
    "mask_by_module": "masm_lightning.callbacks.layer_mask.SelectiveLayerMask",
    "energy": "masm_lightning.explain.SubspaceEnergyMeans",
    "optimizer": "masm_lightning.model.MASMAdam",
}


@pytest.mark.parametrize(("old", "new"), MOVED.items(), ids=MOVED.keys())
def test_every_old_module_name_maps_to_a_module_that_exists(old, new):
    assert current_name(old) == new
    assert importlib.util.find_spec(new) is not None, f"{old} maps to {new}, which does not exist"


def test_an_old_module_name_is_the_same_module_under_its_current_name():
    old = importlib.import_module("masm_lightning.callbacks.layer_mask")
    new = importlib.import_module("masm_lightning.training.callbacks.layer_mask")
    assert old is new  # one module: the classes are the same objects, nothing ran twice
    assert new.__spec__.name == "masm_lightning.training.callbacks.layer_mask"  # its own spec, not the alias's
    from masm_lightning.model import MASMAdam, MASMDetector
    from masm_lightning.training.module import MASMDetector as Current

    assert MASMDetector is Current and issubclass(MASMAdam, torch.optim.Adam)


def test_a_config_with_the_previous_layouts_class_paths_fits_and_its_checkpoint_loads(tmp_path):
    config = yaml.safe_load(Path(TINY_CONFIG).read_text())
    config["trainer"]["logger"]["class_path"] = OLD_CLASS_PATHS["logger"]
    config["trainer"]["callbacks"] = [
        {"class_path": OLD_CLASS_PATHS["mask_by_module"], "init_args": {"warmup_steps": 4, "interval": 2}},
        {"class_path": OLD_CLASS_PATHS["energy"]},
    ]
    config["model"]["optimizer"] = {"class_path": OLD_CLASS_PATHS["optimizer"], "init_args": {"lr": 1e-3}}
    config["trainer"]["max_epochs"] = 1
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(old), *tiny_args(tmp_path)[2:]])
    from masm_lightning.training.callbacks.layer_mask import SelectiveLayerMask
    from masm_lightning.training.callbacks.subspaces import SubspaceEnergyMeans
    from masm_lightning.training.loggers import CSVLogger

    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {SelectiveLayerMask, SubspaceEnergyMeans} <= kinds
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert cli.model.optimizers().optimizer.defaults["lr"] == 1e-3

    # A checkpoint whose hyper-parameters name the module by its old path (Lightning's instantiator reads
    # `_class_path` when a CLI ran the model in subclass mode) loads into the same class.
    best = next(tmp_path.rglob("best.ckpt"))
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "masm_lightning.model.MASMDetector"
    renamed = tmp_path / "old_paths.ckpt"
    torch.save(checkpoint, renamed)
    from masm_lightning.sharing.checkpoint import load_checkpoint
    from masm_lightning.training.module import MASMDetector

    model, _ = load_checkpoint(renamed)
    assert type(model) is MASMDetector
    reference, _ = load_checkpoint(best)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images), reference(images))

    # The folders `export` wrote carry format names (not module paths) that a newer reader must keep accepting.
    from masm_lightning.sharing.export import export, load_adapter, load_exported

    export(str(best), str(tmp_path / "adapter"), adapter=True)
    export(str(best), str(tmp_path / "merged"))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["format"] == (
        "masm_lightning.adapter/1"
    )
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["format"] == "masm_lightning.export/1"
    adapted, _ = load_adapter(tmp_path / "adapter")
    merged, _ = load_exported(tmp_path / "merged")
    assert torch.allclose(adapted(images), reference(images), atol=1e-5)
    assert torch.allclose(merged(images), reference(images), atol=1e-4)
