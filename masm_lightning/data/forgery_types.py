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

Under ``adapters.routing: type`` each fake type trains one artifact subspace (:func:`subspace_assignment`):
round-robin over the fake types the training split holds, in this order, so up to K trained types get distinct
subspaces. A subspace no trained type is routed to (fewer trained types than K) is *shared*: every sample trains it
(:func:`shared_subspaces`). Reals train all K. So every subspace learns from both classes: a subspace trained by
reals alone would only learn a shift towards "real" that every fake also passes through. Inference never reads a
type: only training (subspace routing) and the reports (AUC per type) do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "FORGERY_TYPES",
    "REAL",
    "UNKNOWN",
    "forgery_type_id",
    "forgery_type_name",
    "routing_mask",
    "shared_subspaces",
    "subspace_assignment",
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


def subspace_assignment(
    num_subspaces: int, trained: Sequence[str] | None = None, vocabulary: Sequence[str] = FORGERY_TYPES
) -> tuple[int, ...]:
    """Per vocabulary index, the artifact subspace that type trains under routing; −1 (all K) for ``real`` and
    ``unknown``.

    The fake types the training split holds (``trained``; None: every type) take subspaces 0, 1, …, K−1, 0, …
    in vocabulary order; the remaining fake types (never trained on, so never routed) continue the round robin.
    """
    fakes = range(UNKNOWN + 1, len(vocabulary))
    seen = set(vocabulary[2:] if trained is None else trained)
    order = [i for i in fakes if vocabulary[i] in seen] + [i for i in fakes if vocabulary[i] not in seen]
    out = [-1] * len(vocabulary)
    for position, index in enumerate(order):
        out[index] = position % num_subspaces
    return tuple(out)


def shared_subspaces(
    num_subspaces: int, trained: Sequence[str] | None = None, vocabulary: Sequence[str] = FORGERY_TYPES
) -> tuple[bool, ...]:
    """Per subspace, whether it is shared: no fake type of ``trained`` (None: every type) is routed to it by
    :func:`subspace_assignment`, so every sample trains it.

    Without this, with fewer trained fake types than subspaces (self-blending alone: one type, K = 4), the
    subspaces no type owns would learn from reals only: a bias towards "real" that no fake gradient opposes.
    """
    assignment = subspace_assignment(num_subspaces, trained, vocabulary)
    seen = set(vocabulary[UNKNOWN + 1 :] if trained is None else trained)
    owned = {assignment[i] for i, name in enumerate(vocabulary) if i > UNKNOWN and name in seen}
    return tuple(k not in owned for k in range(num_subspaces))


def routing_mask(forgery_type: Tensor, assignment: Tensor, num_subspaces: int, shared: Tensor | None = None) -> Tensor:
    """(B, K) bool: which subspaces each sample may train: its type's subspace in ``assignment``
    (:func:`subspace_assignment`, as a tensor on the batch's device), all K where that is −1, and every ``shared``
    subspace ((K,) bool, :func:`shared_subspaces`). No host synchronisation."""
    own = assignment[forgery_type.long()]
    mask = torch.nn.functional.one_hot(own.clamp_min(0), num_subspaces).bool() | (own < 0)[:, None]
    return mask if shared is None else mask | shared.bool()[None, :]
