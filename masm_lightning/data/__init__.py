"""Data side: manifests, frame datasets, the data modules and the generated demo dataset."""

from .datamodule import DemoDataModule, FaceForgeryDataModule, FrameDataset
from .manifest import FrameRecord, read_manifest, write_manifest
from .synthetic import generate_demo_dataset
from .transforms import self_blend

__all__ = [
    "DemoDataModule",
    "FaceForgeryDataModule",
    "FrameDataset",
    "FrameRecord",
    "generate_demo_dataset",
    "read_manifest",
    "self_blend",
    "write_manifest",
]
