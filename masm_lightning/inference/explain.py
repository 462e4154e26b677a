"""Why a face got its score: a relevance heatmap, and which learned artifact subspaces fired.

**Heatmap.** For a ViT, the gradient-weighted attention relevance of Chefer, Gur & Wolf, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021), rule (6):
starting from ``R = I`` (tokens × tokens), every block updates ``R ← R + Ā R`` with
``Ā = E_heads[(∇A ⊙ A)⁺]``, where ``A`` is the block's attention map and ``∇A`` the gradient of the explained
score with respect to it; the relevance of each patch is the pooled token's row of ``R`` (the class token's, or
the mean over patch rows for average-pooled models). timm computes attention with a fused kernel that never forms
``A``, so the explanation switches each block to its explicit path (``fused_attn = False``, the same numbers) and
reads ``A`` from a forward hook on ``attn_drop``. For a CNN, Grad-CAM (Selvaraju et al., ICCV 2017) on the last
feature map: ``ReLU(Σ_c α_c F_c)`` with ``α_c`` the spatial mean of ``∂score/∂F_c``. The explained score is the
fake-vs-real logit difference (the log-odds of *fake*), so the map shows what pushed the face toward *fake*.

**Subspace responses.** Each artifact subspace ``k`` of an adapted layer contributes ``((x V_k) ⊙ s_k) U_kᵀ`` to
the layer's output; with ``U_k`` near-orthonormal, the energy of that contribution is that of
``z_k = (x V_k) ⊙ s_k``. Per face and per subspace, ``e_k = mean over tokens (or pixels) of ‖z_k‖²``, computed by
forward hooks that read the adapters' public factors (the adapters' own forward is untouched). The chart shows
``e_k / ē_k``: the response relative to its **training mean** ``ē_k``, recorded by the
:class:`~masm_lightning.training.callbacks.SubspaceEnergyMeans` callback over the training batches of the epoch a
checkpoint was written in (the faces the subspaces were fitted on, with training augmentation); a checkpoint without
it is compared against a reference batch when one is given (:func:`energy_means`), or shown as raw energy. A ratio
above 1 says the face drives that learned artifact direction harder than a typical training face.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..adapters import iter_adapters
from ..evaluation.subspaces import (
    energy_means,
    injected_subspace,
    relative_responses,
    subspace_contributions,
    subspace_energies,
    subspace_labels,
)
from ..training.callbacks.subspaces import ENERGY_KEY, SubspaceEnergyMeans, SubspaceTypeResponses

# The callbacks and the response maths are named here too, where configs and code of the previous layout found them.
__all__ = [
    "ENERGY_KEY",
    "ExplainedFace",
    "Explainer",
    "Explanation",
    "SubspaceEnergyMeans",
    "SubspaceTypeResponses",
    "energy_means",
    "explain_detected",
    "explain_images",
    "injected_subspace",
    "overlay",
    "relative_responses",
    "relevance",
    "response_chart",
    "subspace_contributions",
    "subspace_energies",
    "subspace_labels",
    "write_explanations",
    "write_result_explanations",
]


def _vit_blocks(backbone: nn.Module) -> list[nn.Module] | None:
    blocks = getattr(backbone, "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "attn", None), "fused_attn") for b in blocks):
        return None
    return list(blocks)


def _chefer(backbone: nn.Module, blocks: list[nn.Module], run: Any) -> Tensor:
    """(B, gh, gw) relevance of the patches (Chefer et al. 2021, rule 6) for the score ``run()`` returns."""
    maps: list[Tensor] = []
    handles, fused = [], []
    for block in blocks:
        attn: Any = block.attn  # timm's Attention (checked by _vit_blocks)
        fused.append(attn.fused_attn)
        attn.fused_attn = False  # the explicit path forms the attention map (same values)

        def keep(_m: nn.Module, _a: Any, out: Tensor) -> None:
            out.retain_grad()
            maps.append(out)

        handles.append(attn.attn_drop.register_forward_hook(keep))
    try:
        run().backward()
    finally:
        for handle, block, was in zip(handles, blocks, fused):
            handle.remove()
            block.attn.fused_attn = was  # type: ignore[union-attr]
    b, _, n, _ = maps[0].shape
    r = torch.eye(n, device=maps[0].device).expand(b, n, n).clone()
    for a in maps:
        if a.grad is None:
            raise RuntimeError("the attention maps got no gradient: is the explained score computed from them?")
        cam = (a.grad * a).clamp_min(0).mean(1)  # (B, N, N): heads averaged
        r = r + cam @ r
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    pooled = (
        r[:, 0, prefix:] if getattr(backbone, "global_pool", "token") == "token" else r[:, prefix:, prefix:].mean(1)
    )
    patch_embed: Any = backbone.patch_embed
    gh, gw = patch_embed.grid_size
    return pooled.reshape(b, gh, gw)


def _gradcam(backbone: nn.Module, head: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(B, h, w) Grad-CAM on the backbone's last feature map, and the logits."""
    feats = backbone.forward_features(images)  # type: ignore[operator]
    feats.retain_grad()
    logits = head(backbone.forward_head(feats))  # type: ignore[operator]
    (logits[:, 1] - logits[:, 0]).sum().backward()
    assert feats.grad is not None
    weights = feats.grad.mean((2, 3), keepdim=True)
    return F.relu((weights * feats).sum(1)), logits


