"""Data side: manifests, frame datasets, the data modules and the generated demo dataset.

Names load on first use, so that importing a light module of this package (``data.settings``, ``data.manifest``)
does not load the data modules and their image stack.
"""

from __future__ import annotations

from ..io import lazy_exports

__all__ = [
    "FORGERY_TYPES",
    "DemoDataModule",
    "ExtractionSettings",
    "FaceForgeryDataModule",
    "FrameDataset",
    "FrameRecord",
    "generate_demo_dataset",
    "read_manifest",
    "self_blend",
    "write_manifest",
]

_HOMES = {
    "DemoDataModule": "datamodule",
    "FaceForgeryDataModule": "datamodule",
    "FrameDataset": "datamodule",
    "ExtractionSettings": "settings",
    "FORGERY_TYPES": "forgery_types",
    "FrameRecord": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "generate_demo_dataset": "synthetic",
    "self_blend": "transforms",
}


__getattr__ = lazy_exports(__name__, _HOMES)
