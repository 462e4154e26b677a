"""The package's shape: public names, and a torch-only adapter library."""

from __future__ import annotations

import subprocess
import sys


def test_public_names_import_from_the_package():
    from masm_lightning import MASMConfig, MASMDetector, SelectiveLayerMask, inject_adapters, merge_adapters

    assert MASMDetector.__name__ == "MASMDetector" and SelectiveLayerMask.__name__ == "SelectiveLayerMask"
    assert callable(inject_adapters) and callable(merge_adapters) and MASMConfig().num_subspaces == 4


def test_the_adapter_library_imports_torch_only():
    code = ("import sys, masm_lightning.adapters; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'timm', 'torchmetrics', "
            "'albumentations', 'wandb', 'jsonargparse', 'cv2'}); print(heavy); sys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing masm_lightning.adapters pulled in {result.stdout.strip()}"