def relevance(backbone: nn.Module, head: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance maps at input resolution (B, H, W), each summing to 1 (a uniform map where nothing is
    relevant), and the logits (B, 2); ViTs by attention relevance, CNNs by Grad-CAM (module doc)."""
    images = images.detach().requires_grad_(True)  # a graph through the frozen backbone
    with torch.enable_grad():
        blocks = _vit_blocks(backbone)
        if blocks is not None:
            out: dict[str, Tensor] = {}

            def run() -> Tensor:
                out["logits"] = head(backbone(images))
                return (out["logits"][:, 1] - out["logits"][:, 0]).sum()

            maps, logits = _chefer(backbone, blocks, run), out["logits"]
        else:
            maps, logits = _gradcam(backbone, head, images)
    maps = F.interpolate(maps[:, None].detach().float(), size=images.shape[-2:], mode="bilinear")[:, 0].clamp_min(0)
    total = maps.sum((1, 2), keepdim=True)
    uniform = torch.full_like(maps, 1 / maps[0].numel())
    return torch.where(total > 0, maps / total.clamp_min(1e-12), uniform), logits.detach()


@dataclass
class Explanation:
    """One face: its fake probability, relevance map (H×W, sums to 1) and subspace responses per layer
    (relative to the training means where known)."""

    probability: float
    heatmap: np.ndarray
    responses: dict[str, list[float]] = field(default_factory=dict)
    labels: dict[str, list[str]] = field(default_factory=dict)
    relative: bool = False  # responses divided by their training means (else raw energies)


def explain_images(
    backbone: nn.Module, head: nn.Module, images: Tensor, means: Mapping[str, Any] | None = None
) -> list[Explanation]:
    """Explanations of a batch of normalised face images (see the module doc).

    Args:
        backbone: the detector's backbone, adapters **not** merged (merged layers have no subspaces to read).
        head: its classification head ((real, fake) logits).
        images: (B, 3, H, W), normalised as in testing.
        means: a :class:`SubspaceEnergyMeans` record (``checkpoint["subspace_energy"]``), or None for raw energies.
    """
    with subspace_energies(backbone) as found:
        maps, logits = relevance(backbone, head, images)
        energies = {name: e.cpu() for name, e in found.items()}
    labels = {name: subspace_labels(adapter) for name, adapter in iter_adapters(backbone)}
    layers = (means or {}).get("layers", {})
    relative = bool(layers) and all(name in layers for name in energies)
    probs = logits.float().softmax(-1)[:, 1].cpu()
    out = []
    for i in range(len(images)):
        responses = {}
        for name, e in energies.items():
            value = e[i]
            if relative:
                value = value / torch.tensor(layers[name]["mean"]).clamp_min(1e-12)
            responses[name] = [round(float(v), 4) for v in value]
        out.append(Explanation(float(probs[i]), maps[i].cpu().numpy(), responses, labels, relative))
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 image with the heatmap (any scale) drawn over it in the ``jet`` colours, red = most relevant."""
    import cv2

    h, w = image.shape[:2]
    heat = cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = (255 * (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (alpha * colours + (1 - alpha) * image.astype(np.float32)).clip(0, 255).astype(np.uint8)


def response_chart(explanation: Explanation, path: str | Path | None = None) -> Any:
    """A small chart of the subspace responses: layers (rows) × subspaces (columns), coloured by log2 of the response
    relative to its training mean (red: fired harder than on training faces). Saved to ``path`` when given.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(explanation.responses)
    width = max((len(v) for v in explanation.responses.values()), default=1)
    grid = np.full((len(names), width), np.nan)
    for row, name in enumerate(names):
        values = np.asarray(explanation.responses[name], np.float64)
        grid[row, : len(values)] = np.log2(np.clip(values, 1e-6, None)) if explanation.relative else values
    fig, ax = plt.subplots(figsize=(max(2.6, 1.4 + 0.28 * width), 0.9 + 0.28 * max(len(names), 1)), dpi=110)
    if explanation.relative:
        bound = max(1.0, float(np.nanmax(np.abs(grid))) if grid.size else 1.0)
        image = ax.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        label = "log2(energy / training mean)"
    else:
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        label = "energy (no training mean recorded)"
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.set_label(label, fontsize=6)  # small: the figure is small, and the label must fit beside the bar
    bar.ax.tick_params(labelsize=6)
    ax.set_yticks(range(len(names)), [n.removeprefix("blocks.") for n in names], fontsize=6)
    first = explanation.labels.get(names[0], []) if names else []
    ax.set_xticks(range(len(first)), first, fontsize=6, rotation=90)
    ax.set_title(f"artifact subspaces (p_fake {explanation.probability:.2f})", fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig


def write_explanations(
    folder: str | Path, faces: Sequence[np.ndarray], explanations: Sequence[Explanation], names: Sequence[str]
) -> list[Path]:
    """Per face: ``<name>.png`` (crop | heatmap overlay), ``<name>_subspaces.png`` (response chart) and, for all,
    ``explanations.json``; returns the written image paths."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for face, explanation, name in zip(faces, explanations, names):
        side = np.concatenate([face, overlay(face, explanation.heatmap)], axis=1)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(side, cv2.COLOR_RGB2BGR))
        if explanation.responses:
            response_chart(explanation, folder / f"{name}_subspaces.png")
        written.append(folder / f"{name}.png")
    record = [
        {"face": n, "probability": e.probability, "relative": e.relative, "responses": e.responses}
        for n, e in zip(names, explanations)
    ]
    (folder / "explanations.json").write_text(json.dumps(record, indent=1))
    return written


@dataclass
class ExplainedFace:
    """One face of a scored input with its crop (RGB uint8, as the model saw it) and explanation."""

    frame: int
    time: float | None
    box: tuple[float, float, float, float] | None
    score: float
    crop: np.ndarray
    explanation: Explanation
    image: np.ndarray | None = None  # the whole frame (RGB uint8)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Explainer:
    """Explains the faces a :class:`~masm_lightning.inference.detector.Detector` scored, with its own copy of the model
    (adapters not merged: the detector's merged layers have no subspaces left to read).

    Args:
        backbone: the backbone with its adapters (or a plain timm model with ``head`` an identity).
        head: the (real, fake) head.
        means: the training means of the subspace responses (``subspace_energy`` record), or None.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, means: Mapping[str, Any] | None = None) -> None:
        self.backbone, self.head, self.means = backbone.eval(), head.eval(), means

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> Explainer:
        """From what :meth:`Detector.load <masm_lightning.inference.detector.Detector.load>` takes: a ``fit``
        checkpoint, an adapter folder, an export folder (heatmaps only: its layers are merged) or
        ``hf-hub:ORG/NAME``."""
        from ..sharing.formats import load_model
        from ..training.module import MASMDetector

        loaded = load_model(source, device)
        if isinstance(loaded.model, MASMDetector):
            return cls(loaded.model.backbone, loaded.model.head, loaded.energy_means)  # type: ignore[arg-type]
        return cls(loaded.model, nn.Identity())  # an export folder: heatmaps only, its layers are merged

    def explain_crops(self, crops: Sequence[np.ndarray], transform: Any) -> list[Explanation]:
        """Explanations of RGB uint8 face crops, resized and normalised by ``transform`` (the detector's)."""
        device = next(self.backbone.parameters()).device
        batch = torch.stack([transform(image=c)["image"] for c in crops]).to(device)
        return explain_images(self.backbone, self.head, batch, self.means)

    def explain_result(self, detector: Any, result: Any, faces: int = 4) -> list[ExplainedFace]:
        """The ``faces`` highest-scoring faces of a scored :class:`~masm_lightning.inference.detector.Result`, re-read
        from its file (only those frames are decoded and cropped again, exactly as the detector cropped them)."""
        from ..data.crops import as_stored, crop_face
        from ..data.video import open_video, read_image

        if not result.frames:
            return []
        chosen = sorted(result.frames, key=lambda f: -f.score)[:faces]
        wanted = {f.index for f in chosen}
        images: dict[int, np.ndarray] = {}
        if result.kind == "image":
            image = read_image(result.path)
            images = {0: image} if image is not None else {}
        else:
            for frame in open_video(result.path).frames_sampled(detector.frames):
                if frame is not None and frame.index in wanted:
                    images[frame.index] = frame.image
        settings = detector.classifier.face_crop
        crops, kept, frames = [], [], []
        for face in chosen:
            image = images.get(face.index)
            if image is None:
                continue
            if face.box is None:  # scored as a whole frame (face_crop off)
                crops.append(image)
            else:
                boxes, _, points = detector.face_detector([image])[0]
                if not len(boxes):
                    continue
                i = max(range(len(boxes)), key=lambda k: _iou(boxes[k], face.box))
                crops.append(as_stored(crop_face(image, boxes[i], points[i], settings), settings))
            kept.append(face)
            frames.append(image)
        if not crops:
            return []
        explanations = self.explain_crops(crops, detector.classifier.transform)
        return [
            ExplainedFace(f.index, f.time, f.box, f.score, crop, e, image)
            for f, crop, e, image in zip(kept, crops, explanations, frames)
        ]


def write_result_explanations(folder: str | Path, result: Any, faces: Sequence[ExplainedFace]) -> list[Path]:
    """``folder/<input name>/frame<index>_face<rank>.png`` (+ ``_subspaces.png``) and ``explanations.json``."""
    target = Path(folder) / Path(result.path).name
    names = [f"frame{f.frame:05d}_{k}" for k, f in enumerate(faces)]
    return write_explanations(target, [f.crop for f in faces], [f.explanation for f in faces], names)


def explain_detected(detector: Any, results: Sequence[Any], folder: str | Path, faces: int = 3) -> int:
    """Write the explanations of the ``faces`` most suspicious faces of every scored result of ``detector``
    (:func:`write_result_explanations`; ``detect --explain``); returns how many faces were explained."""
    explainer = Explainer.load(detector.classifier.source, detector.classifier.device)
    count = 0
    for result in results:
        if result.scored:
            explained = explainer.explain_result(detector, result, faces)
            write_result_explanations(folder, result, explained)
            count += len(explained)
    return count
