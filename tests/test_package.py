"""The package's shape: public names, and a torch-only adapter library."""

from __future__ import annotations

import pytest


def test_public_names_import_from_the_package_and_are_the_modules_own():
    import masm_lightning
    from masm_lightning.adapters import MASMConfig, inject_adapters, merge_adapters
    from masm_lightning.inference.detector import Detector
    from masm_lightning.training.callbacks.layer_mask import SelectiveLayerMask
    from masm_lightning.training.module import MASMDetector

    expected = {
        "Detector": Detector,
        "MASMConfig": MASMConfig,
        "MASMDetector": MASMDetector,
        "SelectiveLayerMask": SelectiveLayerMask,
        "inject_adapters": inject_adapters,
        "merge_adapters": merge_adapters,
    }
    assert set(masm_lightning.__all__) == set(expected)
    for name, obj in expected.items():
        assert getattr(masm_lightning, name) is obj, name


@pytest.mark.slow
@pytest.mark.background("fresh_imports")
def test_the_adapter_library_imports_torch_only(fresh_imports):
    loaded = set(fresh_imports("masm_lightning.adapters")["import"])
    heavy = loaded & {"lightning", "timm", "torchmetrics", "albumentations", "wandb", "jsonargparse", "cv2"}
    assert not heavy, f"importing masm_lightning.adapters pulled in {sorted(heavy)}"
