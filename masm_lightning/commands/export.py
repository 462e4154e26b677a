"""``export``: a trained checkpoint as plain timm weights (adapters merged), or as an adapter folder for the hub."""

from __future__ import annotations

from pathlib import Path

from ..sharing.export import Dtype
from ..sharing.export import export as export_checkpoint
from ..sharing.formats import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

__all__ = ["export"]


def export(
    ckpt: str,
    out: str,
    adapter: bool = False,
    dtype: Dtype = "float32",
    push_to_hub: str | None = None,
    private: bool = False,
    datasets: list[str] | None = None,
    results: str | None = None,
    license: str | None = None,  # the hub's own name for it
    name: str | None = None,
) -> Path:
    """Write a checkpoint as plain timm weights (adapters merged), or as an adapter folder to share.

    Args:
        ckpt: a checkpoint written by `fit`.
        out: output folder (model.safetensors and config.json; with --adapter, adapter_model.safetensors,
            adapter_config.json and a README.md model card).
        adapter: write the trained factors and head only (a few MB) instead of the merged model.
        dtype: tensor storage type: float32, or bf16 (half the size; loading casts back to float32).
        push_to_hub: also upload the folder to this Hugging Face hub repository (ORG/NAME).
        private: create the hub repository as private.
        datasets: training datasets for the model card (default: read from the run's config.yaml).
        results: a results.md for the model card's metrics (default: the test results of this checkpoint).
        license: the model card's licence (default: cc-by-nc-4.0 for research-only training data).
        name: the model card's title.
    """
    folder = export_checkpoint(
        ckpt, out, adapter=adapter, dtype=dtype, datasets=datasets, results=results, licence=license, name=name
    )
    files = (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, CARD_NAME) if adapter else (WEIGHTS_NAME, CONFIG_NAME)
    print(f"exported {ckpt} → " + ", ".join(str(folder / f) for f in files))
    if push_to_hub is not None:
        from ..sharing.hub import push_to_hub as upload

        url = upload(folder, push_to_hub, private=private)
        print(f"uploaded {folder} → {url}")
    return folder
