"""Explanations mean something: a trained tiny model's relevance falls on the region where its fakes were blended,
and the subspace responses are measured against the training mean recorded in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masm_lightning.adapters import apply_constraints
from masm_lightning.data.synthetic import face_image
from masm_lightning.inference.explain import energy_means, explain_images, relevance
from masm_lightning.training.module import MASMAdam, MASMDetector

SIZE, PATCH = 32, 8


def _region_blended_faces(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Pairs of a generated face and its fake, blended only inside one random quadrant of the crop: the quadrant
    (soft-edged mask) is replaced by a copy of the face carrying strong sensor noise, the texture mismatch that
    pasted pixels from another camera bring. (SBI's subtler blend takes a from-scratch ViT minutes to learn.)

    Returns images (2·count, 3, H, W) in [0, 1], labels, and each image's blended-region mask (zeros for reals).
    """
    rng = np.random.default_rng(seed)
    images, labels, regions = [], [], []
    half = SIZE // 2
    for i in range(count):
        face, _ = face_image([seed, i], SIZE)
        region = np.zeros((SIZE, SIZE), np.float32)
        top, left = rng.integers(0, 2, size=2) * half
        region[top : top + half, left : left + half] = 1
        source = face.astype(np.float32) + rng.normal(0, 40, face.shape)
        mask = cv2.GaussianBlur(region, (0, 0), 1.0)[..., None]
        fake = np.clip(mask * source + (1 - mask) * face, 0, 255).astype(np.uint8)
        images += [face, fake]
        labels += [0, 1]
        regions += [np.zeros_like(region), region]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(labels), np.stack(regions)


TINY_VIT = dict(depth=1, embed_dim=32, num_heads=2, img_size=SIZE, patch_size=PATCH)


def _noisy_faces(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A pretext task that teaches a backbone sensor-noise texture but no place: a generated face, or the same face
    with strong noise over the whole crop."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        face, _ = face_image([seed, 10_000 + i], SIZE)
        noisy = np.clip(face.astype(np.float32) + rng.normal(0, 40, face.shape), 0, 255).astype(np.uint8)
        images += [face, noisy]
        labels += [0, 1]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255, torch.tensor(labels)


def _train(model: MASMDetector, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float) -> None:
    """The training step of ``fit``, without the trainer: the recipe's optimizer (``MASMAdam``) over what
    trains, then the decoupled constraint step of a MASM model."""
    torch.manual_seed(0)
    optimizer = MASMAdam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(32):
            loss = F.cross_entropy(model(images[batch] * 2 - 1), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if model.adapter_config is not None:
                apply_constraints(model.backbone, optimizer, model.constraints)
    model.eval()


def _trained_masm(tmp_path: Path) -> MASMDetector:
    """MASM as it is used: a pretrained base (here a tiny ViT pretrained on the pretext above, saved as a timm
    state dict) loaded through ``checkpoint_path`` and frozen; only the artifact subspaces (K=2, d=4) and the head
    train, on region-blended fakes. The constraint step is off (λ = 0, no cap, the pretrained check's
    ``masm_plain``): at this toy width (32) the recipe's cap of 2σ_r holds the subspaces near the base's smallest
    singular values, and in 30 epochs the model stayed at 0.62 held-out accuracy (0.71 without), too little to
    have learned where the fakes are. What is explained is the same: the unmerged adapters' forward."""
    base = MASMDetector(
        "vit_base_patch16_clip_quickgelu_224",
        backbone_kwargs=TINY_VIT,
        pretrained=False,
        adapters=None,
        freeze_backbone=False,
    )
    base.configure_model()
    _train(base, *_noisy_faces(256, seed=2), epochs=20, lr=1e-3)
    weights = tmp_path / "tiny_vit_pretext.pt"
    torch.save(base.backbone.state_dict(), weights)

    model = MASMDetector(
        "vit_base_patch16_clip_quickgelu_224",
        backbone_kwargs=TINY_VIT,
        checkpoint_path=str(weights),
        adapters={"num_subspaces": 2, "subspace_rank": 4},
        lambda_orth=0.0,
        lambda_spec=0.0,
        spectral_cap=None,
    )
    model.configure_model()
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if "subspaces" not in n)
    images, labels, _ = _region_blended_faces(384, seed=0)
    _train(model, images, labels, epochs=30, lr=5e-3)
    return model


@pytest.mark.slow
def test_relevance_of_a_masm_model_falls_inside_the_blended_region_more_than_its_share(tmp_path):
    model = _trained_masm(tmp_path)
    images, labels, regions = _region_blended_faces(60, seed=1)  # unseen faces
    with torch.no_grad():
        accuracy = (model(images * 2 - 1).argmax(1) == labels).float().mean()
    # It learned the task (unseen faces; measured 0.71), so there is something to explain.
    assert accuracy > 0.6, accuracy
    fakes = labels == 1
    maps, _ = relevance(model.backbone, model.head, images[fakes] * 2 - 1)  # through the unmerged adapters
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(len(maps)))
    inside = (maps.numpy() * regions[fakes.numpy()]).sum((1, 2))
    share = regions[fakes.numpy()].mean((1, 2))  # 0.25: a quadrant
    assert inside.mean() > 1.4 * share.mean(), (inside.mean(), share.mean())  # measured: 0.41 vs 0.25
    assert (inside > share).mean() > 0.5, inside  # for most fakes, not a few (measured 0.68)


