"""The forgery-type vocabulary: which manipulation made each training sample, as an integer every batch carries.

Every batch of :class:`~masm_lightning.data.FrameDataset` holds ``forgery_type`` (int64, shape (B,), like
``label``): the index of the sample's type in :data:`FORGERY_TYPES`. Index 0 is ``real``, index 1 ``unknown`` (a
fake whose source names no manipulation, e.g. a plain ``real/``/``fake/`` folder); then the fake types in this
fixed order, which is part of the checkpoint format (a checkpoint stores the vocabulary it was trained with):

- the FaceForensics++ methods ``Deepfakes``, ``Face2Face``, ``FaceSwap``, ``NeuralTextures``, ``FaceShifter``;
- dataset-level sources that name no method: ``celebdf``, ``dfdc``, ``dfd``, ``dfdcp``;
- ``sbi``: self-blended images made from real frames (``data.self_blend``, Shiohara & Yamasaki 2022);
- ``stylegan``: wholly generated faces (e.g. FFHQ vs StyleGAN2 image folders whose fake folder is so named);
- the generated demo's types (:mod:`masm_lightning.data.synthetic`): ``demo_blend``, ``demo_upsample``,
  ``demo_colour``, ``demo_grid``.

Related types sit next to each other, so the round-robin assignment of types to artifact subspaces
(:func:`assigned_subspace`) gives the members of one group distinct subspaces whenever the group has at most K
members. Inference never reads a type: only training (subspace routing) and the reports (AUC per type) do.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FORGERY_TYPES",
    "REAL",
    "UNKNOWN",
    "assigned_subspace",
    "forgery_type_id",
    "forgery_type_name",
    "routing_mask",
]

REAL, UNKNOWN = 0, 1
FORGERY_TYPES: tuple[str, ...] = (
    "real",
    "unknown",
    "Deepfakes",
    "Face2Face",
    "FaceSwap",
    "NeuralTextures",
    "FaceShifter",
    "celebdf",
    "dfdc",
    "dfd",
    "dfdcp",
    "sbi",
    "stylegan",
    "demo_blend",
    "demo_upsample",
    "demo_colour",
    "demo_grid",
)

# Manifest `method` values that name a type differently: our indexers' (DFD, Celeb-DF, self-blending) and
# DeepfakeBench's label names. Matched case-insensitively; a method that is itself a type name needs no alias.
_ALIASES = {
    "deepfakedetection": "dfd",
    "celeb-synthesis": "celebdf",
    "self_blend": "sbi",
    "self-blend": "sbi",
    "ff-df": "Deepfakes",
    "ff-f2f": "Face2Face",
    "ff-fs": "FaceSwap",
    "ff-nt": "NeuralTextures",
    "ff-fh": "FaceShifter",
    "celebdfv1_fake": "celebdf",
    "celebdfv2_fake": "celebdf",
    "dfdc_fake": "dfdc",
    "dfdcp_fake": "dfdcp",
    "dfd_fake": "dfd",
    "stylegan2": "stylegan",
}
_BY_NAME = {name.lower(): i for i, name in enumerate(FORGERY_TYPES)} | {
    alias: FORGERY_TYPES.index(name) for alias, name in _ALIASES.items()
}


def forgery_type_id(method: str, label: int, dataset: str = "") -> int:
    """The :data:`FORGERY_TYPES` index of a manifest row: ``real`` for label 0; for a fake, the type its method
    names, else the type its dataset names (``dfdc``, ``celebdf_v2`` → ``celebdf``), else ``unknown``."""
    if label == 0:
        return REAL
    for key in (method, dataset, dataset.split("_")[0]):
        found = _BY_NAME.get(key.strip().lower())
        if found is not None and found != REAL:
            return found
    return UNKNOWN


def forgery_type_name(index: int, vocabulary: tuple[str, ...] = FORGERY_TYPES) -> str:
    """The name of a type index (``type_7`` for an index outside ``vocabulary``)."""
    return vocabulary[index] if 0 <= index < len(vocabulary) else f"type_{index}"


def assigned_subspace(index: int, num_subspaces: int) -> int | None:
    """The artifact subspace a fake type trains under type routing: round-robin over the fake types in
    vocabulary order, ``(index − 2) mod K``; None (all subspaces) for ``real`` and ``unknown``."""
    return None if index in (REAL, UNKNOWN) else (index - 2) % num_subspaces


def routing_mask(forgery_type: Tensor, num_subspaces: int) -> Tensor:
    """(B, K) bool: which subspaces each sample may train (:func:`assigned_subspace`; all K for reals and
    unknown fakes). Same device as ``forgery_type``; no host synchronisation."""
    types = forgery_type.long()
    routed = types > UNKNOWN
    own = torch.nn.functional.one_hot((types - 2).remainder(num_subspaces), num_subspaces).bool()
    return own | ~routed[:, None]
