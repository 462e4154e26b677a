"""The package's shape: public names, and a torch-only adapter library."""

from __future__ import annotations

import subprocess
import sys


def test_public_names_import_from_the_package_and_are_the_modules_own():
    import masm_lightning
    from masm_lightning.adapters import MASMConfig, inject_adapters, merge_adapters
    from masm_lightning.callbacks.layer_mask import SelectiveLayerMask
    from masm_lightning.detector import Detector
    from masm_lightning.model import MASMDetector

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


def test_the_adapter_library_imports_torch_only():
    code = (
        "import sys, masm_lightning.adapters; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'timm', 'torchmetrics', "
        "'albumentations', 'wandb', 'jsonargparse', 'cv2'}); print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing masm_lightning.adapters pulled in {result.stdout.strip()}"