def test_subspace_responses_are_relative_to_the_recorded_mean(tiny_checkpoint):
    from masm_lightning.sharing.checkpoint import load_checkpoint

    detector, _ = load_checkpoint(tiny_checkpoint)
    size = detector.data_config["image_size"]
    reference = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    means = energy_means(detector.backbone, reference)
    explanations = explain_images(detector.backbone, detector.head, reference, means)
    assert all(e.relative for e in explanations)
    for name, record in means["layers"].items():
        ratios = np.array([e.responses[name] for e in explanations])  # (faces, subspaces)
        assert ratios.shape[1] == len(record["labels"]) == len(record["mean"])
        np.testing.assert_allclose(ratios.mean(0), 1.0, rtol=2e-3)  # the reference batch is its own mean
    with torch.no_grad():
        expected = detector(reference).softmax(-1)[:, 1]
    np.testing.assert_allclose([e.probability for e in explanations], expected.numpy(), rtol=1e-5)
    raw = explain_images(detector.backbone, detector.head, reference[:2])
    assert not raw[0].relative and raw[0].responses.keys() == means["layers"].keys()


def test_detect_explain_writes_heatmaps_and_subspace_charts_per_scored_input(tmp_path, tiny_checkpoint, capsys):
    from masm_lightning.cli import main

    face, _ = face_image(3, 48)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not media")
    out = tmp_path / "why"
    options = ["--ckpt", str(tiny_checkpoint), "--face_crop", "false", "--explain", str(out)]
    main(["detect", str(image), str(tmp_path / "notes.txt"), *options])
    assert "explanations of 1 faces" in capsys.readouterr().out
    folder = out / "face.png"
    assert (folder / "frame00000_0.png").is_file() and (folder / "frame00000_0_subspaces.png").is_file()
    record = json.loads((folder / "explanations.json").read_text())
    assert record[0]["responses"] and 0 <= record[0]["probability"] <= 1


def test_detect_explain_compile_compiles_the_detector_it_explains_with(tmp_path, tiny_checkpoint, monkeypatch):
    """``--explain`` loads its own recording detector: it gets every detect option, ``--compile`` included."""
    import masm_lightning.inference.detector as detector_module
    from masm_lightning.cli import main

    compiled: list[bool] = []
    monkeypatch.setattr(detector_module, "compile_module", lambda module, enabled=True: compiled.append(enabled))
    face, _ = face_image(3, 48)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    options = ["--face_crop", "false", "--explain", str(tmp_path / "why"), "--compile", "true"]
    main(["detect", str(image), "--ckpt", str(tiny_checkpoint), *options])
    assert compiled == [True]
